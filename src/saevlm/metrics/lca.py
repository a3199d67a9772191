"""Lowest-common-ancestor depths of image pairs in a class taxonomy (arXiv 2504.02821, App. E.3):
the arithmetic behind ``saevlm hierarchy`` and the explorer's per-latent depth column."""

from __future__ import annotations

import numpy as np


def level_codes(taxonomy: list[list[str]]) -> np.ndarray:
    """Per class, an integer per level identifying the path prefix down to that level
    ([C, L], -1 past the end of a shorter path), so 'same prefix' is an integer comparison."""
    depth = max(len(p) for p in taxonomy)
    codes = np.full((len(taxonomy), depth), -1, dtype=np.int64)
    ids: dict[tuple, int] = {}
    for c, path in enumerate(taxonomy):
        for lvl in range(len(path)):
            codes[c, lvl] = ids.setdefault(tuple(path[:lvl + 1]), len(ids))
    return codes


def lca_depths(top_labels_kn: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """[neurons, pairs] LCA depth of every pair of each neuron's top images."""
    n_img = top_labels_kn.shape[1]
    a, b = np.triu_indices(n_img, k=1)
    ca, cb = codes[top_labels_kn[:, a]], codes[top_labels_kn[:, b]]  # [K, P, L]
    same = (ca == cb) & (ca >= 0)
    return np.cumprod(same, axis=2).sum(axis=2)


def majority(depths_kp: np.ndarray) -> np.ndarray:
    counts = np.stack([(depths_kp == d).sum(1) for d in range(int(depths_kp.max()) + 1)], 1)
    return counts.argmax(1)  # argmax takes the first (shallowest) of tied maxima
