"""Model registry: names -> loaders (the families are listed in ``saevlm.models.hf.FAMILIES`` and,
for the vision towers inside MLLMs, ``saevlm.models.towers.TOWERS``).

``load_encoder(name)`` accepts
- a short name used by the authors' scripts (``clip-vit-large-patch14-336``, ...; see SHORT_NAMES),
- a Hugging Face hub id (``openai/clip-vit-base-patch32``),
- a local directory (transformers ``config.json`` or open_clip ``open_clip_config.json``),
- ``open_clip:<arch>[/<pretrained>]`` or ``open_clip:hf-hub:<repo>``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from saevlm.errors import UserError

SHORT_NAMES: dict[str, str] = {
    "clip-vit-large-patch14-336": "openai/clip-vit-large-patch14-336",
    "clip-vit-large-patch14": "openai/clip-vit-large-patch14",
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "clip-vit-base-patch16": "openai/clip-vit-base-patch16",
    "siglip-so400m-patch14-384": "google/siglip-so400m-patch14-384",
    "siglip-base-patch16-224": "google/siglip-base-patch16-224",
    "dinov2-small": "facebook/dinov2-small",
    "dinov2-base": "facebook/dinov2-base",
    "dinov2-large": "facebook/dinov2-large",
    # the paper's other encoders (arXiv 2504.02821, Sec. 4)
    "aimv2-large-patch14-224": "apple/aimv2-large-patch14-224",
    "webssl-mae300m-full2b-224": "facebook/webssl-mae300m-full2b-224",
    # today's encoders
    "dinov3-vitb16": "facebook/dinov3-vitb16-pretrain-lvd1689m",
    "dinov3-vitl16": "facebook/dinov3-vitl16-pretrain-lvd1689m",
    "siglip2-so400m-patch16-naflex": "google/siglip2-so400m-patch16-naflex",
    "siglip2-base-patch16-naflex": "google/siglip2-base-patch16-naflex",
}
OPEN_CLIP_PREFIX = "open_clip:"


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _load_transformers(name: str, source: str, warn: Callable[[str], None], processor_backend: str,
                       allow_missing_weights: bool = False):
    """A transformers vision model, or the vision tower of a supported MLLM."""
    from saevlm.models.hf import load_config, load_transformers_encoder
    from saevlm.models.towers import TOWERS, load_tower_encoder

    config = load_config(name, source)
    if config.model_type in TOWERS:  # an MLLM: its vision tower, as the MLLM runs it
        return load_tower_encoder(name, source, config, warn, processor_backend, allow_missing_weights)
    return load_transformers_encoder(name, source, warn, processor_backend, config=config,
                                     allow_missing_weights=allow_missing_weights)


def load_encoder(name: str, warn: Callable[[str], None] = _stderr_warn, processor_backend: str = "pil",
                 allow_missing_weights: bool = False):
    """Load a vision encoder (eval mode, on CPU) by name; see the module docstring. Weights the
    model's class expects but the checkpoint lacks are refused unless ``allow_missing_weights``."""
    from saevlm.models.openclip import load_open_clip_encoder

    if not name:
        raise UserError("model_name: empty", field="model_name")
    if name.startswith(OPEN_CLIP_PREFIX):
        return load_open_clip_encoder(name, name[len(OPEN_CLIP_PREFIX):], warn)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return load_open_clip_encoder(name, f"local-dir:{path.resolve()}", warn)
        if (path / "config.json").is_file():
            return _load_transformers(name, str(path.resolve()), warn, processor_backend, allow_missing_weights)
        raise UserError(f"model_name {name}: the directory has neither config.json (transformers) "
                        f"nor open_clip_config.json (open_clip)", field="model_name")
    if name in SHORT_NAMES:
        return _load_transformers(name, SHORT_NAMES[name], warn, processor_backend, allow_missing_weights)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return _load_transformers(name, name, warn, processor_backend, allow_missing_weights)
    if path.suffix or name.startswith((".", "/", "~")):
        raise UserError(f"model_name {name}: no such directory", field="model_name")
    raise UserError(f"model_name {name}: unknown model. Use a short name "
                    f"({', '.join(SHORT_NAMES)}), a hub id (org/name), a local directory, or "
                    f"open_clip:<arch>/<pretrained>", field="model_name")
