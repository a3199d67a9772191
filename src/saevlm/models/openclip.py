"""open_clip backend: ``open_clip:<arch>[/<pretrained tag>]``, ``open_clip:hf-hub:<repo>`` or a
local directory holding ``open_clip_config.json`` and weights.

Blocks are ``visual.transformer.resblocks`` (batch-first in open_clip 3.x) or, for timm towers,
``visual.trunk.blocks``. The projection point is the output of ``model.visual``, which is what
``encode_image`` returns (before any normalisation).
"""

from __future__ import annotations

from typing import Callable

from saevlm.errors import UserError
from saevlm.models.base import VisionEncoder
from saevlm.models.base import get_attr_path

OPEN_CLIP_BLOCK_PATHS = ("visual.transformer.resblocks", "visual.trunk.blocks")


def load_open_clip_encoder(name: str, spec: str, warn: Callable[[str], None]) -> VisionEncoder:
    """``spec`` is ``arch``, ``arch/pretrained``, ``hf-hub:repo`` or ``local-dir:/path``."""
    import open_clip

    if spec.startswith(("hf-hub:", "local-dir:")):
        arch, pretrained = spec, None
    elif "/" in spec:
        arch, pretrained = spec.split("/", 1)
    else:
        arch, pretrained = spec, None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except RuntimeError as err:
        if "Unknown model" in str(err) or "not found" in str(err).lower():
            raise UserError(f"model_name {name}: open_clip does not know {arch!r} ({err})", field="model_name") from None
        raise UserError(f"model_name {name}: open_clip could not create {spec!r}: {err}", field="model_name") from None
    except (OSError, ValueError) as err:
        raise UserError(
            f"model_name {name}: open_clip could not load {spec!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:300]}). Weights cannot be fetched offline: pass a local "
            f"directory with open_clip_config.json and weights, or run with network access.", field="model_name") from None
    if pretrained is None and not spec.startswith(("hf-hub:", "local-dir:")):
        warn(f"open_clip {arch}: no pretrained tag given, the weights are RANDOM "
             f"(use open_clip:{arch}/<tag>, e.g. /openai)")
    model.eval()
    found = get_attr_path(model, OPEN_CLIP_BLOCK_PATHS)
    if found is None:
        raise UserError(f"model_name {name}: no transformer blocks found in this open_clip model "
                        f"(looked at {', '.join(OPEN_CLIP_BLOCK_PATHS)}); convolutional towers have no "
                        f"post_mlp_residual point", field="model_name")
    block_path, blocks = found
    visual = model.visual
    if hasattr(visual, "class_embedding"):
        has_cls = visual.class_embedding is not None
        hidden = int(visual.transformer.width)
    else:  # timm trunk
        has_cls = getattr(visual.trunk, "cls_token", None) is not None
        hidden = int(visual.trunk.embed_dim)
    projection_dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[-1])
    take = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    return VisionEncoder(
        name=name, source=spec, backend="open_clip", model=model, blocks=list(blocks),
        projection_module=visual, projection_from_output=take,
        run=lambda px: model.encode_image(px), preprocess=preprocess, has_cls=has_cls,
        hidden_size=hidden, projection_dim=projection_dim,
        info={"class": type(model).__name__, "architecture": arch, "pretrained": pretrained,
              "block_path": block_path},
    )
