"""A synthetic world's ground-truth concepts per sample (``concepts_<split>.npz``, CSR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_concepts(path: str | Path) -> np.ndarray:
    """A ``concepts_<split>.npz`` as a dense [n, C] float32 array."""
    f = np.load(path)
    n, c = f["shape"]
    z = np.zeros((int(n), int(c)), dtype=np.float32)
    rows = np.repeat(np.arange(int(n)), np.diff(f["indptr"]))
    z[rows, f["indices"]] = f["values"]
    return z
