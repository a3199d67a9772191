"""Per-SAE statistics the explorer's pages read: computed once from the codes (or the top images
when only those were stored) and cached under the cache directory, keyed by the store's content
hash, so pages render from records and no request scans all codes.

- ``basic``: per latent, the share of rows where it is active, its maximum, the images it is
  active on;
- ``related``: co-activation neighbours, near-duplicate clusters and, for Matryoshka SAEs, parents
  and children (:mod:`saevlm.explorer.related`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from saevlm.data.atomic import atomic_save_npz
from saevlm.explorer.related import Related, activity_matrix, related_latents, top_sets_matrix


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
    """freq (share of code rows where active), max and active (images where active; -1: unknown)."""
    K = num_latents
    if not is_codes:
        values = top_values_kk if top_values_kk is not None else np.full((K, 1), np.nan)
        return {"freq": np.full(K, np.nan), "max": values[:, 0].astype(np.float32),
                "active": np.full(K, -1, dtype=np.int64)}  # unknown: only the top images were stored
    count = np.zeros(K, dtype=np.int64)
    top = np.zeros(K, dtype=np.float32)
    for chunk in store.iter_csr(1 << 20):
        idx = np.asarray(chunk.indices, dtype=np.int64)
        vals = np.asarray(chunk.values, dtype=np.float32)
        nz = vals != 0
        count += np.bincount(idx[nz], minlength=K)
        np.maximum.at(top, idx, vals)
    return {"freq": count / max(store.num_rows, 1), "max": top, "active": count}


def related_stats(store, num_latents: int, is_codes: bool, row_images: np.ndarray | None,
                  top: tuple[np.ndarray, np.ndarray] | None, groups_k: np.ndarray | None) -> Related | None:
    """Co-activation over the images each latent is active on (codes), or over its top images
    (a top-images store); None when neither is there."""
    if is_codes:
        per_image = row_images is not None and len(row_images) and len(np.unique(row_images)) != len(row_images)
        b = activity_matrix(store.iter_csr(1 << 20), num_latents, row_images if per_image else None)
        basis = "active images"
    elif top is not None:
        ids, values = top
        b = top_sets_matrix(ids, values, int(ids.max()) + 1 if ids.size else 0)
        basis = f"top-{ids.shape[1]} images"
    else:
        return None
    return related_latents(b, basis=basis, groups_k=groups_k)
