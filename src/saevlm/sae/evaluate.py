"""Reconstruction and sparsity metrics of an SAE on a store (arXiv 2504.02821: R^2, L0).

- ``mse``: mean squared error per element; ``l2_loss``: mean over rows of ||x - x_hat||^2.
- ``r2``: fraction of variance explained, 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
  (pooled over dimensions, the mean taken over the evaluated rows).
- ``r2_authors`` / ``r2_authors_no_threshold``: R^2 as the authors' training code logs it
  (``val_threshold_true|false/frac_variance_explained``): per validation batch,
  1 - sum_d var_d(x - x_hat) / sum_d var_d(x) (the residual is centred), then the mean over
  batches; with the learned threshold, and with the batch top-k instead. Present when the
  evaluation is fed in batches (``batch_metrics=True``) and, for the second, ``encode_batch_topk``.
- ``l0``: mean number of non-zero codes per row, at inference (BatchTopK and Matryoshka use their
  learned global threshold, so it is close to, not exactly, K).
- ``dead_fraction``: latents never active on the evaluated rows; ``dense_fraction``: latents
  active on more than 10% of them.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

DENSE_FREQUENCY = 0.10


def _batch_r2(x, x_hat) -> float:
    """The authors' per-batch fraction of variance explained (unbiased variances; the ratio is
    the same for any ddof). Nan for a batch of one row."""
    import torch

    if len(x) < 2:
        return float("nan")
    total = torch.var(x.double(), dim=0).sum()
    resid = torch.var((x - x_hat).double(), dim=0).sum()
    return float(1.0 - resid / total)


def evaluate_sae(encode, decode, chunks: Iterable[np.ndarray], dict_size: int, device="cpu",
                 scale: float = 1.0, batch_metrics: bool = False, encode_batch_topk=None) -> dict:
    """Stream ``chunks`` (float32 [n, d] in original units) through ``encode``/``decode``.

    ``scale`` divides inputs before the SAE and multiplies reconstructions after it (for SAEs
    that work on normalised inputs during training). With ``batch_metrics`` every chunk is one
    validation batch of the authors' loop, and their batch-averaged R^2 is added.
    """
    import torch

    r2_batches: list[float] = []
    r2_batches_topk: list[float] = []

    n = 0
    sum_x = None
    sum_x2 = 0.0
    sse = 0.0
    l0_total = 0.0
    fire_counts = torch.zeros(dict_size, dtype=torch.float64, device=device)
    with torch.no_grad():
        for chunk in chunks:
            x = torch.as_tensor(chunk, device=device, dtype=torch.float32)
            f = encode(x / scale)
            x_hat = decode(f) * scale
            active = f != 0
            fire_counts += active.sum(0, dtype=torch.float64)
            l0_total += float(active.sum(dtype=torch.float64))
            sse += float(((x - x_hat).double() ** 2).sum())
            if batch_metrics:
                r2_batches.append(_batch_r2(x, x_hat))
                if encode_batch_topk is not None:
                    r2_batches_topk.append(_batch_r2(x, decode(encode_batch_topk(x / scale)) * scale))
            xd = x.double()
            sum_x = xd.sum(0) if sum_x is None else sum_x + xd.sum(0)
            sum_x2 += float((xd ** 2).sum())
            n += len(x)
    if n == 0:
        raise ValueError("no rows to evaluate")
    d = int(sum_x.numel())
    sst = sum_x2 - float((sum_x ** 2).sum()) / n  # sum ||x - mean||^2
    freq = (fire_counts / n).cpu().numpy()
    out_batches = {}
    if batch_metrics:
        out_batches["r2_authors"] = float(np.nanmean(r2_batches))
        if r2_batches_topk:
            out_batches["r2_authors_no_threshold"] = float(np.nanmean(r2_batches_topk))
        out_batches["r2_authors_batches"] = len(r2_batches)
    return out_batches | {
        "rows": n,
        "mse": sse / (n * d),
        "l2_loss": sse / n,
        # undefined (None, "undefined" in print) when the activations do not vary: sst is then 0 up
        # to rounding, and 1 - sse / sst a meaningless huge number
        "r2": 1.0 - sse / sst if sst > 1e-9 * max(sum_x2, 1e-300) else None,
        "l0": l0_total / n,
        "dead_fraction": float((freq == 0).mean()),
        "dense_fraction": float((freq > DENSE_FREQUENCY).mean()),
        "dict_size": dict_size,
    }
