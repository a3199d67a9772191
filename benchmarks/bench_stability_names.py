"""Seed stability and name scores at the paper's sizes (issue: numbers with error bars, items 3 and 5).

1. ``saevlm stability``'s matching (metrics/stability.py: an exact assignment over each latent's
   16 nearest partners, scipy's LAPJVsp) against the dense Hungarian solution
   (``scipy.optimize.linear_sum_assignment`` on the full cosine matrix) at 8,192 latents x 1,024
   dims: time ratio and the share of latents both assign alike; then ours alone at 65,536 (x64 of
   CLIP-L), where the dense cost matrix would take 32 GiB.
2. The detection score of every name (metrics/naming.py ``detection_scores``) at 50,000 images x
   65,536 latents, k = 20 per image (Zipf-like usage, as bench_ms), 768-d embeddings.

    python benchmarks/bench_stability_names.py [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402


def seed_pair(K: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two decoders as two seeds give them: B holds A's directions, permuted, 60 % of them
    perturbed a little and 40 % replaced by new ones (latents a seed learns alone)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, d)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a[rng.permutation(K)] + 0.3 * rng.standard_normal((K, d)).astype(np.float32) / np.sqrt(d)
    new = rng.random(K) < 0.4
    b[new] = rng.standard_normal((int(new.sum()), d))
    return a, b / np.linalg.norm(b, axis=1, keepdims=True)


def bench_matching() -> list[str]:
    from scipy.optimize import linear_sum_assignment

    from saevlm.metrics.stability import match_pair

    rows = []
    a, b = seed_pair(8192, 1024)
    t0 = time.perf_counter()
    sim = a @ b.T
    r, c = linear_sum_assignment(-sim)
    dense = time.perf_counter() - t0
    dense_match = np.empty(len(a), np.int64)
    dense_match[r] = c
    t0 = time.perf_counter()
    ours, cos = match_pair(a, b, 16)
    sparse = time.perf_counter() - t0
    same = float(np.mean(ours == dense_match))
    total_dense, total_ours = float(sim[r, c].sum()), float(np.nansum(cos))
    rows.append(f"| 8,192 x 1,024 | dense Hungarian (linear_sum_assignment) | {dense:.1f} s | 1.00x | |")
    rows.append(f"| 8,192 x 1,024 | saevlm (16 candidates, LAPJVsp) | {sparse:.1f} s | {dense / sparse:.1f}x | "
                f"{100 * same:.2f} % of latents assigned alike; summed cosine {total_ours:.1f} vs {total_dense:.1f} |")
    a, b = seed_pair(65_536, 1024, seed=1)
    t0 = time.perf_counter()
    ours, cos = match_pair(a, b, 16)
    big = time.perf_counter() - t0
    rows.append(f"| 65,536 x 1,024 | saevlm (16 candidates, LAPJVsp) | {big:.1f} s | | dense: a 32 GiB cost "
                f"matrix; {100 * np.mean(np.nan_to_num(cos, nan=-1) >= 0.7):.1f} % matched at cosine >= 0.7 "
                f"(planted: 60 %) |")
    return rows


def bench_detection() -> str:
    from bench_ms import write_full_size

    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore
    from saevlm.metrics.naming import detection_scores

    with tempfile.TemporaryDirectory() as tmp:
        codes_dir, emb_dir = write_full_size(Path(tmp))
        codes, emb = CodeStore(codes_dir), ActivationStore(emb_dir)
        K = codes.dict_size
        # top-16 of every latent from its codes (any 16 active images will do for the timing)
        rows, cols = [], []
        for chunk in codes.iter_csr():
            rows.append(chunk.start + np.repeat(np.arange(chunk.num_rows), np.diff(chunk.indptr)))
            cols.append(np.asarray(chunk.indices))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        order = np.argsort(cols, kind="stable")
        lat, img = cols[order], codes.image_ids()[rows[order]]
        starts = np.searchsorted(lat, np.arange(K))
        counts = np.diff(np.append(starts, len(lat)))
        pos = starts[:, None] + np.arange(16)[None, :]
        active = np.arange(16)[None, :] < counts[:, None]
        top = np.where(active, img[np.minimum(pos, len(img) - 1)], 0)
        text = np.random.default_rng(0).standard_normal((K, emb.dim)).astype(np.float32)
        t0 = time.perf_counter()
        det = detection_scores(codes, emb, top, active, text, counts > 0)
        wall = time.perf_counter() - t0
    scored = int((det.n_positive > 0).sum())
    return (f"Detection score of every name at 50,000 images x 65,536 latents (k = 20, Zipf-like usage): "
            f"{wall:.1f} s for {int((counts > 0).sum()):,} named latents, {scored:,} of them with held-out "
            f"activating images (the others are active on their top-16 alone and get no score).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU "
             "(`python benchmarks/bench_stability_names.py --write-readme`).", "",
             "| latents x dims | matching | wall | speed-up | agreement |", "|---|---|---|---|---|"]
    lines += bench_matching()
    print("\n".join(lines), flush=True)
    lines += ["", bench_detection()]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "stability-names", text)


if __name__ == "__main__":
    main()
