"""Per-SAE statistics the explorer's pages read: computed once from the codes (or the top images
when only those were stored) and cached under the cache directory, keyed by the store's content
hash, so pages render from records and no request scans all codes.

- ``basic``: per latent, the share of rows where it is active, its maximum, the images it is
  active on;
- ``related``: co-activation neighbours, near-duplicate clusters and, for Matryoshka SAEs, parents
  and children (:mod:`saevlm.metrics.coactivation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from saevlm.data.atomic import atomic_save_npz
from saevlm.metrics.coactivation import Related, activity_matrix, related_latents, top_sets_matrix


def cached(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays in ``path`` (an .npz) or, the first time, ``compute()`` written there atomically."""
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):  # a damaged cache file is computed again, never shown
            pass
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, **out)
    return out


def basic_stats(store, num_latents: int, is_codes: bool, top_values_kk: np.ndarray | None) -> dict[str, np.ndarray]:
    """freq (share of code rows where active), max, mean (over the rows where active) and active
    (rows where active; -1: unknown)."""
    K = num_latents
    if not is_codes:
        values = top_values_kk if top_values_kk is not None else np.full((K, 1), np.nan)
        return {"freq": np.full(K, np.nan), "max": values[:, 0].astype(np.float32),
                "active": np.full(K, -1, dtype=np.int64), "mean": np.full(K, np.nan)}  # unknown: only the top images were stored
    count = np.zeros(K, dtype=np.int64)
    total = np.zeros(K, dtype=np.float64)
    top = np.zeros(K, dtype=np.float32)
    for chunk in store.iter_csr(1 << 20):
        idx = np.asarray(chunk.indices, dtype=np.int64)
        vals = np.asarray(chunk.values, dtype=np.float32)
        nz = vals != 0
        count += np.bincount(idx[nz], minlength=K)
        total += np.bincount(idx[nz], weights=vals[nz], minlength=K)
        np.maximum.at(top, idx, vals)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return {"freq": count / max(store.num_rows, 1), "max": top, "active": count, "mean": mean}


def related_stats(store, num_latents: int, is_codes: bool, row_images: np.ndarray | None,  # None: a row per image
                  top: tuple[np.ndarray, np.ndarray] | None, groups_k: np.ndarray | None) -> Related | None:
    """Co-activation over the images each latent is active on (codes), or over its top images
    (a top-images store); None when neither is there."""
    if is_codes:
        b = activity_matrix(store.iter_csr(1 << 20), num_latents, row_images)
        basis = "active images"
    elif top is not None:
        ids, values = top
        b = top_sets_matrix(ids, values, int(ids.max()) + 1 if ids.size else 0)
        basis = f"top-{ids.shape[1]} images"
    else:
        return None
    return related_latents(b, basis=basis, groups_k=groups_k)


BASELINE_SETS = 200  # random image sets per size (fewer above 1,024 images, where the spread is small)


def baseline_sizes(num_images: int) -> np.ndarray:
    """Set sizes 2, 3, 4, 6, 8, 12, ... (about sqrt(2) apart) up to the number of images."""
    sizes = {2}
    s = 2.0
    while s < num_images:
        sizes.add(int(round(s)))
        s *= np.sqrt(2)
    sizes.add(num_images)
    return np.array(sorted(x for x in sizes if 2 <= x <= num_images), dtype=np.int64)


def ms_baseline(unit_nd: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """What a latent active on n random images, equally, scores under the same embedder: for each
    size n, the median and 95th percentile of the MS of random image sets (Eq. 5-9 with ã = 1 on
    the set: the mean cosine similarity of its distinct pairs, ((||Σ u||² - n) / (n² - n)).
    ``unit_nd``: the unit-norm image embeddings. An MS above the 95th percentile of its size is
    unlikely from an unrelated set of images; one below the median is no better than chance."""
    rng = np.random.default_rng(seed)
    N = len(unit_nd)
    sizes = baseline_sizes(N)
    q50, q95 = np.zeros(len(sizes)), np.zeros(len(sizes))
    for i, n in enumerate(sizes):
        sets = BASELINE_SETS if n <= 1024 else 50
        scores = np.empty(sets)
        for r in range(sets):
            pick = rng.choice(N, size=int(n), replace=False)
            v = unit_nd[pick].sum(axis=0, dtype=np.float64)
            scores[r] = (float(v @ v) - n) / (n * n - n)
        q50[i], q95[i] = np.quantile(scores, [0.5, 0.95])
    return {"sizes": sizes, "q50": q50, "q95": q95}


def baseline_at(baseline: dict[str, np.ndarray], n: int) -> tuple[int, float, float] | None:
    """(the nearest computed size, its median, its 95th percentile) for a latent active on n images."""
    sizes = baseline["sizes"]
    if n < 2 or not len(sizes):
        return None
    i = int(np.argmin(np.abs(np.log(sizes) - np.log(n))))
    return int(sizes[i]), float(baseline["q50"][i]), float(baseline["q95"][i])


def latent_columns(store, num_latents: int) -> dict[str, np.ndarray]:
    """Every latent's non-zero activations, sorted high to low, with their rows (indptr [K + 1],
    values, rows): the rank of an image in a latent's distribution is one binary search, and a
    latent page's histogram and quantile images a slice, not a pass over all codes. For
    token-level stores the rows are tokens (the rank of an image is then not defined by it)."""
    cols, vals, rows = [], [], []
    for chunk in store.iter_csr(1 << 20):
        v = np.asarray(chunk.values, dtype=np.float32)
        keep = v != 0
        cols.append(np.asarray(chunk.indices, dtype=np.int64)[keep])
        vals.append(v[keep])
        rows.append((chunk.start + chunk.row_ids())[keep])
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    from saevlm.data.topimages import latent_value_row_order

    order = latent_value_row_order(c, v, r)
    indptr = np.zeros(num_latents + 1, np.int64)
    np.cumsum(np.bincount(c, minlength=num_latents), out=indptr[1:])
    return {"indptr": indptr, "values": v[order], "rows": r[order].astype(np.int64)}


def rank_in_column(columns: dict[str, np.ndarray], j: int, value: float) -> tuple[int, int]:
    """(rank of ``value`` among latent j's non-zero activations, 1 = highest; how many there are)."""
    a, b = int(columns["indptr"][j]), int(columns["indptr"][j + 1])
    desc = columns["values"][a:b]
    above = int(np.searchsorted(-desc, -np.float32(value), side="left"))  # values strictly greater
    return above + 1, b - a
