"""Test helpers: tiny random models saved to disk and generated image folders (no download needed).

Each builder saves a model (and its image processor) with ``save_pretrained`` so that the real
loading code (``saevlm.models.load_encoder``) runs on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

# the repository (tests/ is directly under it) and the committed fixture stores
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

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


def tiny_tokenizer(extra: Sequence[str] = (), chat_template: str | None = None, named: dict | None = None,
                   tokenizer_class: str = "PreTrainedTokenizerFast"):
    """A word-level tokenizer of 1000 ids built offline (id 999 = <image>; ``extra`` special
    tokens take ids 998, 997, ...; ``named`` gives some of them attribute names, e.g. Gemma-3's
    ``boi_token``). ``tokenizer_class``: the family's fast tokenizer class, which transformers 4.x
    processors insist on (Qwen2TokenizerFast, GemmaTokenizerFast); 5.x accepts any."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "USER": 4, "ASSISTANT": 5, ":": 6}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    while len(vocab) < 999 - len(extra):
        vocab[f"w{len(vocab)}"] = len(vocab)
    for i, token in enumerate(reversed(list(extra))):
        vocab[token] = 999 - len(extra) + i
    vocab["<image>"] = 999
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    from tokenizers import decoders
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    import transformers
    cls = PreTrainedTokenizerFast
    if transformers.__version__.startswith("4."):
        cls = getattr(transformers, tokenizer_class)
    out = cls(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
              pad_token="<pad>", additional_special_tokens=["<image>", *extra],
              # as the families' real tokenizers: no token_type_ids (generate in 4.x refuses them)
              model_input_names=["input_ids", "attention_mask"],
              **({"extra_special_tokens": named} if named else {}))
    if chat_template:
        out.chat_template = chat_template
    return out


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
    vocab = {v: i for i, v in enumerate(vocab)}
    import transformers
    if transformers.__version__.startswith("4."):  # 4.x reads the vocabulary and merges from files
        import tempfile
        folder = Path(tempfile.mkdtemp(prefix="clip-bpe-"))
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    return CLIPTokenizer(vocab=vocab, merges=merges)


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
        # transformers 4.x has only the torchvision ("Fast") form of DINOv3's processor
        processor = getattr(T, "DINOv3ViTImageProcessor", None) or T.DINOv3ViTImageProcessorFast
        processor = processor(size=square, **imagenet)
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


# --- MLLM families beyond LLaVA-1.5: tiny random models with their own processors and templates ---
TINY_TEXT = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=3)
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
QWEN_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
GEMMA_TEMPLATE = ("{% for message in messages %}<start_of_turn>{{ message['role'] }}\n{% for c in message['content'] %}"
                  "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                  "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
MLLM_FAMILIES = ["llava_next", "llava_onevision", "qwen2_5_vl", "gemma3"]


def _tiny_siglip_config(**kw):
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=8, **kw)


def save_tiny_mllm(family: str, path: str | Path, seed: int = 0) -> Path:
    """A tiny random MLLM of ``family`` (see MLLM_FAMILIES, or ``llava``) with its processor:
    LLaVA-NeXT (CLIP tower, anyres tiles of 32 px, vision_feature_layer -2), LLaVA-OneVision
    (SigLIP tower, tiles, -1), Qwen2.5-VL (its windowed ViT, 8 px patches merged 2 x 2) and Gemma-3
    (SigLIP tower, 16 patches pooled to 4 tokens), each 4 vision blocks wide 64."""
    import torch
    import transformers as T

    if family == "llava":
        return save_tiny_llava(path, seed)
    torch.manual_seed(seed)
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if family == "llava_next":
        cfg = T.LlavaNextConfig(vision_config=tiny_clip_config(), text_config=T.LlamaConfig(**TINY_TEXT),
                                image_token_id=999, vision_feature_layer=-2, vision_feature_select_strategy="default",
                                image_grid_pinpoints=PINPOINTS)
        model = T.LlavaNextForConditionalGeneration(cfg)
        processor = T.LlavaNextProcessor(
            image_processor=T.LlavaNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square,
                                                      image_grid_pinpoints=PINPOINTS),
            tokenizer=tiny_tokenizer(), patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
            num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    elif family == "llava_onevision":
        cfg = T.LlavaOnevisionConfig(vision_config=_tiny_siglip_config(), text_config=T.Qwen2Config(**TINY_TEXT),
                                     image_token_id=999, vision_feature_layer=-1,
                                     vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS)
        model = T.LlavaOnevisionForConditionalGeneration(cfg)
        processor = T.LlavaOnevisionProcessor(
            image_processor=T.LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=PINPOINTS),
            video_processor=T.LlavaOnevisionVideoProcessor(), tokenizer=tiny_tokenizer(["<video>"]),
            num_image_tokens=16, vision_feature_select_strategy="full", image_token="<image>", video_token="<video>",
            chat_template=LLAVA_CHAT_TEMPLATE)
    elif family == "qwen2_5_vl":
        extra = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
        tok = tiny_tokenizer(extra, tokenizer_class="Qwen2TokenizerFast")
        ids = {t: tok.convert_tokens_to_ids(t) for t in extra}
        text = {**TINY_TEXT, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                 "rope_theta": 10000.0}}
        if T.__version__.startswith("4."):  # 4.x spells the multimodal RoPE rope_scaling
            text = {**TINY_TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "rope_theta": 10000.0}
        vision = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=8, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=32, out_hidden_size=64, fullatt_block_indexes=[1, 3])
        cfg = T.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                                 video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                 vision_end_token_id=ids["<|vision_end|>"])
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
        sizes = dict(patch_size=8, merge_size=2, temporal_patch_size=2)
        processor = T.Qwen2_5_VLProcessor(
            image_processor=T.Qwen2VLImageProcessor(**sizes, min_pixels=16 * 16, max_pixels=64 * 64),
            video_processor=T.Qwen2VLVideoProcessor(**sizes), tokenizer=tok, chat_template=QWEN_TEMPLATE)
    elif family == "gemma3":
        extra = ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
        tok = tiny_tokenizer(extra, named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                           "image_token": "<image_soft_token>"},
                             tokenizer_class="GemmaTokenizerFast")
        ids = {t: tok.convert_tokens_to_ids(t) for t in extra}
        text = T.Gemma3TextConfig(**TINY_TEXT, head_dim=16, sliding_window=32)
        cfg = T.Gemma3Config(text_config=text, vision_config=_tiny_siglip_config(vision_use_head=False),
                             mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"],
                             eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"])
        model = T.Gemma3ForConditionalGeneration(cfg)
        with torch.no_grad():  # initialised to zeros, which would cut the image off from the language model
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
        processor = T.Gemma3Processor(image_processor=T.Gemma3ImageProcessor(size=square), tokenizer=tok,
                                      chat_template=GEMMA_TEMPLATE, image_seq_length=4)
    else:
        raise ValueError(family)
    model.generation_config.pad_token_id = 3
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)


def make_small_run(root: str | Path, model: str | Path, class_names: Sequence[str] | None = None,
                   num_classes: int = 4, per_class: int = 6, size: int = 40, all_tokens: bool = False, dict_size: int = 32, k: int = 8,
                   seed: int = 0, top_images: bool = True) -> Path:
    """A run folder for the explorer's tests: an image folder, block-1 activations (CLS, or every
    token), a random BatchTopK SAE's codes under ``run/codes`` and, by default, their top-16
    images. Returns ``root / "run"`` (the images are in ``root / "images"``)."""
    from saevlm.cli import main

    root = Path(root)
    images = make_image_folder(root / "images", num_classes=len(class_names) if class_names else num_classes,
                               per_class=per_class, size=size, class_names=class_names)
    run = root / "run"
    argv = ["extract", "--model_name", str(model), "--layer", "1", "--output_dir", str(run / "acts"),
            "--dataset_name", "imagefolder", "--data_path", str(images), "--batch_size", "8", "--num_workers", "0",
            "--device", "cpu", "--no_progress"]
    assert main(argv + ([] if all_tokens else ["--cls_only"])) == 0
    sae = save_random_sae(root / "sae", dim=64, dict_size=dict_size, k=k, seed=seed)
    assert main(["encode", "--sae_path", str(sae), "--activations_dir", str(run / "acts" / "post_mlp_residual_1"),
                 "--output_dir", str(run / "codes"), "--no_progress"]) == 0
    if top_images:
        assert main(["top-images", "--activations_dir", str(run / "codes"), "--k", "16", "--no_progress"]
                    + (["--pool", "max"] if all_tokens else [])) == 0
    return run


def make_clip_named_run(root: str | Path, dict_size: int = 64, k: int = 8,
                        class_names: Sequence[str] | None = None) -> Path:
    """What `saevlm name` reads with a CLIP text side: 24 images of 4 classes, a tiny CLIPModel
    (text + vision, saved at ``root/clipmodel``) that extracts block 1 (CLS) and embeds them
    (``root/emb``), a random BatchTopK SAE's codes (``root/codes``) and their top-16 images.
    Returns the CLIP model's folder."""
    from saevlm.cli import main

    root = Path(root)
    images = make_image_folder(root / "images", num_classes=4, per_class=6, class_names=class_names)
    clip = save_tiny_clip_model(root / "clipmodel")
    common = ["--dataset_name", "imagefolder", "--data_path", str(images), "--batch_size", "8", "--num_workers",
              "0", "--device", "cpu", "--no_progress"]
    assert main(["extract", "--model_name", str(clip), "--layer", "1", "--cls_only", "--output_dir",
                 str(root / "a"), *common]) == 0
    assert main(["embed", "--model_name", str(clip), "--embeddings_path", str(root / "emb"), *common]) == 0
    sae = save_random_sae(root / "sae", dim=64, dict_size=dict_size, k=k)
    assert main(["encode", "--sae_path", str(sae), "--activations_dir", str(root / "a" / "post_mlp_residual_1"),
                 "--output_dir", str(root / "codes"), "--no_progress"]) == 0
    assert main(["top-images", "--activations_dir", str(root / "codes"), "--k", "16", "--no_progress"]) == 0
    return clip


# the experiment scripts' reduced training configuration (tests/cli/test_script_*.py)
SCRIPT_TRAIN = {"K": "4", "STEPS": "30", "BATCH_SIZE": "16", "WARMUP_STEPS": "2", "THRESHOLD_START_STEP": "5",
                "SAVE_STEP": "20", "DEVICE": "cpu", "EXTRACT_BATCH_SIZE": "8", "NUM_WORKERS": "0"}


def run_script(script: str, env: dict, expect_ok: bool = True):
    """``bash scripts/<script>`` as users run it, with ``env`` added to the environment (offline)."""
    import subprocess
    import sys

    r = subprocess.run(["bash", str(REPO / "scripts" / script)], env={**os.environ, "HF_HUB_OFFLINE": "1",
                       "PYTHON": sys.executable, **{k: str(v) for k, v in env.items()}},
                       capture_output=True, text=True, timeout=1200)
    if expect_ok:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def run_cli(*argv) -> int:
    """Run the CLI in-process; returns its exit status."""
    from saevlm.cli import main
    return main([str(a) for a in argv])


# ---- the sparse engine against dictionary_learning's trainers (tests/sae/test_sparse_engine.py, tests/device)
ENGINE_ARCHS = ["batch_top_k", "matryoshka_batch_top_k", "top_k"]


def engine_trainer(arch, D=48, F=384, k=6, seed=0, **extra):
    """dictionary_learning's trainer of ``arch`` at a small shape, seeded."""
    import torch

    from saevlm.sae.archs import trainer_class

    kw = dict(steps=200, activation_dim=D, dict_size=F, k=k, layer=0, lm_name="test", lr=2e-3, warmup_steps=2,
              decay_start=150, threshold_start_step=1, seed=seed, device="cpu", auxk_alpha=1 / 32) | extra
    if arch == "matryoshka_batch_top_k":
        kw.setdefault("group_fractions", [0.25, 0.25, 0.5])
    torch.manual_seed(seed)
    return trainer_class(arch)(**kw)


def engine_batches(n, B=192, D=48, seed=1):
    """``n`` correlated batches (B x D), the same for every call with the same seed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(D, D, generator=g)
    return [(torch.randn(B, D, generator=g) @ basis) * 0.3 + 1.0 for _ in range(n)]


def rel_diff(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def kill_a_third(trainer, F):
    """Make a third of the latents dead (their counters past the 10M-token window), so AuxK runs."""
    trainer.num_tokens_since_fired[: F // 3] = trainer.dead_feature_threshold + 1


def assert_results_read_back(root: str | Path, expect: int = 1) -> list[Path]:
    """Every JSON result under ``root`` (by its catalog name, ``artifacts.record_for``) reads as
    its record with no key the record does not declare, here or in a nested record (writer and
    reader agree on every key), and the record written back reads as the same record; at least
    ``expect`` of them. Returns the files checked."""
    from saevlm.data import artifacts as A

    checked = []
    for path in sorted(Path(root).rglob("*.json")):
        cls = A.record_for(path)
        if cls is None:
            continue
        rec = cls.from_file(path)
        assert rec.unknown_keys() == [], f"{path}: keys no {cls.__name__} field declares: {rec.unknown_keys()}"
        assert cls.from_json(rec.to_json(), path).to_json() == rec.to_json(), path
        checked.append(path)
    assert len(checked) >= expect, (root, checked)
    return checked


# ---- whole stores compared byte for byte; saevlm in a process of its own, or in two under torchrun
def store_bytes(path: Path) -> dict:
    """Every file of a store, with timestamps and the write id removed from the manifest (the writer's lock file,
    which names the last writer's pid, is not part of the store)."""
    out = {}
    for f in sorted(path.iterdir()):
        if f.name == ".saevlm.lock":
            continue
        if f.name == "manifest.json":
            m = json.loads(f.read_text())
            m.pop("created"), m.pop("finished"), m.pop("write_id", None)  # when and which write, not what
            out[f.name] = json.dumps(m, sort_keys=True).encode()
        else:
            out[f.name] = f.read_bytes()
    return out


# the child processes' environment: offline, one thread each (two ranks share two cores)
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saevlm_torchrun(args, nproc=2, wait=True):
    """``python -m torch.distributed.run --nproc_per_node=nproc -m saevlm *args``: its completed
    process, or (``wait=False``) the running one."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "saevlm", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)


def saevlm_single(args):
    """``python -m saevlm *args`` in a process of its own, completed."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "saevlm", *map(str, args)], env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=600)


def run_python(code: str):
    """``code`` (dedented) in a fresh ``python -c`` offline: the completed process."""
    import subprocess
    import sys
    import textwrap

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
