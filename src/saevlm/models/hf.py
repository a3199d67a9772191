"""transformers backends: CLIP (``CLIPVisionModelWithProjection``), SigLIP (``SiglipVisionModel``)
and DINOv2 (``Dinov2Model``).

Module paths differ between transformers 4.x and 5.x (``CLIPVisionModel`` / ``SiglipVisionModel``
lost ``.vision_model`` in 5.x; DINOv2 uses ``encoder.layer``), so blocks and heads are found by
trying the known paths in turn rather than by version checks.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from saevlm.errors import UserError
from saevlm.models.base import VisionEncoder

BLOCK_PATHS = ("vision_model.encoder.layers", "encoder.layers", "encoder.layer",
               "vision_tower.vision_model.encoder.layers", "vision_tower.encoder.layers")
SIGLIP_HEAD_PATHS = ("vision_model.head", "head")


def get_attr_path(root: nn.Module, paths: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first dotted attribute path that exists under ``root``: ``(path, object)``."""
    for path in paths:
        obj: Any = root
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return path, obj
    return None


def hub_error(name: str, source: str, err: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return UserError(
        f"--model_name {name}: could not load {source!r} ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:300]}). "
        + ("HF_HUB_OFFLINE is set, so only the local cache is searched. " if offline else "")
        + "Provide the model as a local directory (save_pretrained / `hf download "
        f"{source} --local-dir DIR`), put it in the Hugging Face cache (HF_HOME), or run with "
        "network access.")


PROCESSOR_BACKENDS = ("pil", "torchvision")


def auto_processor(source: str, backend: str = "pil", multimodal: bool = False):
    """``AutoImageProcessor`` (or ``AutoProcessor`` with ``multimodal``, e.g. LLaVA's or CLIP's
    text + image processor) with the image backend ``backend``.

    transformers 5 picks an image-processor backend with ``backend=``; 4.x with ``use_fast`` (the
    slow processors are the PIL / numpy ones). ``pil`` is the path the authors ran (4.46)."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor

    if backend not in PROCESSOR_BACKENDS:
        raise UserError(f"processor_backend {backend!r}: expected one of {', '.join(PROCESSOR_BACKENDS)}", field="processor_backend")
    cls = AutoProcessor if multimodal else AutoImageProcessor
    if int(transformers.__version__.split(".")[0]) >= 5:
        return cls.from_pretrained(source, backend=backend)
    return cls.from_pretrained(source, use_fast=backend == "torchvision")


_auto_processor = auto_processor


def _backend_class(name: str, backend: str):
    """``CLIPImageProcessor`` etc. in the requested backend (5.x names the PIL ones ``...Pil``)."""
    import transformers

    if backend == "pil" and hasattr(transformers, name + "Pil"):
        return getattr(transformers, name + "Pil")
    if backend == "torchvision" and hasattr(transformers, name + "Fast"):
        return getattr(transformers, name + "Fast")
    return getattr(transformers, name)


def _processor(source: str, config: Any, model_type: str, warn: Callable[[str], None], backend: str = "pil"):
    """The model's own image processor; built from the config if the checkpoint ships none.

    ``backend`` pil (default) is the path the authors ran (transformers 4.46, whose CLIP / SigLIP
    processors resize with PIL); torchvision is transformers 5's default, about one grey level
    apart after resizing."""
    if backend not in PROCESSOR_BACKENDS:
        raise UserError(f"processor_backend {backend!r}: expected one of {', '.join(PROCESSOR_BACKENDS)}", field="processor_backend")
    try:
        return _auto_processor(source, backend), "preprocessor_config"
    except (OSError, ValueError):
        pass
    size = int(getattr(config, "image_size", 224))
    warn(f"{source}: no preprocessor_config.json; using {model_type} defaults at {size}px")
    if model_type.startswith("siglip"):
        return _backend_class("SiglipImageProcessor", backend)(size={"height": size, "width": size}), \
            "built-from-config"
    if model_type.startswith("dinov2"):
        return _backend_class("BitImageProcessor", backend)(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
            do_convert_rgb=True), "built-from-config"
    return _backend_class("CLIPImageProcessor", backend)(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}), "built-from-config"


class _HFPreprocess:
    """Picklable PIL -> tensor callable around a transformers image processor."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def load_transformers_encoder(name: str, source: str, warn: Callable[[str], None],
                              processor_backend: str = "pil") -> VisionEncoder:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise hub_error(name, source, err) from None
    model_type = config.model_type
    from transformers.utils import logging as hf_logging

    # Loading the vision tower of a full CLIP / SigLIP checkpoint reports the text weights it
    # skips as "unexpected"; that is by design here, so keep the report quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if model_type in ("clip", "clip_vision_model"):
            from transformers import CLIPVisionModelWithProjection
            model = CLIPVisionModelWithProjection.from_pretrained(source)
        elif model_type in ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"):
            from transformers import SiglipVisionModel
            model = SiglipVisionModel.from_pretrained(source)
        elif model_type == "dinov2":
            from transformers import Dinov2Model
            model = Dinov2Model.from_pretrained(source)
        else:
            raise UserError(f"model_name {name}: model type {model_type!r} is not supported; "
                            f"supported: CLIP, SigLIP, DINOv2 (transformers) and open_clip models", field="model_name")
    except (OSError, ValueError) as err:
        raise hub_error(name, source, err) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    found = get_attr_path(model, BLOCK_PATHS)
    if found is None:
        raise RuntimeError(f"{source}: no encoder blocks at any of {BLOCK_PATHS}")
    block_path, blocks = found
    vcfg = getattr(config, "vision_config", config)
    hidden = int(vcfg.hidden_size)

    projection: nn.Module | None
    projection_dim: int | None
    has_cls = True
    if model_type.startswith("clip"):
        projection = model.visual_projection
        projection_dim = int(model.visual_projection.out_features)
        take = lambda out: out  # noqa: E731 - image_embeds = visual_projection(pooled)
    elif model_type.startswith("siglip"):
        has_cls = False
        head = get_attr_path(model, SIGLIP_HEAD_PATHS)
        projection = head[1] if head else None  # pooler_output = head(post_layernorm(tokens))
        projection_dim = hidden if head else None
        take = lambda out: out  # noqa: E731
    else:  # dinov2: pooler_output = layernorm(sequence)[:, 0]
        projection = model.layernorm
        projection_dim = hidden
        take = lambda out: out[:, 0]  # noqa: E731
    processor, processor_origin = _processor(source, vcfg, model_type, warn, processor_backend)
    return VisionEncoder(
        name=name, source=source, backend="transformers", model=model, blocks=list(blocks),
        projection_module=projection, projection_from_output=take,
        run=lambda px: model(pixel_values=px), preprocess=_HFPreprocess(processor),
        has_cls=has_cls, hidden_size=hidden, projection_dim=projection_dim,
        info={"class": type(model).__name__, "model_type": model_type, "block_path": block_path,
              "image_size": int(getattr(vcfg, "image_size", 0)), "processor": processor_origin,
              "processor_class": type(processor).__name__, "processor_backend": processor_backend},
    )
