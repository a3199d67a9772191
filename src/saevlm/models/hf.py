"""transformers backends, one entry per family in ``FAMILIES``: CLIP
(``CLIPVisionModelWithProjection``), SigLIP (``SiglipVisionModel``; also fixed-size SigLIP2
checkpoints, which are saved as SigLIP), SigLIP2 NaFlex (``Siglip2VisionModel``), DINOv2
(``Dinov2Model``), DINOv3 (``DINOv3ViTModel``), AIMv2 (``Aimv2VisionModel``), ViT and ViT-MAE
(``ViTModel`` / ``ViTMAEModel``: the WebSSL checkpoints), and the vision towers inside MLLMs
(``saevlm.models.towers``).

Module paths differ between transformers 4.x and 5.x (``CLIPVisionModel`` / ``SiglipVisionModel``
lost ``.vision_model`` in 5.x; DINOv2 uses ``encoder.layer``), so blocks and heads are found by
trying the known paths in turn rather than by version checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from saevlm.errors import UserError
from saevlm.models.base import VisionEncoder, first_tensor, get_attr_path

BLOCK_PATHS = ("vision_model.encoder.layers", "encoder.layers", "encoder.layer", "model.layer", "layer", "layers",
               "vision_tower.vision_model.encoder.layers", "vision_tower.encoder.layers", "blocks")
SIGLIP_HEAD_PATHS = ("vision_model.head", "head")


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

    A multimodal processor is loaded as it comes and its image processor replaced by the one of
    ``backend``: video processors have no PIL backend (OneVision, Qwen2.5-VL on 5.x), and 4.x's
    ``use_fast`` would reach the tokenizer too (a slow one, which Qwen2.5-VL cannot build from
    tokenizer.json). ``pil`` is the path the authors ran (4.46)."""
    from transformers import AutoProcessor

    if backend not in PROCESSOR_BACKENDS:
        raise UserError(f"processor_backend {backend!r}: expected one of {', '.join(PROCESSOR_BACKENDS)}", field="processor_backend")
    image_processor = _image_processor(source, backend)
    if not multimodal:
        return image_processor
    processor = AutoProcessor.from_pretrained(source)
    processor.image_processor = image_processor
    return processor


def _image_processor(source: str, backend: str):
    """The checkpoint's image processor in ``backend``: 5.x picks it with ``backend=``, 4.x with
    ``use_fast`` (its slow processors are the PIL / numpy ones)."""
    import transformers
    from transformers import AutoImageProcessor

    if int(transformers.__version__.split(".")[0]) >= 5:
        return AutoImageProcessor.from_pretrained(source, backend=backend)
    try:
        return AutoImageProcessor.from_pretrained(source, use_fast=backend == "torchvision")
    except ValueError as err:
        if "does not have a slow version" not in str(err):
            raise
        # a processor that exists only in its torchvision form (DINOv3's); _note_backend says so
        return AutoImageProcessor.from_pretrained(source, use_fast=True)


_auto_processor = auto_processor


def _backend_class(name: str, backend: str, warn: Callable[[str], None] | None = None):
    """``CLIPImageProcessor`` etc. in the requested backend (5.x names the PIL ones ``...Pil``);
    ``warn`` is told when the class has no such backend and its only one is used."""
    import transformers

    if backend == "pil" and hasattr(transformers, name + "Pil"):
        return getattr(transformers, name + "Pil")
    if backend == "torchvision" and hasattr(transformers, name + "Fast"):
        return getattr(transformers, name + "Fast")
    # transformers 4.x ships some processors (DINOv3's) only in their torchvision ("Fast") form
    cls = getattr(transformers, name) if hasattr(transformers, name) else getattr(transformers, name + "Fast")
    if warn is not None:
        _note_backend(cls, backend, warn)
    return cls


def _note_backend(processor: Any, backend: str, warn: Callable[[str], None]) -> None:
    """Say so when the PIL backend was asked for but the processor class has only torchvision's
    (transformers 5's DINOv3 processor): its resizing differs by about one grey level."""
    cls = processor if isinstance(processor, type) else type(processor)
    # 5.x: a TorchvisionBackend class; 4.x: a BaseImageProcessorFast one
    if backend == "pil" and any(k.__name__ in ("TorchvisionBackend", "BaseImageProcessorFast") for k in cls.__mro__):
        warn(f"{cls.__name__} has no PIL backend in this transformers; images are resized with torchvision "
             f"(recorded as processor_class in the manifest)")


def _processor(source: str, config: Any, model_type: str, warn: Callable[[str], None], backend: str = "pil"):
    """The model's own image processor; built from the config if the checkpoint ships none.

    ``backend`` pil (default) is the path the authors ran (transformers 4.46, whose CLIP / SigLIP
    processors resize with PIL); torchvision is transformers 5's default, about one grey level
    apart after resizing."""
    if backend not in PROCESSOR_BACKENDS:
        raise UserError(f"processor_backend {backend!r}: expected one of {', '.join(PROCESSOR_BACKENDS)}", field="processor_backend")
    try:
        processor = _auto_processor(source, backend)
        _note_backend(processor, backend, warn)
        return processor, "preprocessor_config"
    except (OSError, ValueError) as err:
        local = Path(source) / "preprocessor_config.json"
        if local.is_file():  # there, but unreadable: not the same as absent
            raise UserError(f"model_name {source}: {local.name} is damaged ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160]}); save the model's image processor again",
                            field="model_name") from None
    size = int(getattr(config, "image_size", 224))
    warn(f"{source}: no preprocessor_config.json; using {model_type} defaults at {size}px")
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    if model_type.startswith("siglip2"):  # NaFlex: aspect ratio kept, up to num_patches patches
        return _backend_class("Siglip2ImageProcessor", backend)(
            patch_size=int(config.patch_size), max_num_patches=int(getattr(config, "num_patches", 256))), \
            "built-from-config"
    if model_type.startswith("dinov3"):  # a plain resize to the square, ImageNet statistics
        return _backend_class("DINOv3ViTImageProcessor", backend, warn)(
            size={"height": size, "width": size}, **imagenet), "built-from-config"
    if model_type in ("vit", "vit_mae"):
        return _backend_class("BitImageProcessor", backend)(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **imagenet,
            do_convert_rgb=True), "built-from-config"
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
    """Picklable PIL -> tensor callable around a transformers image processor.

    ``keys`` names the processor outputs the model takes; with more than one (SigLIP2 NaFlex:
    pixel values, their attention mask and the patch grid) the result is a dict of tensors."""

    def __init__(self, processor: Any, keys: tuple[str, ...] = ("pixel_values",)):
        self.processor = processor
        self.keys = keys

    def __call__(self, image):
        out = self.processor(images=image.convert("RGB"), return_tensors="pt")
        if self.keys == ("pixel_values",):
            return out["pixel_values"][0]
        return {k: out[k][0] for k in self.keys}


@dataclass(frozen=True)
class Family:
    """What saevlm needs to know about one transformers vision family.

    ``projection``: how ``post_projection`` is read: ``"visual_projection"`` (CLIP image_embeds),
    ``"head"`` (SigLIP / SigLIP2 / AIMv2 attention-pooling head = pooler_output),
    ``"norm_cls"`` (the final norm's output at token 0 = pooler_output of DINOv2 / DINOv3 / ViT),
    or None. ``registers``: the config attribute counting register tokens after CLS."""

    label: str
    class_name: str
    since: str  # the transformers version that added the class (named when it is missing)
    has_cls: bool
    projection: str | None
    norm_paths: tuple[str, ...] = ()
    registers: str | None = None
    naflex: bool = False
    load_kwargs: tuple[tuple[str, Any], ...] = ()


FAMILIES: dict[str, Family] = {}
for _types, _family in (
    (("clip", "clip_vision_model"), Family("CLIP", "CLIPVisionModelWithProjection", "4.0", True, "visual_projection")),
    (("siglip", "siglip_vision_model"), Family("SigLIP", "SiglipVisionModel", "4.37", False, "head")),
    (("siglip2", "siglip2_vision_model"), Family("SigLIP2 NaFlex", "Siglip2VisionModel", "4.49", False, "head",
                                                 naflex=True)),
    (("dinov2",), Family("DINOv2", "Dinov2Model", "4.30", True, "norm_cls", ("layernorm",))),
    (("dinov3_vit",), Family("DINOv3", "DINOv3ViTModel", "4.56", True, "norm_cls", ("norm",),
                             registers="num_register_tokens")),
    (("aimv2", "aimv2_vision_model"), Family("AIMv2", "Aimv2VisionModel", "4.54", False, "head")),
    # WebSSL checkpoints: ViT (the MAE-pretrained encoders are published as plain ViTs) or ViT-MAE.
    (("vit",), Family("ViT (WebSSL)", "ViTModel", "4.0", True, "norm_cls", ("layernorm",),
                      load_kwargs=(("add_pooling_layer", False),))),
    (("vit_mae",), Family("ViT-MAE (WebSSL)", "ViTMAEModel", "4.0", True, "norm_cls", ("layernorm",),
                          load_kwargs=(("mask_ratio", 0.0),))),
):
    for _t in _types:
        FAMILIES[_t] = _family

SUPPORTED = ("CLIP, SigLIP, SigLIP2 (NaFlex and fixed-size), DINOv2, DINOv3, AIMv2, ViT / ViT-MAE (WebSSL), "
             "the vision towers of LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL and Gemma-3 "
             "(transformers), and open_clip models")


def unsupported(name: str, model_type: str) -> UserError:
    return UserError(f"model_name {name}: model type {model_type!r} is not supported; supported: {SUPPORTED}",
                     field="model_name")


def weights_error(name: str, source: str, cls: str, err: Exception) -> UserError:
    """One line for a checkpoint whose weights do not fit the class (never a traceback)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "size mismatch" in ln or "shape" in ln), lines[0] if lines else "")
    return UserError(f"model_name {name}: the weights of {source} do not fit {cls} ({detail[:300]}); is it "
                     f"the checkpoint you meant, and is its config.json the one saved with it?", field="model_name")


def _model_class(name: str, family: Family):
    import transformers

    cls = getattr(transformers, family.class_name, None)
    if cls is None:
        raise UserError(f"model_name {name}: {family.label} needs transformers >= {family.since} "
                        f"({family.class_name}); installed: {transformers.__version__}", field="model_name")
    return cls


# Parts of a checkpoint a vision class leaves out by design: the text tower and logit scale of a full
# CLIP / SigLIP / AIMv2 checkpoint, the random pooler of a ViT loaded without it, ViT-MAE's decoder,
# a classification head; buffers that newer transformers no longer save.
SKIPPED_BY_DESIGN = ("text_model.", "text_projection", "logit_scale", "logit_bias", "pooler.", "decoder.",
                     "classifier.")
NOT_WEIGHTS = ("position_ids", "num_batches_tracked", "inv_freq")


def loading_problems(info: dict, skipped_by_design: tuple[str, ...] = SKIPPED_BY_DESIGN) -> dict[str, list[str]]:
    """What ``from_pretrained(..., output_loading_info=True)`` reports that makes a model not the
    checkpoint's: weights the class expects but the checkpoint lacks (transformers initialises them
    at random) and checkpoint weights the class does not use outside the parts skipped by design
    (a checkpoint of another family: its names match nothing)."""
    def names(key: str) -> list[str]:
        return sorted(str(k) for k in (info.get(key) or ()) if not str(k).endswith(NOT_WEIGHTS))

    missing = names("missing_keys")
    unexpected = [k for k in names("unexpected_keys") if not k.startswith(skipped_by_design)]
    return {k: v for k, v in (("missing", missing), ("unexpected", unexpected)) if v}


def missing_weights_error(name: str, source: str, cls: str, problems: dict[str, list[str]],
                          field: str = "model_name") -> UserError:
    """One line: which weights the class did not get from the checkpoint (the first few, the count)."""
    parts = []
    for what, keys in problems.items():
        label = {"missing": "not in the checkpoint (they would be random)",
                 "unexpected": "in the checkpoint but unused by the class"}[what]
        parts.append(f"{len(keys)} weight(s) {label}, first: {', '.join(keys[:3])}")
    return UserError(f"{field} {name}: the weights of {source} are not a complete {cls}: {'; '.join(parts)}. "
                     f"Is config.json the one saved with these weights? (--allow_missing_weights loads it anyway "
                     f"and records the missing weights in the manifest)", field=field)


def quiet_from_pretrained(name: str, source: str, cls, allow_missing: bool = False,
                          skipped_by_design: tuple[str, ...] = SKIPPED_BY_DESIGN,
                          loading_report: dict | None = None, field: str = "model_name", **kwargs):
    """``cls.from_pretrained(source)`` with the report of skipped weights kept quiet (the text
    tower of a full CLIP / SigLIP checkpoint is skipped by design), and one-line errors.

    Every weight the class expects must come from the checkpoint: a config of one family over the
    weights of another loads with every weight random, and a checkpoint missing a block leaves that
    block random, both without an error from transformers. Those are refused (one line naming the
    first few and the count) unless ``allow_missing``; ``loading_report`` receives what was missing."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    from safetensors import SafetensorError

    try:
        model, info = cls.from_pretrained(source, output_loading_info=True, **kwargs)
    except SafetensorError as err:  # a truncated or damaged weights file
        raise UserError(f"{field} {name}: the weights file of {source} is damaged or truncated ({str(err)[:200]}); "
                        f"download or save the model again", field=field) from None
    except OSError as err:
        raise hub_error(name, source, err) from None
    except (ValueError, RuntimeError) as err:
        text = str(err)
        if "mismatch" in text or "ignore_mismatched_sizes" in text or "shape" in text:
            raise weights_error(name, source, cls.__name__, _first_mismatch(source, cls, kwargs) or err) from None
        raise hub_error(name, source, err) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = loading_problems(info, skipped_by_design)
    if problems and not allow_missing:
        raise missing_weights_error(name, source, cls.__name__, problems, field)
    if problems and loading_report is not None:
        loading_report.update({what: {"count": len(keys), "first": keys[:10]} for what, keys in problems.items()})
    return model


def _first_mismatch(source: str, cls, kwargs: dict) -> Exception | None:
    """The first weight whose shape differs, as transformers reports it when told to go on (its
    own error only points at a log report that is kept quiet here)."""
    try:
        model, info = cls.from_pretrained(source, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)  # a set: name the same one every time
    if not mismatched:
        return None
    first = mismatched[0]
    if isinstance(first, str):  # transformers 4.x lists the keys alone: the shapes from the files
        theirs, ours = _checkpoint_shape(source, first), model.state_dict().get(first)
        if theirs is not None and ours is not None:
            first = (first, theirs, tuple(ours.shape))
    if isinstance(first, (tuple, list)) and len(first) == 3:
        key, theirs, ours = first
        return ValueError(f"size mismatch for {key}: checkpoint {tuple(theirs)}, model {tuple(ours)}; "
                          f"{len(mismatched)} weight(s) differ")
    return ValueError(f"size mismatch for {first}; {len(mismatched)} weight(s) differ")


def _checkpoint_shape(source: str, key: str) -> tuple[int, ...] | None:
    """The shape of weight ``key`` in a local checkpoint's safetensors files (None if not found)."""
    from safetensors import safe_open

    for f in sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []:
        with safe_open(str(f), "pt") as st:
            if key in st.keys():
                return tuple(st.get_slice(key).get_shape())
    return None


def load_config(name: str, source: str):
    """The transformers config at ``source``; an unknown model type is one line naming the
    supported families."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        text = str(err)
        if "model type" in text or "does not recognize this architecture" in text:
            import json
            from pathlib import Path

            cfg_file = Path(source) / "config.json"
            model_type = json.loads(cfg_file.read_text()).get("model_type", "?") if cfg_file.is_file() else "?"
            raise unsupported(name, model_type) from None
        raise hub_error(name, source, err) from None


def load_transformers_encoder(name: str, source: str, warn: Callable[[str], None],
                              processor_backend: str = "pil", config: Any = None,
                              allow_missing_weights: bool = False) -> VisionEncoder:
    config = config if config is not None else load_config(name, source)
    model_type = config.model_type
    family = FAMILIES.get(model_type)
    if family is None:
        raise unsupported(name, model_type)
    cls = _model_class(name, family)
    report: dict = {}
    model = quiet_from_pretrained(name, source, cls, allow_missing_weights, loading_report=report,
                                  **dict(family.load_kwargs))
    model.eval()
    if report:
        warn(f"{name}: loaded with --allow_missing_weights; " + "; ".join(
            f"{r['count']} {what} weight(s), first {r['first'][0]}" for what, r in report.items()))
    vcfg = getattr(config, "vision_config", config)
    processor, processor_origin = _processor(source, vcfg, model_type, warn, processor_backend)
    encoder = encoder_from_model(name, source, model, family, model_type, processor, processor_origin,
                                 processor_backend)
    if report:
        encoder.info["missing_weights"] = report  # recorded in every store's manifest
    return encoder


def encoder_from_model(name: str, source: str, model: nn.Module, family: Family, model_type: str,
                       processor: Any, processor_origin: str, processor_backend: str) -> VisionEncoder:
    """A :class:`VisionEncoder` around a loaded transformers vision model of ``family``."""
    found = get_attr_path(model, BLOCK_PATHS)
    if found is None:
        raise RuntimeError(f"{source}: no encoder blocks at any of {BLOCK_PATHS}")
    block_path, blocks = found
    vcfg = model.config
    hidden = int(vcfg.hidden_size)

    projection: nn.Module | None = None
    projection_dim: int | None = None
    take: Callable[[Any], torch.Tensor] = lambda out: out  # noqa: E731
    if family.projection == "visual_projection":
        projection = model.visual_projection  # image_embeds = visual_projection(pooled)
        projection_dim = int(model.visual_projection.out_features)
    elif family.projection == "head":
        head = get_attr_path(model, SIGLIP_HEAD_PATHS)
        projection = head[1] if head else None  # pooler_output = head(post-norm tokens)
        projection_dim = hidden if head else None
    elif family.projection == "norm_cls":
        norm = get_attr_path(model, family.norm_paths)
        projection = norm[1] if norm else None  # pooler_output = norm(sequence)[:, 0]
        projection_dim = hidden if norm else None
        take = lambda out: first_tensor(out)[:, 0]  # noqa: E731

    registers = int(getattr(vcfg, family.registers, 0) or 0) if family.registers else 0
    token_mask = None
    excluded = ""
    keys: tuple[str, ...] = ("pixel_values",)
    if family.naflex:
        keys = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
        token_mask = _padding_mask
        excluded = "padding tokens of the NaFlex patch sequence (pixel_attention_mask 0)"
    elif registers:
        token_mask = _RegisterMask(registers)
        excluded = f"the {registers} register tokens (positions 1..{registers})"

    if family.naflex:
        run = lambda px: model(**px)  # noqa: E731
    elif model_type == "vit_mae":
        # ViT-MAE shuffles patches by argsort(noise) even with mask_ratio 0: a fixed increasing
        # noise keeps every patch, in image order
        run = lambda px: model(pixel_values=px, noise=_increasing_noise(px, model))  # noqa: E731
    else:
        run = lambda px: model(pixel_values=px)  # noqa: E731
    return VisionEncoder(
        name=name, source=source, backend="transformers", model=model, blocks=list(blocks),
        projection_module=projection, projection_from_output=take,
        run=run, preprocess=_HFPreprocess(processor, keys),
        has_cls=family.has_cls, hidden_size=hidden, projection_dim=projection_dim,
        token_mask=token_mask, variable_tokens=family.naflex,
        info={"class": type(model).__name__, "model_type": model_type, "family": family.label,
              "block_path": block_path, "image_size": int(getattr(vcfg, "image_size", 0) or 0),
              "processor": processor_origin, "processor_class": type(processor).__name__,
              "processor_backend": processor_backend,
              **({"register_tokens": registers} if registers else {}),
              **({"excluded_tokens": excluded} if excluded else {})},
    )


def _padding_mask(pixels: Any, num_tokens: int) -> torch.Tensor:
    """SigLIP2 NaFlex: the processor's pixel_attention_mask (1 = a real patch)."""
    mask = pixels["pixel_attention_mask"].bool()
    if mask.shape[1] != num_tokens:
        raise RuntimeError(f"pixel_attention_mask has {mask.shape[1]} positions, the block {num_tokens} tokens")
    return mask


class _RegisterMask:
    """DINOv3: tokens are [CLS, registers, patches]; the registers are not image content."""

    def __init__(self, registers: int):
        self.registers = registers

    def __call__(self, pixels: Any, num_tokens: int) -> torch.Tensor:
        batch = pixels.shape[0]
        mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=pixels.device)
        mask[:, 1:1 + self.registers] = False
        return mask


def _increasing_noise(pixels: torch.Tensor, model: nn.Module) -> torch.Tensor:
    cfg = model.config
    n = (pixels.shape[-2] // cfg.patch_size) * (pixels.shape[-1] // cfg.patch_size)
    return torch.arange(n, dtype=torch.float32, device=pixels.device).expand(pixels.shape[0], n)
