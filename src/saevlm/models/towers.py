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
    authors_word_rule: bool = False  # the decoded sequence holds "ASSISTANT: " (LLaVA-1.5's template)


# the MLLM steering defaults to: the paper's LLaVA-1.5 (arXiv 2504.02821, Sec. 4.3)
DEFAULT_MLLM = "llava-hf/llava-1.5-7b-hf"

_LLAVA_TOWER = ("model.vision_tower", "vision_tower")
_SIGLIP_CLIP_BLOCKS = ("encoder.layers", "vision_model.encoder.layers")
_LLAVA_PREFIXES = ("model.vision_tower.", "vision_tower.")

TOWERS: dict[str, TowerFamily] = {
    "llava": TowerFamily("LLaVA-1.5", "LlavaForConditionalGeneration", "4.36", _LLAVA_TOWER, _SIGLIP_CLIP_BLOCKS,
                         "vision_feature_layer", _LLAVA_PREFIXES, authors_word_rule=True),
    "llava_next": TowerFamily("LLaVA-NeXT", "LlavaNextForConditionalGeneration", "4.39", _LLAVA_TOWER,
                              _SIGLIP_CLIP_BLOCKS, "vision_feature_layer", _LLAVA_PREFIXES),
    "llava_onevision": TowerFamily("LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", "4.45",
                                   _LLAVA_TOWER, _SIGLIP_CLIP_BLOCKS, "vision_feature_layer", _LLAVA_PREFIXES),
    "qwen2_5_vl": TowerFamily("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "4.49",
                              ("model.visual", "visual"), ("blocks",), "last", ("model.visual.", "visual.")),
    "gemma3": TowerFamily("Gemma-3", "Gemma3ForConditionalGeneration", "4.50", _LLAVA_TOWER, _SIGLIP_CLIP_BLOCKS,
                          "last", _LLAVA_PREFIXES),
}


def supported_families() -> str:
    return ", ".join(f.label for f in TOWERS.values())


def get_path(root: Any, paths: tuple[str, ...]) -> Any | None:
    from saevlm.models.base import get_attr_path

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
                       processor_backend: str = "pil", allow_missing_weights: bool = False):
    """The vision tower of an MLLM as a :class:`VisionEncoder`, with the MLLM's own image
    processor (for tiled models, the base view: the whole image at the tower's resolution), so
    an SAE trained on these activations sees what steering will feed it."""
    from saevlm.models.hf import FAMILIES, Family, encoder_from_model

    family = TOWERS[config.model_type]
    vcfg = config.vision_config
    if config.model_type == "qwen2_5_vl":
        return _load_qwen_tower(name, source, config, family, processor_backend)
    tower_family = FAMILIES.get(vcfg.model_type)
    if tower_family is None or tower_family.label not in ("CLIP", "SigLIP"):
        raise UserError(f"model_name {name}: {family.label} with a {vcfg.model_type!r} tower is not supported",
                        field="model_name")
    import transformers

    cls = transformers.CLIPVisionModel if tower_family.label == "CLIP" else transformers.SiglipVisionModel
    model = cls(vcfg).eval()
    missing = _load_tower_weights(name, source, family, model, allow_missing_weights)

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
    if missing:
        warn(f"{name}: loaded with --allow_missing_weights; {len(missing)} tower weight(s) not in the checkpoint, "
             f"first {missing[0]}")
        encoder.info["missing_weights"] = {"missing": {"count": len(missing), "first": missing[:10]}}
    return encoder


def _load_tower_weights(name: str, source: str, family: TowerFamily, model: Any,
                        allow_missing: bool = False) -> list[str]:
    """Load the tower's weights from the MLLM checkpoint; returns the names of weights it lacked
    (refused unless ``allow_missing``)."""
    import torch

    from saevlm.models.hf import weights_error

    wanted = model.state_dict()
    weights = _tower_state_dict(name, source, family, wanted)
    cls = type(model).__name__
    missing = [k for k in wanted if k not in weights and not k.endswith(("position_ids", "inv_freq"))]
    if missing and not allow_missing:
        raise weights_error(name, source, f"{cls} (the {family.label} tower)",
                            ValueError(f"{len(missing)} tower weights not in the checkpoint, first: {missing[0]}"))
    for key, value in weights.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise weights_error(name, source, cls, ValueError(
                f"size mismatch for {key}: checkpoint {tuple(value.shape)}, model {tuple(wanted[key].shape)}"))
    with torch.no_grad():
        model.load_state_dict({k: v.to(wanted[k].dtype) for k, v in weights.items()}, strict=False)
    return missing


def _load_qwen_tower(name: str, source: str, config: Any, family: TowerFamily, processor_backend: str):
    """Qwen2.5-VL's ViT as an encoder. It takes a patch grid per image and runs a batch as one
    sequence in attention windows; for batching every image is resized to one square side (the
    largest multiple of 28 px up to 448 that the processor keeps), and block outputs are put back
    into the processor's patch order per image (``_QwenOrder``)."""
    import transformers

    from saevlm.models.base import VisionEncoder
    from saevlm.models.hf import auto_processor, hub_error

    try:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    except ImportError:
        raise UserError(f"model_name {name}: Qwen2.5-VL needs transformers >= {family.since}; installed: "
                        f"{transformers.__version__}", field="model_name") from None
    vcfg = config.vision_config
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vcfg).eval()
    _load_tower_weights(name, source, family, tower)
    try:
        processor = auto_processor(source, processor_backend)
    except (OSError, ValueError) as err:
        raise hub_error(name, source, err) from None
    factor = int(vcfg.patch_size) * int(vcfg.spatial_merge_size)
    max_pixels = int(getattr(processor, "max_pixels", None) or (processor.size or {}).get("longest_edge", 448 * 448))
    side = max(factor, min(448, int(max_pixels ** 0.5)) // factor * factor)
    blocks = list(tower.blocks)
    return VisionEncoder(
        name=name, source=source, backend="transformers", model=tower, blocks=blocks, projection_module=None,
        projection_from_output=lambda out: out, run=_QwenRun(tower), preprocess=_QwenPreprocess(processor, side),
        has_cls=False, hidden_size=int(vcfg.hidden_size), projection_dim=None, block_output=_QwenOrder(tower),
        info={"class": type(tower).__name__, "model_type": vcfg.model_type, "family": f"{family.label} tower",
              "block_path": "blocks", "image_size": side, "processor": "preprocessor_config",
              "processor_class": type(processor).__name__, "processor_backend": processor_backend,
              "mllm": family.label, "mllm_class": family.model_class,
              "read_block": read_block(config, family, len(blocks)),
              "resize": f"every image resized to {side} x {side} px (one patch grid per batch)"})


class _QwenPreprocess:
    def __init__(self, processor: Any, side: int):
        self.processor, self.side = processor, side

    def __call__(self, image):
        from PIL import Image

        out = self.processor(images=image.convert("RGB").resize((self.side, self.side), Image.BICUBIC),
                             return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"][0]}


class _QwenRun:
    def __init__(self, tower: Any):
        self.tower = tower

    def __call__(self, pixels: dict):
        flat = pixels["pixel_values"].reshape(-1, pixels["pixel_values"].shape[-1])
        return self.tower(flat, grid_thw=pixels["image_grid_thw"].reshape(-1, 3))


class _QwenOrder:
    """The tower's blocks see every image's patches as one sequence, regrouped into attention
    windows by merge unit (2 x 2 patches); this undoes the windows (the model itself does the same
    after its merger) and splits the sequence per image: ``[B, T, D]`` in the processor's order."""

    def __init__(self, tower: Any):
        self.tower = tower

    def window_index(self, grid_thw):
        if hasattr(self.tower, "get_window_index"):  # transformers 4.x
            return self.tower.get_window_index(grid_thw)[0]
        from transformers.vision_utils import get_vision_window_index
        return get_vision_window_index(grid_thw, spatial_merge_size=self.tower.spatial_merge_size,
                                       window_size=self.tower.window_size, patch_size=self.tower.patch_size)[0]

    def __call__(self, out, pixels: dict):
        import torch

        grid = pixels["image_grid_thw"].reshape(-1, 3)
        unit = int(self.tower.spatial_merge_size) ** 2
        index = torch.as_tensor(self.window_index(grid), device=out.device)
        units = out.reshape(-1, unit, out.shape[-1])[torch.argsort(index)]
        return units.reshape(grid.shape[0], -1, out.shape[-1])


class _BaseView:
    """Tiling processors (LLaVA-NeXT, OneVision) return ``[tiles, 3, H, W]`` per image; tile 0
    is the base view, the whole image at the tower's resolution."""

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, image):
        pixels = self.inner(image)
        return pixels[0] if pixels.dim() == 4 else pixels


def read_block_of(source: str) -> int:
    """The block the language model of the MLLM at ``source`` reads, from its config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    family = TOWERS.get(config.model_type)
    if family is None:
        raise UserError(f"{source}: model type {config.model_type!r} is not a supported MLLM; supported: "
                        f"{supported_families()}")
    vision = config.vision_config  # Qwen2.5-VL's vision config counts its blocks as depth (4.x: only so)
    return read_block(config, family, int(getattr(vision, "num_hidden_layers", None) or vision.depth))


if __name__ == "__main__":  # scripts/mllm_steering.sh: the default steering block of an MLLM
    import sys

    try:
        print(read_block_of(sys.argv[1]))
    except (UserError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
