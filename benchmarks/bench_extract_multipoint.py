"""Benchmark: 5 hook points from ONE forward pass (saevlm extract) versus one full forward pass
per point (the authors' save_activations.py, run once per layer with output_hidden_states).

A 24-block CLIP vision tower with random weights (ViT-L/14-336's depth; width reduced so that a
CPU run takes minutes), generated images, CPU. Both sides decode and preprocess the images with
the same processor and write .npy files; the points are the paper's: blocks 11, 17, 22, 23 and
the projection. Also measured: one early block (11) with early stop versus a full pass.

    python benchmarks/bench_extract_multipoint.py [--images 128] [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers (tiny models)

import saevlm  # noqa: E402,F401  (torchvision fix first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

LAYERS = (11, 17, 22, 23)


def reference_one_pass_per_point(model_dir: Path, images, batch_size: int, out: Path) -> dict:
    """The authors' flow: for each point, a full pass over the data with output_hidden_states."""
    from transformers import CLIPVisionModelWithProjection

    from saevlm.data.decode import collate_images
    from saevlm.data.images import ImageDataset
    from saevlm.models import load_encoder

    model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    preprocess = load_encoder(str(model_dir), warn=lambda m: None).preprocess
    results = {}
    for point in [*LAYERS, "proj"]:
        loader = torch.utils.data.DataLoader(ImageDataset(images, np.arange(len(images)), preprocess),
                                             batch_size=batch_size, collate_fn=collate_images)
        chunks = []
        with torch.no_grad():
            for _, pixels, _, _ in loader:
                o = model(pixel_values=pixels, output_hidden_states=True)
                chunks.append((o.image_embeds if point == "proj" else o.hidden_states[point + 1][:, 0]).numpy())
        results[point] = np.concatenate(chunks)
        np.save(out / f"ref_{point}.npy", results[point])
    return results


def ours(model_dir: Path, images, batch_size: int, out: Path, layers, projection: bool) -> dict:
    from saevlm.extraction import ExtractConfig, extract_stores
    from saevlm.models import load_encoder
    from saevlm.models.base import HookPoint, TokenSelection

    encoder = load_encoder(str(model_dir), warn=lambda m: None)
    points = [HookPoint("post_mlp_residual", layer) for layer in layers]
    if projection:
        points.append(HookPoint("post_projection", -1))
    dirs = {p: out / p.slug for p in points}
    cfg = ExtractConfig(kind="activations", batch_size=batch_size, num_workers=0, store_dtype="float32",
                        progress=False)
    extract_stores(encoder, images, np.arange(len(images)), points, TokenSelection("cls"), cfg,
                   output_dirs=dirs, device=torch.device("cpu"), log=lambda m: None)
    from saevlm.data.store import ActivationStore
    return {p: ActivationStore(d).read(0, len(images)) for p, d in dirs.items()}


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    from helpers import make_image_folder
    from saevlm.data.images import open_dataset
    from helpers import save_tiny_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_tiny_clip(tmp / "clip24", num_layers=24, hidden=args.hidden, size=224,
                                   patch_size=14)
        root = make_image_folder(tmp / "imgs", num_classes=8, per_class=args.images // 8, size=256)
        images = open_dataset("imagefolder", root, None)
        for d in ("ref", "ours", "early", "full"):
            (tmp / d).mkdir()
        # warm-up (first-call allocations, thread pools) on both paths
        ours(model_dir, images, args.batch_size, tmp / "warm", [11], False)
        t_ref, ref = timed(lambda: reference_one_pass_per_point(model_dir, images, args.batch_size, tmp / "ref"))
        t_ours, got = timed(lambda: ours(model_dir, images, args.batch_size, tmp / "ours", LAYERS, True))
        t_early, _ = timed(lambda: ours(model_dir, images, args.batch_size, tmp / "early", [11], False))
        t_full, _ = timed(lambda: ours(model_dir, images, args.batch_size, tmp / "full", [11], True))
    keys = list(got)
    maxdiff = max(float(np.abs(got[k] - ref[k.layer if k.layer >= 0 else "proj"]).max()) for k in keys)
    rows = [
        ("5 points (blocks 11 17 22 23 + projection), one pass each (authors' flow)", t_ref, 1.0),
        ("5 points in one pass (saevlm extract)", t_ours, t_ref / t_ours),
        ("block 11 alone, early stop after block 11", t_early, None),
        ("block 11 + projection (full pass)", t_full, None),
    ]
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, CPU. Model: CLIP vision tower, 24 blocks, width {args.hidden}, "
             f"224 px / patch 14 ({(224 // 14) ** 2 + 1} tokens), random weights. {len(images)} generated "
             f"images, batch {args.batch_size}, CLS token, fp32.", "",
             "| run | seconds | speed-up vs authors' flow |", "|---|---|---|"]
    for name, t, ratio in rows:
        lines.append(f"| {name} | {t:.2f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    lines += ["", f"Largest difference between the two flows' activations: {maxdiff:.2e}. "
              f"Early stop: block 11 alone takes {t_early / t_full:.2f} of the time of a full pass."]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "extract-multipoint", text)


def _write_section(readme: Path, key: str, body: str) -> None:
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = readme.read_text() if readme.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    readme.write_text(text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
