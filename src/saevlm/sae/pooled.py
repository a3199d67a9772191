"""SAE codes pooled over an image's tokens, the authors' steering protocol (arXiv 2504.02821,
Sec. 4.3): the SAE sits inside the vision block and encodes EVERY token, then the codes are
mean-pooled per image, ``mean_t encode(x_t)``; images are ranked per latent by that mean.

``encode(mean_t x_t)`` would be another quantity (the codes of the mean activation): a
BatchTopK SAE keeps about K latents of the mean, but up to T x K distinct latents are active
across an image's T tokens.

This module holds the maths; the extraction engine (:func:`saevlm.extraction.extract_stores`)
writes the two outputs of ``saevlm extract --sae_path --mean_pool``: a sparse code store of the
pooled codes (one row per image), or, with ``--top_k k``, a top-images store
(:mod:`saevlm.data.topimages`) from a running top-k per latent and shard.
"""

from __future__ import annotations

import numpy as np

from saevlm.errors import UserError


def mean_codes(acts_btd, encode_rows, rows_per_forward: int = 4096, valid_bt=None):
    """``mean_t encode(x_t)`` per image: acts [B, T, d] -> float32 codes [B, K] (torch).

    ``encode_rows`` maps a float32 [n, d] tensor to dense codes [n, K]; tokens are encoded in
    slices of ``rows_per_forward`` rows so that [rows, K] stays bounded (65,536 latents x 4096
    rows = 1 GiB), and summed per image in float32 in token order. With ``valid_bt`` ([B, T]
    bool) only the valid tokens are encoded and averaged (registers, NaFlex padding never count).
    """
    import torch

    b, t, d = acts_btd.shape
    if valid_bt is not None:
        which = valid_bt.to(acts_btd.device, torch.bool).nonzero()
        flat = acts_btd[which[:, 0], which[:, 1]].float()
        image_of_row = which[:, 0]
        counts = valid_bt.to(torch.float32).sum(1).clamp_min(1.0)
    else:
        flat = acts_btd.reshape(b * t, d).float()
        image_of_row = torch.arange(b, device=flat.device).repeat_interleave(t)
        counts = None
    sums = None
    for s in range(0, len(flat), rows_per_forward):
        codes = encode_rows(flat[s:s + rows_per_forward]).float()
        if sums is None:
            sums = torch.zeros(b, codes.shape[1], dtype=torch.float32, device=codes.device)
        sums.index_add_(0, image_of_row[s:s + rows_per_forward].to(codes.device), codes)
    if sums is None:  # no valid token at all
        raise ValueError("mean_codes: no token to encode")
    return sums / t if counts is None else sums / counts.to(sums.device)[:, None]


def block_top_k(a, kk: int):
    """The kk largest values of each column of ``a`` [n, K] with their rows, ties at the kk-th
    value going to the lower rows (``torch.topk`` alone picks any of them), in O(n K): the k-th
    value per column, every entry above it, and the first tied ones in row order."""
    import torch

    kth = torch.topk(a, kk, dim=0, sorted=True).values[-1]
    above = a > kth
    tied = a == kth
    need = kk - above.sum(dim=0)  # >= 1: the k-th value itself is tied with itself
    chosen = above | (tied & (torch.cumsum(tied, dim=0) <= need))
    n = a.shape[0]
    # exactly kk chosen per column; their keys n - row are distinct and positive, the others 0
    key = torch.where(chosen, n - torch.arange(n, device=a.device)[:, None], 0)
    rows = n - torch.topk(key, kk, dim=0).values
    return a.gather(0, rows), rows


class RunningTopK:
    """The k largest values per column over a stream of row blocks, with their row ids.

    Order: value descending, then lower row first (a stable rule, the same as ``top-images``).
    """

    def __init__(self, num_columns: int, k: int, device="cpu"):
        import torch

        self.k = k
        self.values = torch.full((k, num_columns), float("-inf"), dtype=torch.float32, device=device)
        self.rows = torch.full((k, num_columns), -1, dtype=torch.int64, device=device)

    def update(self, start_row: int, block_nk) -> None:
        import torch

        a = torch.as_tensor(block_nk, dtype=torch.float32, device=self.values.device)
        v, r = block_top_k(a, min(self.k, len(a)))
        cand_v = torch.cat([self.values, v])
        cand_r = torch.cat([self.rows, r + start_row])
        # order by (value desc, row asc): sort by row, then a stable sort by value
        o = torch.argsort(cand_r, dim=0, stable=True)
        cand_v, cand_r = cand_v.gather(0, o), cand_r.gather(0, o)
        o = torch.argsort(cand_v, dim=0, descending=True, stable=True)[: self.k]
        self.values, self.rows = cand_v.gather(0, o), cand_r.gather(0, o)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [K, k], values [K, k]), highest first."""
        if bool((self.rows < 0).any()):
            raise UserError(f"fewer than k = {self.k} rows were seen")
        return self.rows.T.cpu().numpy(), self.values.T.cpu().numpy()

    def update_rows(self, rows, block_nk) -> None:
        """Add the rows ``rows`` (ascending, not necessarily contiguous: an unreadable image is
        absent) with their values ``block_nk``."""
        import torch

        rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        a = torch.as_tensor(block_nk, dtype=torch.float32, device=self.values.device)
        lo = int(rows.min())
        block = torch.full((int(rows.max()) - lo + 1, a.shape[1]), float("-inf"), device=a.device)
        block[(rows - lo).to(a.device)] = a
        self.update(lo, block)

    def partial(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [k, K], values [k, K]) so far, empty places as row -1 and value -inf (a shard's
        list, merged with the others by :func:`saevlm.data.topimages.merge_top_k`)."""
        return self.rows.cpu().numpy(), self.values.cpu().numpy()
