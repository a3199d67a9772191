"""Benchmark: the explorer's co-activation statistics (metrics/coactivation.py) at the paper's size.

Codes of 50,000 images x 65,536 latents with 20 non-zero latents per image (BatchTopK at k = 20,
latent use Zipf-distributed as in trained SAEs), every latent's 8 best co-activation neighbours
by Jaccard, near-duplicate clusters and Matryoshka parents / children (4 groups), from one sparse
product B^T B. Reference: what a latent page computes without a precomputed table, one latent at
a time (the rows where latent j fires, the column sums of B over those rows, Jaccard against every
latent), timed over 256 latents and scaled to all 65,536. Exactness: the product's neighbour
lists equal the dense brute force (B^T B as a dense matrix) on the first 1,024 latents' sub-store.

    python benchmarks/bench_related.py [--write-readme]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402

import saevlm  # noqa: E402,F401
from saevlm.metrics.coactivation import related_latents  # noqa: E402


SUB = 1024  # latents of the dense brute-force check


def codes(n: int, latents: int, k: int, seed: int = 0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, latents + 1) ** 0.8
    p = rng.permutation(p / p.sum())
    # k distinct latents per image with probabilities p (Gumbel top-k), in blocks of images
    logp = np.log(p)
    cols = np.concatenate([np.argpartition(-(logp + rng.gumbel(size=(min(1000, n - a), latents))), k, axis=1)[:, :k].copy()
                           for a in range(0, n, 1000)]).ravel()
    rows = np.repeat(np.arange(n), k)
    b = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(n, latents))
    b.data[:] = 1
    return b


def per_latent_reference(b, js) -> float:
    """Seconds for the neighbours of the latents ``js``, one latent at a time."""
    bc = b.tocsc()
    active = np.asarray(b.sum(axis=0)).ravel()
    t = time.perf_counter()
    for j in js:
        rows = bc.indices[bc.indptr[j]:bc.indptr[j + 1]]
        shared = np.asarray(b[rows].sum(axis=0)).ravel()
        shared[j] = 0
        jac = shared / np.maximum(active + active[j] - shared, 1)
        np.argsort(-jac, kind="stable")[:8]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    n, latents, k = 50_000, 65_536, 20
    b = codes(n, latents, k)
    groups = np.repeat(np.arange(4), latents // 4)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    rel = related_latents(b, groups_k=groups)
    ours = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample = np.random.default_rng(1).choice(latents, 256, replace=False)
    ref = per_latent_reference(b, sample) * latents / len(sample)
    # exactness on a sub-store of the first 1,024 latents (dense brute force, float32 BLAS: exact
    # for counts below 2^24)
    sub = b[:, :SUB].tocsr()
    small = related_latents(sub)
    dense = sub.toarray().astype(np.float32)
    inter = np.rint(dense.T @ dense).astype(np.int64)
    act = dense.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(inter > 0, inter / (act[:, None] + act[None] - inter), 0.0)
    same = True
    for i in range(SUB):
        cands = sorted((-jac[i, j], -inter[i, j], j) for j in np.flatnonzero(inter[i]) if j != i)[:8]
        same &= [j for _, _, j in cands] == [int(x) for x in small.ids_kn[i] if x >= 0]
    pairs = int((b.T @ b).nnz)
    text = (f"Machine: {platform.machine()}, CPU. `python benchmarks/bench_related.py --write-readme`; codes of "
            f"{n:,} images x {latents:,} latents, {k} non-zero per image ({pairs:,} co-active pairs).\n\n"
            f"| work | seconds | ratio |\n|---|---|---|\n"
            f"| per-latent scan, all {latents:,} latents (scaled from 256) | {ref:.1f} | 1x |\n"
            f"| one sparse product + ranking (neighbours, clusters, parents / children) | {ours:.1f} | "
            f"{ref / ours:.0f}x |\n\n"
            f"Peak memory of the process after the product: {rss / 2**20:.2f} GiB (before: {rss0 / 2**20:.2f} GiB). "
            f"Near-duplicate clusters found: {rel.num_clusters}. Neighbour lists equal to the dense brute force "
            f"on {SUB:,} latents: {same}.")
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "related", text)


if __name__ == "__main__":
    main()
