"""Streaming images from a hub-format parquet dataset against reading the same images from an
ImageFolder on disk, through ``saevlm extract`` (same model, workers, batch size).

The images are ImageNet-like JPEGs (natural-image statistics are not needed: decode cost depends
on size and quality), written once as a class-folder tree and once as parquet shards in the
hub's layout (Image + ClassLabel columns, row groups of 100 as ``datasets`` writes them). The model
is a small random CLIP vision tower at 224 px, so image decoding, not the forward pass, dominates:
the ratio shows whether streaming is the bottleneck. Each flow runs ``--repeats`` times in fresh
processes; the best time counts. ``python benchmarks/bench_hub_stream.py [--write-readme]``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def make_images(n: int, classes: int, size: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """JPEGs (quality 90) of smooth random fields with noise, about ImageNet's bytes per pixel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(n):
        base = rng.standard_normal((8, 8, 3))
        img = np.kron(base, np.ones((size // 8, size // 8, 1)))
        img = (img * 40 + 128 + rng.standard_normal(img.shape) * 12).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
        labels.append(i * classes // n)
    return out, labels


def run_extract(model: Path, data: list[str], out: Path, workers: int, batch: int) -> float:
    cmd = [sys.executable, "-m", "saevlm", "extract", "--model_name", str(model), "--layer", "1", "--cls_only",
           "--batch_size", str(batch), "--num_workers", str(workers), "--device", "cpu", "--no_progress",
           "--shard_rows", "256",
           "--output_dir", str(out), *data]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=320, help="image side in pixels (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    import torch

    from helpers import save_tiny_clip
    from saevlm.data.hub import write_parquet_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_clip(tmp / "clip", num_layers=2, hidden=64, size=224, patch_size=32)
        data, labels = make_images(args.images, 10, args.size)
        classes = [f"class_{c:02d}" for c in range(10)]
        for i, (b, y) in enumerate(zip(data, labels)):
            d = tmp / "folder" / classes[y]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"img_{i:06d}.jpg").write_bytes(b)
        write_parquet_dataset(tmp / "hub", {"train": (data, labels)}, classes, files_per_split=4,
                              row_group_rows=100)
        mb = sum(len(b) for b in data) / 1e6
        flows = {"ImageFolder on disk": ["--dataset_name", "imagefolder", "--data_path", str(tmp / "folder")],
                 "hub parquet, streamed": ["--dataset_name", f"hf:{tmp / 'hub'}", "--split", "train"]}
        best = {}
        for r in range(args.repeats):
            for name, flags in flows.items():
                tag = "hub" if name.startswith("hub") else "folder"
                t = run_extract(model, flags, tmp / f"out_{r}_{int(tag == 'hub')}_{tag}", args.workers, args.batch_size)
                best[name] = min(best.get(name, t), t)
                print(f"{name}: {t:.2f} s ({args.images / t:,.0f} images/s)")
        # resume cost: the streamed store with its second half of shards dropped (as a kill leaves
        # it), then the same command again
        import json
        done = tmp / f"out_{args.repeats - 1}_1_hub"
        store = done / "post_mlp_residual_1"
        m = json.loads((store / "manifest.json").read_text())
        total_shards = len(m["shards"])
        keep = total_shards // 2
        m["shards"], m["complete"] = m["shards"][:keep], False
        (store / "manifest.json").write_text(json.dumps(m))
        resumed_images = args.images - sum(e["num_images"] for e in m["shards"])
        t_resume = run_extract(model, flows["hub parquet, streamed"], done, args.workers, args.batch_size)
        print(f"resume of {resumed_images} images: {t_resume:.2f} s")
    folder_rate = args.images / best["ImageFolder on disk"]
    hub_rate = args.images / best["hub parquet, streamed"]
    ratio = hub_rate / folder_rate
    body = "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU. "
        f"{args.images} JPEGs of {args.size}x{args.size} px ({mb:.0f} MB, {1e3 * mb / args.images:.0f} kB each), "
        f"10 classes; CLIP vision tower (2 blocks, 224 px, random weights), CLS token of block 1; "
        f"batch {args.batch_size}, {args.workers} decoding workers; best of {args.repeats} runs, whole "
        f"command (process start and model load included).",
        "",
        "| source | seconds | images/s | ratio |",
        "|---|---|---|---|",
        f"| ImageFolder on disk | {best['ImageFolder on disk']:.2f} | {folder_rate:,.0f} | 1.00x |",
        f"| hub-format parquet, streamed (4 files, row groups of 100) | {best['hub parquet, streamed']:.2f} | "
        f"{hub_rate:,.0f} | {ratio:.2f}x |",
        "",
        f"Resume: the streamed store cut back to its first {keep} of {total_shards} "
        f"shards (as a kill leaves it), then the same command: {t_resume:.2f} s for the {resumed_images} images "
        f"left, {t_resume / best['hub parquet, streamed']:.2f} of a full run (only the remaining row groups are "
        f"read; the rest is process start, model load and opening the dataset).",
        "",
        f"At the streamed rate, ImageNet-1k train ({IMAGENET_TRAIN:,} images) would take "
        f"{IMAGENET_TRAIN / hub_rate / 3600:.1f} h of decoding on this machine with {args.workers} workers "
        f"(decoding scales with workers; the network must deliver about {hub_rate * 110e3 / 1e6:.0f} MB/s at "
        f"ImageNet's ~110 kB per image).",
    ])
    print(body)
    if args.write_readme:
        _write_section(ROOT / "benchmarks" / "README.md", "hub-stream", body)


if __name__ == "__main__":
    main()
