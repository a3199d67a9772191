"""Uniqueness of neurons (the authors' ``uniqueness.py``, arXiv 2504.02821, App. G): the Jaccard index
between neurons' top-k image sets, for every pair, via a sparse incidence product.

With B the neurons x images incidence matrix of the top-k sets, (B Bᵀ)_ij = |A_i ∩ A_j| and,
since every set has k images, J_ij = |A_i ∩ A_j| / (2k - |A_i ∩ A_j|). Only pairs sharing an
image have J > 0, so the product is sparse. Neurons whose k-th value is 0 (near-dead) are left
out by default: the paper's 75,368,503 pairs for 12,288 latents is 12,278 neurons, i.e. 10 left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, OutputOption, opt
from saevlm.config import paper_default
from saevlm.data import artifacts as A
from saevlm.errors import UserError

THRESHOLDS = [round(0.1 * i, 1) for i in range(10)]


def jaccard_pairs(top_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, J) for every pair i < j of rows of ``top_kn`` sharing at least one image."""
    import torch

    n, k = top_kn.shape
    if n < 2:  # no pairs (e.g. every neuron near-dead and left out)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    for row in top_kn[:5]:
        if len(set(row.tolist())) != k:
            raise UserError("a neuron's top-image list repeats an image; expected k distinct images")
    cols = torch.as_tensor(top_kn.reshape(-1), dtype=torch.int64)
    rows = torch.arange(n).repeat_interleave(k)
    import warnings

    b = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(n * k, dtype=torch.float64),
                                (n, int(cols.max()) + 1), check_invariants=True).coalesce()
    with warnings.catch_warnings():  # torch notes that its sparse CSR support is "beta"
        warnings.simplefilter("ignore", UserWarning)
        inter = torch.sparse.mm(b, b.t()).coalesce()
    i, j = inter.indices()
    c = inter.values()
    upper = i < j
    i, j, c = i[upper].numpy(), j[upper].numpy(), c[upper].numpy()
    return i, j, c / (2 * k - c)


def uniqueness_stats(top_kn: np.ndarray, kth_value: np.ndarray | None = None,
                     keep_near_dead: bool = False, most: int = 10) -> dict:
    neurons = np.arange(len(top_kn))
    if kth_value is not None and not keep_near_dead:
        neurons = neurons[kth_value > 0]
    n = len(neurons)
    i, j, jac = jaccard_pairs(top_kn[neurons])
    total = n * (n - 1) // 2
    order = np.lexsort((j, i, -jac))
    top = [[int(neurons[i[o]]), int(neurons[j[o]]), float(jac[o])] for o in order[:most]]
    least = []
    if total - len(jac) >= most:  # pairs with J = 0, in lexicographic order
        shared = set(zip(i.tolist(), j.tolist()))
        a = 0
        while len(least) < most and a < n:
            for b in range(a + 1, n):
                if (a, b) not in shared:
                    least.append([int(neurons[a]), int(neurons[b]), 0.0])
                    if len(least) == most:
                        break
            a += 1
    else:
        least = [[int(neurons[i[o]]), int(neurons[j[o]]), float(jac[o])] for o in order[::-1][:most]]
    return {"neurons": n, "left_out_near_dead": int(len(top_kn) - n), "pairs": total,
            "pairs_above": {f"{t:.1f}": int((jac > t).sum()) for t in THRESHOLDS},
            "most_similar": top, "least_similar": least, "k": int(top_kn.shape[1])}


@dataclass(frozen=True, kw_only=True)
class UniquenessConfig(CommandConfig, OutputOption):
    """`saevlm uniqueness`: Jaccard overlap of neurons' top-image sets."""

    COMMAND: ClassVar[str] = "uniqueness"
    OUTPUT_DEFAULT: ClassVar[str] = '--activations_dir, for uniqueness_<k>.json'

    activations_dir: str = opt()
    """the store whose top_images_<k>.npy (saevlm top-images) is analysed"""
    k: int = opt(paper_default("uniqueness", "k"))
    """(default: %(default)s)"""
    keep_near_dead: bool = opt(False)
    """also include neurons whose k-th value is 0"""


CONFIG = UniquenessConfig


def run(args: UniquenessConfig) -> int:
    import time
    from pathlib import Path


    t0 = time.time()
    from saevlm.data.atomic import ensure_writable_dir
    from saevlm.data.open import open_any_store
    from saevlm.data.topimages import load_top_images

    d = Path(args.activations_dir)
    store = open_any_store(d, "activations_dir", allow_top_images=True) if (d / A.MANIFEST).is_file() else None
    top, kth, _ = load_top_images(d, args.k, store)
    out = ensure_writable_dir(args.output_dir or d, "output_dir" if args.output_dir else "activations_dir")
    stats = uniqueness_stats(top, kth, args.keep_near_dead)
    if store is not None:
        from saevlm.data.stamps import source_stamp
        stats["source"] = source_stamp(store)
    A.UniquenessResult.write_json(out / A.uniqueness_json(args.k), stats)
    print(f"{stats['neurons']} neurons ({stats['left_out_near_dead']} near-dead left out), "
          f"{stats['pairs']:,} pairs")
    for t, c in stats["pairs_above"].items():
        print(f"  J > {t}: {c:,}")
    print("most similar: " + ", ".join(f"({a},{b}) {s:.3f}" for a, b, s in stats["most_similar"]))
    print(f"wrote {out}/uniqueness_{args.k}.json ({time.time() - t0:.1f} s)")
    return 0
