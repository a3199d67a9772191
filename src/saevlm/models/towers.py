"""The vision towers inside multimodal LLMs: which module holds the blocks, which block the
language model reads, and how to load the tower alone for extraction.

One :class:`TowerFamily` per supported MLLM (``config.model_type``):

=================  ======================================  ===========  ===============================
family             class                                   tower        block the language model reads
=================  ======================================  ===========  ===============================
LLaVA-1.5          ``LlavaForConditionalGeneration``       CLIP         ``vision_feature_layer`` (-2)
LLaVA-NeXT         ``LlavaNextForConditionalGeneration``   CLIP         ``vision_feature_layer`` (-2)
LLaVA-OneVision    ``LlavaOnevisionForConditionalGen...``  SigLIP       ``vision_feature_layer`` (-1)
Qwen2.5-VL         ``Qwen2_5_VLForConditionalGeneration``  Qwen ViT     the last block (then the merger)
Gemma-3            ``Gemma3ForConditionalGeneration``      SigLIP       the last block (post-LN, pooled)
=================  ======================================  ===========  ===============================

``hidden_states[v]`` of a tower is the output of block ``v - 1`` (``hidden_states[0]`` is the
embedding), so ``vision_feature_layer = -2`` of 24 blocks reads block 22: a hook on block 23
cannot change what the model generates.

Module paths differ between transformers 4.x (``model.vision_tower.vision_model.encoder.layers``,
``visual.blocks``) and 5.x (``model.vision_tower.encoder.layers``, ``model.visual.blocks``); they
are tried in turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from saevlm.errors import UserError


@dataclass(frozen=True)
class TowerFamily:
    label: str
    model_class: str
    since: str  # the transformers version that added the class
    tower_paths: tuple[str, ...]  # the tower module inside the full model (5.x path first)
    block_paths: tuple[str, ...]  # its blocks, relative to the tower
    read: str  # "vision_feature_layer" or "last"
    weight_prefixes: tuple[str, ...]  # the tower's key prefixes in a checkpoint
    tokens: str  # what one image becomes in the tower, for docs and messages
    authors_word_rule: bool = False  # the decoded sequence holds "ASSISTANT: " (LLaVA-1.5's template)


_LLAVA_TOWER = ("model.vision_tower", "vision_tower")
_SIGLIP_CLIP_BLOCKS = ("encoder.layers", "vision_model.encoder.layers")
_LLAVA_PREFIXES = ("model.vision_tower.", "vision_tower.")

TOWERS: dict[str, TowerFamily] = {
    "llava": TowerFamily("LLaVA-1.5", "LlavaForConditionalGeneration", "4.36", _LLAVA_TOWER, _SIGLIP_CLIP_BLOCKS,
                         "vision_feature_layer", _LLAVA_PREFIXES, "one 336 px view (576 patches + CLS)",
                         authors_word_rule=True),
    "llava_next": TowerFamily("LLaVA-NeXT", "LlavaNextForConditionalGeneration", "4.39", _LLAVA_TOWER,
                              _SIGLIP_CLIP_BLOCKS, "vision_feature_layer", _LLAVA_PREFIXES,
                              "anyres: a base view plus high-resolution tiles, each a full tower pass"),
    "llava_onevision": TowerFamily("LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", "4.45",
                                   _LLAVA_TOWER, _SIGLIP_CLIP_BLOCKS, "vision_feature_layer", _LLAVA_PREFIXES,
                                   "anyres-max: a base view plus tiles, each a full SigLIP pass"),
    "qwen2_5_vl": TowerFamily("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "4.49",
                              ("model.visual", "visual"), ("blocks",), "last", ("model.visual.", "visual."),
                              "native resolution: 14 px patches in windows, merged 2 x 2 after the last block"),
    "gemma3": TowerFamily("Gemma-3", "Gemma3ForConditionalGeneration", "4.50", _LLAVA_TOWER, _SIGLIP_CLIP_BLOCKS,
                          "last", _LLAVA_PREFIXES, "one 896 px view (4096 patches, average-pooled to 256 tokens)"),
}


def supported_families() -> str:
    return ", ".join(f.label for f in TOWERS.values())


def get_path(root: Any, paths: tuple[str, ...]) -> Any | None:
    from saevlm.models.hf import get_attr_path

    found = get_attr_path(root, paths)
    return None if found is None else found[1]


def tower_of(model: Any, family: TowerFamily):
    """The vision tower module of a loaded MLLM."""
    tower = get_path(model, family.tower_paths)
    if tower is None:
        raise RuntimeError(f"no vision tower at any of {family.tower_paths} in {type(model).__name__}")
    return tower


def blocks_of(tower: Any, family: TowerFamily):
    blocks = get_path(tower, family.block_paths)
    if blocks is None:
        raise RuntimeError(f"no vision blocks at any of {family.block_paths} in {type(tower).__name__}")
    return blocks


def read_block(config: Any, family: TowerFamily, num_blocks: int) -> int:
    """The deepest block whose output the language model reads (see the module docstring)."""
    if family.read == "last":
        return num_blocks - 1
    v = getattr(config, "vision_feature_layer", -2)
    layers = v if isinstance(v, (list, tuple)) else [v]
    # hidden_states[i] is block i - 1's output; negative i counts from num_blocks + 1 states
    return max((int(i) if int(i) >= 0 else num_blocks + 1 + int(i)) - 1 for i in layers)


def block_fingerprint(block: Any) -> str:
    """A short hash of a block's weights rounded to fp16 (so an fp32 CLIP and the fp16 copy of it
    inside LLaVA agree): tells whether an SAE's activations came from this very tower."""
    import torch

    h = hashlib.sha1()
    for key, value in sorted(block.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- the tower alone, for extract
def _checkpoint_files(name: str, source: str) -> list[str]:
    from pathlib import Path

    path = Path(source)
    if path.is_dir():
        files = sorted(str(f) for f in path.glob("*.safetensors"))
        if not files:
            raise UserError(f"model_name {name}: {source} has no *.safetensors weights", field="model_name")
        return files
    import json

    from huggingface_hub import hf_hub_download

    from saevlm.models.hf import hub_error

    try:
        index = hf_hub_download(source, "model.safetensors.index.json")
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        return [hf_hub_download(source, s) for s in shards]
    except Exception:  # noqa: BLE001 - no index: a single-file checkpoint
        try:
            return [hf_hub_download(source, "model.safetensors")]
        except Exception as err:  # noqa: BLE001 - offline, gated, missing: one message
            raise hub_error(name, source, err) from None


def _tower_state_dict(name: str, source: str, family: TowerFamily, wanted: dict[str, Any]) -> dict[str, Any]:
    """The tower's weights from the checkpoint, read lazily (only the tower's tensors), with the
    4.x ``vision_model.`` level matched either way."""
    from safetensors import safe_open

    def norm(key: str) -> str:
        return key[len("vision_model."):] if key.startswith("vision_model.") else key

    by_norm = {norm(k): k for k in wanted}
    out: dict[str, Any] = {}
    for file in _checkpoint_files(name, source):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                prefix = next((p for p in family.weight_prefixes if key.startswith(p)), None)
                if prefix is None:
                    continue
                ours = by_norm.get(norm(key[len(prefix):]))
                if ours is not None:
                    out[ours] = f.get_tensor(key)
    return out


def load_tower_encoder(name: str, source: str, config: Any, warn: Callable[[str], None],
                       processor_backend: str = "pil"):
    """The vision tower of an MLLM as a :class:`VisionEncoder`, with the MLLM's own image
    processor (for tiled models, the base view: the whole image at the tower's resolution), so
    an SAE trained on these activations sees what steering will feed it."""
    import torch

    from saevlm.models.hf import FAMILIES, Family, encoder_from_model, weights_error

    family = TOWERS[config.model_type]
    vcfg = config.vision_config
    if config.model_type == "qwen2_5_vl":
        raise UserError(f"model_name {name}: extraction from Qwen2.5-VL's vision tower is not supported (its "
                        f"windowed ViT takes a patch grid per image, not a pixel batch); steering it is",
                        field="model_name")
    tower_family = FAMILIES.get(vcfg.model_type)
    if tower_family is None or tower_family.label not in ("CLIP", "SigLIP"):
        raise UserError(f"model_name {name}: {family.label} with a {vcfg.model_type!r} tower is not supported",
                        field="model_name")
    import transformers

    cls = transformers.CLIPVisionModel if tower_family.label == "CLIP" else transformers.SiglipVisionModel
    model = cls(vcfg).eval()
    wanted = model.state_dict()
    weights = _tower_state_dict(name, source, family, wanted)
    missing = [k for k in wanted if k not in weights and not k.endswith("position_ids")]
    if missing:
        raise weights_error(name, source, f"{cls.__name__} (the {family.label} tower)",
                            ValueError(f"{len(missing)} tower weights not in the checkpoint, first: {missing[0]}"))
    for key, value in weights.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise weights_error(name, source, cls.__name__, ValueError(
                f"size mismatch for {key}: checkpoint {tuple(value.shape)}, model {tuple(wanted[key].shape)}"))
    with torch.no_grad():
        model.load_state_dict({k: v.to(wanted[k].dtype) for k, v in weights.items()}, strict=False)

    from saevlm.models.hf import auto_processor

    try:
        processor = auto_processor(source, processor_backend)
    except (OSError, ValueError) as err:
        from saevlm.models.hf import hub_error
        raise hub_error(name, source, err) from None
    # no projection: the MLLM reads blocks, not a pooled embedding
    as_tower = Family(f"{family.label} tower ({tower_family.label})", cls.__name__, tower_family.since,
                      tower_family.has_cls, None)
    encoder = encoder_from_model(name, source, model, as_tower, vcfg.model_type, processor, "preprocessor_config",
                                 processor_backend)
    encoder.preprocess = _BaseView(encoder.preprocess)
    blocks = encoder.blocks
    encoder.info.update({"mllm": family.label, "mllm_class": family.model_class,
                         "read_block": read_block(config, family, len(blocks))})
    return encoder


class _BaseView:
    """Tiling processors (LLaVA-NeXT, OneVision) return ``[tiles, 3, H, W]`` per image; tile 0
    is the base view, the whole image at the tower's resolution."""

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, image):
        pixels = self.inner(image)
        return pixels[0] if pixels.dim() == 4 else pixels
