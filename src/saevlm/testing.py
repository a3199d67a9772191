"""Tiny random models saved to disk, for tests and the placeholder demo (no download needed).

Each builder saves a model (and its image processor) with ``save_pretrained`` so that the real
loading code (``saevlm.models.load_encoder``) runs on it.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32


def _processor(kind: str, size: int = IMAGE_SIZE):
    if kind == "siglip":
        from transformers import SiglipImageProcessor
        return SiglipImageProcessor(size={"height": size, "width": size})
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_clip_config(num_layers: int = 4, hidden: int = 64, projection_dim: int = 32,
                     size: int = IMAGE_SIZE, patch_size: int = 8):
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=num_layers, num_attention_heads=4, image_size=size,
                            patch_size=patch_size, projection_dim=projection_dim)


def save_tiny_clip(path: str | Path, num_layers: int = 4, hidden: int = 64, seed: int = 0,
                   size: int = IMAGE_SIZE, patch_size: int = 8) -> Path:
    import torch
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(tiny_clip_config(num_layers, hidden, size=size,
                                                           patch_size=patch_size))
    model.save_pretrained(path)
    _processor("clip", size).save_pretrained(path)
    return Path(path)


def save_tiny_siglip(path: str | Path, num_layers: int = 4, seed: int = 0) -> Path:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    model = SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=num_layers, num_attention_heads=4,
                                                 image_size=IMAGE_SIZE, patch_size=8))
    model.save_pretrained(path)
    _processor("siglip").save_pretrained(path)
    return Path(path)


def save_tiny_dinov2(path: str | Path, num_layers: int = 4, seed: int = 0) -> Path:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                                     num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8))
    model.save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return Path(path)


OPEN_CLIP_TINY = "saevlm-tiny-vit"


def register_tiny_open_clip() -> str:
    """Register a tiny ViT config with open_clip under ``saevlm-tiny-vit``; returns the name."""
    import open_clip

    open_clip.factory._MODEL_CONFIGS[OPEN_CLIP_TINY] = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 64, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    return OPEN_CLIP_TINY
