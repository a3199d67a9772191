"""Label purity of a latent's top images (a library module: ``saevlm name`` and the explorer's
label column both read it)."""

from __future__ import annotations

import numpy as np


def label_purity(top_labels_kn: np.ndarray, active_kn: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(majority label [K], purity [K], entropy in bits [K]) of each row of top-image labels,
    over the entries where ``active_kn`` is True (all by default). A row with none: label -1,
    purity and entropy NaN."""
    labels_kn = np.asarray(top_labels_kn, dtype=np.int64)
    active_kn = np.ones(labels_kn.shape, dtype=bool) if active_kn is None else np.asarray(active_kn, dtype=bool)
    K = len(labels_kn)
    rows = np.broadcast_to(np.arange(K)[:, None], labels_kn.shape)[active_kn]
    # (row, label) pairs with their counts, all rows at once (65,536 latents: no loop per row)
    pairs, counts = np.unique(np.stack([rows, labels_kn[active_kn]], 1).reshape(-1, 2), axis=0, return_counts=True)
    n_k = np.bincount(rows, minlength=K)
    p = counts / n_k[pairs[:, 0]]
    entropy = np.bincount(pairs[:, 0], weights=-p * np.log2(p), minlength=K) + 0.0
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # per row: most frequent, ties the lower label
    first = order[np.unique(pairs[order, 0], return_index=True)[1]]
    label, purity = np.full(K, -1, np.int64), np.full(K, np.nan)
    label[pairs[first, 0]] = pairs[first, 1]
    purity[pairs[first, 0]] = p[first]
    return label, purity, np.where(n_k > 0, entropy, np.nan)
