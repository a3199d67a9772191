"""Test helpers: tiny random models saved to disk and generated image folders (no download needed).

Each builder saves a model (and its image processor) with ``save_pretrained`` so that the real
loading code (``saevlm.models.load_encoder``) runs on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

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


TINY_WORDS = ["pencil", "dog", "cat", "car", "tree", "house", "bird", "fish", "flower", "boat",
              "apple", "chair", "white", "black", "sky", "love", "poem", "what", "is", "shown", "in",
              "this", "image", "use", "exactly", "one", "word", "write", "me", "a", "short", "?", "!", "."]
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %} {% else %}ASSISTANT: {{ message['content'][0]['text'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def tiny_tokenizer():
    """A word-level tokenizer of 1000 ids built offline (id 999 = <image>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "USER": 4, "ASSISTANT": 5, ":": 6}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    while len(vocab) < 999:
        vocab[f"w{len(vocab)}"] = len(vocab)
    vocab["<image>"] = 999
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    from tokenizers import decoders
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"])


def save_tiny_llava(path: str | Path, seed: int = 0, vision_layers: int = 4) -> Path:
    """A tiny random LLaVA-1.5 (CLIP tower 32 px / patch 8 -> 16 image tokens) and its processor."""
    import torch
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=tiny_clip_config(num_layers=vision_layers),
                      text_config=LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=4),
                      image_token_id=999, vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = 3
    model.save_pretrained(path)
    processor = LlavaProcessor(image_processor=_processor("clip"), tokenizer=tiny_tokenizer(), patch_size=8,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    processor.save_pretrained(path)
    return Path(path)


def save_identity_sae(path: str | Path, dim: int) -> Path:
    """A BatchTopK SAE whose decoder exactly inverts its encoder: latents [relu(x), relu(-x)],
    decoder [I, -I], threshold 0, so decode(encode(x)) == x bit for bit."""
    import json

    import torch
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

    sae = BatchTopKSAE(dim, 2 * dim, k=dim)
    eye = torch.eye(dim)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.cat([eye, -eye], 0))
        sae.encoder.bias.zero_()
        sae.decoder.weight.copy_(torch.cat([eye, -eye], 1))
        sae.b_dec.zero_()
        sae.threshold.fill_(0.0)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(sae.state_dict(), path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "BatchTopKSAE",
                                                              "activation_dim": dim, "dict_size": 2 * dim}}))
    return path


def save_random_sae(path: str | Path, dim: int, dict_size: int, k: int = 8, seed: int = 0,
                    layer: int | None = None) -> Path:
    """A random BatchTopK SAE (threshold 0) with a config naming its hook layer, if given."""
    import json

    import torch
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

    torch.manual_seed(seed)
    sae = BatchTopKSAE(dim, dict_size, k=k)
    with torch.no_grad():
        sae.threshold.fill_(0.0)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(sae.state_dict(), path / "ae.pt")
    cfg = {"trainer": {"dict_class": "BatchTopKSAE", "activation_dim": dim, "dict_size": dict_size}}
    if layer is not None:
        cfg["saevlm"] = {"provenance": {"hook": {"attachment_point": "post_mlp_residual", "layer": layer}}}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def clip_tokenizer():
    """The real CLIP BPE tokenizer, built offline from open_clip's bundled vocabulary."""
    import gzip

    import open_clip
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    del open_clip
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


def save_tiny_clip_model(path: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel (text + vision, projection 32) with a CLIPProcessor."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    vision = tiny_clip_config().to_dict()
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=77),
                     vision_config=vision, projection_dim=32)
    CLIPModel(cfg).save_pretrained(path)
    CLIPProcessor(image_processor=_processor("clip"), tokenizer=clip_tokenizer()).save_pretrained(path)
    return Path(path)


def make_image_folder(root: str | os.PathLike, num_classes: int = 4, per_class: int = 6,
                      size: int = 40, seed: int = 0, class_names: Sequence[str] | None = None) -> Path:
    """Write a small ImageFolder of generated PNGs (for tests and demos): each class has its
    own colour and stripe orientation so that the images are not all alike."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = list(class_names) if class_names else [f"class_{c:03d}" for c in range(num_classes)]
    for c, cname in enumerate(names):
        (root / cname).mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        for j in range(per_class):
            yy, xx = np.mgrid[0:size, 0:size]
            stripes = ((xx if c % 2 else yy) // (2 + c % 5)) % 2
            noise = rng.integers(-40, 40, size=(size, size, 3))
            pixels = np.clip(base[None, None] * (0.5 + 0.5 * stripes[..., None]) + noise, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / cname / f"img_{j:04d}.png")
    return root


# --- the other encoder families (issue "More models"): tiny random models with their processors ---
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)


def save_tiny_family(family: str, path: str | Path, seed: int = 0) -> Path:
    """A tiny random encoder of ``family`` (aimv2, dinov3, siglip2, vit, vit_mae) saved with the
    image processor its real checkpoints ship, so the loading code runs as on the hub."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if family == "aimv2":  # apple/aimv2-*: CLIP preprocessing, an attention-pooling head
        model = T.Aimv2VisionModel(T.Aimv2VisionConfig(**TINY_VISION, image_size=IMAGE_SIZE, patch_size=8,
                                                       use_head=True))
        processor = T.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    elif family == "dinov3":  # CLS + 4 registers + patches
        model = T.DINOv3ViTModel(T.DINOv3ViTConfig(**TINY_VISION, image_size=IMAGE_SIZE, patch_size=8,
                                                   num_register_tokens=4))
        processor = T.DINOv3ViTImageProcessor(size=square, **imagenet)
    elif family == "siglip2":  # NaFlex: aspect ratio kept, at most 16 patches, the rest padding
        model = T.Siglip2VisionModel(T.Siglip2VisionConfig(**TINY_VISION, patch_size=8, num_patches=16))
        processor = T.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    elif family == "vit":  # the WebSSL checkpoints' class
        model = T.ViTModel(T.ViTConfig(**TINY_VISION, image_size=IMAGE_SIZE, patch_size=8), add_pooling_layer=False)
        processor = T.BitImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square, **imagenet)
    elif family == "vit_mae":
        model = T.ViTMAEModel(T.ViTMAEConfig(**TINY_VISION, image_size=IMAGE_SIZE, patch_size=8))
        processor = T.ViTImageProcessor(size=square, **imagenet)
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)


def make_mixed_aspect_folder(root: str | os.PathLike, sizes=((32, 32), (20, 48), (56, 24), (40, 40)),
                             per_size: int = 2, seed: int = 0) -> Path:
    """An ImageFolder of noise images of several aspect ratios (NaFlex gives them different
    patch grids, so some carry padding tokens)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for c, (h, w) in enumerate(sizes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for j in range(per_size):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"class_{c}" / f"{j}.png")
    return root
