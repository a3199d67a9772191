"""Benchmark: top-images and uniqueness against their naive forms, one run, CPU.

- top-images: saevlm's streaming running top-k over a code store (CSR) versus the naive form:
  the dense matrix in memory and an argsort per neuron. N = 50,000 images, 4,096 latents, 20
  non-zeros per image.
- uniqueness: the sparse incidence product versus a Python loop over neuron pairs with set
  intersections, on 1,000 neurons; and the product alone at the paper's 12,288 neurons.

    python benchmarks/bench_top_images.py [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402

import saevlm  # noqa: E402,F401
from saevlm.data.codes import CSRChunk  # noqa: E402
from saevlm.metrics.top_images import top_k_csr  # noqa: E402
from saevlm.metrics.uniqueness import uniqueness_stats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, latents, nz, k = 50_000, 4096, 20, 16
    p = 1.0 / np.arange(1, latents + 1) ** 0.8
    p /= p.sum()
    idx = np.sort(np.stack([rng.choice(latents, nz, replace=False, p=p) for _ in range(n)]), 1)
    vals = rng.exponential(1.0, (n, nz)).astype(np.float32)
    chunks = [CSRChunk(s, np.arange(0, (min(s + 8192, n) - s) * nz + 1, nz),
                       idx[s:s + 8192].reshape(-1), vals[s:s + 8192].reshape(-1), latents)
              for s in range(0, n, 8192)]
    t0 = time.perf_counter()
    rows, top_vals = top_k_csr(iter(chunks), latents, n, k)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense = np.zeros((n, latents), dtype=np.float32)
    np.put_along_axis(dense, idx, vals, axis=1)
    naive = np.stack([np.argsort(-dense[:, j], kind="stable")[:k] for j in range(latents)])
    t_naive = time.perf_counter() - t0
    same = bool(np.array_equal(naive, rows))

    tops = np.stack([rng.choice(200_000, 16, replace=False) for _ in range(12_288)])
    tops[:2000] = rng.integers(0, 3000, (2000, 16))  # make overlaps common among some neurons
    tops[:2000] = np.stack([rng.choice(3000, 16, replace=False) for _ in range(2000)])
    sub = tops[:3000]
    t0 = time.perf_counter()
    s_sub = uniqueness_stats(sub)
    t_u_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    sets = [set(r.tolist()) for r in sub]
    counts = [0] * 10  # the authors' outputs: pairs with J above 0, 0.1, ..., 0.9
    for a, b in combinations(range(len(sets)), 2):
        inter = len(sets[a] & sets[b])
        jac = inter / (len(sets[a]) + len(sets[b]) - inter)
        for t in range(10):
            if jac > t / 10:
                counts[t] += 1
    t_u_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_full = uniqueness_stats(tops)
    t_full = time.perf_counter() - t0
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU.", "",
             "| task | naive | saevlm | ratio | same result |", "|---|---|---|---|---|",
             f"| top-{k} images, {n:,} images x {latents:,} latents (20 non-zeros per image) | "
             f"{t_naive:.1f} s (dense + argsort per neuron) | {t_ours:.2f} s (streaming, sparse) | "
             f"{t_naive / t_ours:.0f}x | {same} |",
             f"| uniqueness, 3,000 neurons (4,498,500 pairs) | {t_u_naive:.2f} s (pair loop) | "
             f"{t_u_ours:.3f} s (sparse product) | {t_u_naive / t_u_ours:.0f}x | "
             f"{counts == list(s_sub['pairs_above'].values())} |", "",
             f"Uniqueness at the paper's size, 12,288 neurons ({s_full['pairs']:,} pairs, "
             f"{s_full['pairs_above']['0.0']:,} with J > 0): {t_full:.2f} s. The pair loop would visit "
             f"{s_full['pairs'] / 4_498_500:.0f}x as many pairs as on the subset."]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "top-images", text)


if __name__ == "__main__":
    main()
