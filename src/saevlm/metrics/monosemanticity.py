"""The Monosemanticity Score (MS), arXiv 2504.02821 v3, Eq. 5-9, exactly, in one streaming pass.

Definition, for neuron k over N images with activations a_n and image embeddings e_n:

    ã_n  = (a_n - min a) / (max a - min a)                       (per-neuron min-max)
    s_nm = cos(e_n, e_m)
    MS_k = Σ_{n<m} ã_n ã_m s_nm / Σ_{n<m} ã_n ã_m               (pairs of distinct images)

NaN ("dead") when max == min or when the denominator is 0 (ã non-zero on at most one image).

Closed form (exact): with unit-norm u_n = e_n / ||e_n||, s_nn = 1 and

    2 Σ_{n<m} ã_n ã_m s_nm = ||Σ_n ã_n u_n||² - Σ_n ã_n²
    2 Σ_{n<m} ã_n ã_m      = (Σ_n ã_n)²     - Σ_n ã_n².

Because ã is invariant to shifting a, and the scale (max - min)² cancels in the ratio, one pass
suffices: accumulate per neuron S1 = Σ b_n, S2 = Σ b_n², V = Σ b_n u_n (b = a - c for a fixed
per-neuron shift c), the minimum, maximum and the number of images at the minimum, plus
U = Σ u_n. With m = min b and Q = S2 - 2 m S1 + N m² (= Σ (b_n - m)²):

    MS = (||V - m U||² - Q) / ((S1 - N m)² - Q).

Accumulation is in float64 (the differences above cancel). For sparse SAE codes only the
non-zero entries are touched (cost N·k·d, not N·K·d); zeros contribute nothing to S1, S2, V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MSAccumulator:
    """Streaming accumulator; feed dense or CSR chunks of activations with their embeddings."""

    num_neurons: int
    embed_dim: int
    device: str | object = "cpu"

    def __post_init__(self):
        import torch

        f64 = dict(dtype=torch.float64, device=self.device)
        K, d = self.num_neurons, self.embed_dim
        self.n = 0
        self.U = torch.zeros(d, **f64)
        self.V = torch.zeros(K, d, **f64)
        self.S1 = torch.zeros(K, **f64)
        self.S2 = torch.zeros(K, **f64)
        self.shift = None  # dense path: per-neuron shift c (the first chunk's minimum)
        # dense path: running min / max / count at min of b = a - c
        self.bmin = torch.full((K,), float("inf"), **f64)
        self.bmax = torch.full((K,), float("-inf"), **f64)
        self.count_min = torch.zeros(K, dtype=torch.int64, device=self.device)
        # sparse path: statistics of the stored (non-zero) values
        self.nnz = torch.zeros(K, dtype=torch.int64, device=self.device)
        self.mode: str | None = None

    def _unit(self, embeds_nd):
        import torch

        e = torch.as_tensor(np.asarray(embeds_nd), device=self.device).to(torch.float64)
        norms = e.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("an image embedding has zero norm; its cosine similarity is undefined")
        return e / norms

    def _set_mode(self, mode: str) -> None:
        if self.mode not in (None, mode):
            raise ValueError("do not mix dense and sparse chunks in one accumulator")
        self.mode = mode

    def add_dense(self, acts_nk, embeds_nd) -> None:
        """Dense activations [n, K] (any sign) with their embeddings [n, d]."""
        import torch

        self._set_mode("dense")
        u = self._unit(embeds_nd)
        a = torch.as_tensor(np.asarray(acts_nk), device=self.device).to(torch.float64)
        if self.shift is None:
            self.shift = a.min(0).values
        b = a - self.shift
        cmin = b.min(0).values
        self._merge_min_max(cmin, b.max(0).values, (b == cmin).sum(0))
        self.S1 += b.sum(0)
        self.S2 += (b * b).sum(0)
        self.V += b.T @ u
        self.U += u.sum(0)
        self.n += len(a)

    def _merge_min_max(self, cmin, cmax, at_cmin) -> None:
        """Fold a chunk's per-neuron min, max and count at the min into the running ones."""
        import torch

        lower = cmin < self.bmin
        equal = cmin == self.bmin
        self.count_min = torch.where(lower, at_cmin, torch.where(equal, self.count_min + at_cmin, self.count_min))
        self.bmin = torch.minimum(self.bmin, cmin)
        self.bmax = torch.maximum(self.bmax, cmax)

    def add_csr(self, indptr, indices, values, embeds_nd, rows_per_block: int = 128) -> None:
        """A CSR chunk of codes [n, K] with its embeddings [n, d]; only non-zeros are touched."""
        import torch

        self._set_mode("sparse")
        u = self._unit(embeds_nd)
        indptr = np.asarray(indptr, dtype=np.int64)
        n = len(indptr) - 1
        lo, hi = int(indptr[0]), int(indptr[n])
        vals_np = np.asarray(values[lo:hi], dtype=np.float64)
        keep = vals_np != 0  # explicit zeros are zeros
        starts = np.concatenate([[0], np.cumsum(keep)])  # kept entries before each stored one
        cols = torch.as_tensor(np.asarray(indices[lo:hi], dtype=np.int64)[keep], device=self.device)
        vals = torch.as_tensor(vals_np[keep], device=self.device)
        rows = torch.as_tensor(np.repeat(np.arange(n), np.diff(indptr))[keep], device=self.device)
        # per-latent sums, counts, min / max / count-at-min: once per chunk, over K (zeros are
        # added in scores())
        self.S1.index_add_(0, cols, vals)
        self.S2.index_add_(0, cols, vals * vals)
        self.nnz.index_add_(0, cols, torch.ones_like(cols))
        big = torch.full((self.num_neurons,), float("inf"), dtype=torch.float64, device=self.device)
        cmin = big.scatter_reduce(0, cols, vals, reduce="amin")
        cmax = (-big).scatter_reduce(0, cols, vals, reduce="amax")
        at = torch.zeros(self.num_neurons, dtype=torch.int64, device=self.device)
        at.index_add_(0, cols, (vals == cmin[cols]).to(torch.int64))
        self._merge_min_max(cmin, cmax, at)
        # V += codes^T u, in blocks of rows through one reused [nnz, d] buffer (a fresh temporary
        # per block above ~32 MB is a fresh mmap, and its page faults cost more than the math)
        bounds = [(int(starts[indptr[r0] - lo]), int(starts[indptr[min(r0 + rows_per_block, n)] - lo]))
                  for r0 in range(0, n, rows_per_block)]
        width = max((b - a for a, b in bounds), default=0)
        buf = torch.empty((width, u.shape[1]), dtype=torch.float64, device=self.device)
        for a, b in bounds:
            if b > a:
                block = torch.index_select(u, 0, rows[a:b], out=buf[:b - a])
                block.mul_(vals[a:b, None])
                self.V.index_add_(0, cols[a:b], block)
        self.U += u.sum(0)
        self.n += n

    def scores(self) -> np.ndarray:
        """MS per neuron (float64, NaN where the score is undefined)."""
        return self._finish()["ms"].cpu().numpy()

    def _finish(self, keep_W: bool = False) -> dict:
        """The closed form's terms per neuron (m, num, den, ms as tensors; W = V - m U with
        ``keep_W``, which the jackknife reads: [K, d] in float64, 400 MB at 65,536 x 768)."""
        import torch

        N = self.n
        bmin, bmax, count_min = self.bmin.clone(), self.bmax.clone(), self.count_min.clone()
        if self.mode == "sparse":
            zeros = N - self.nnz  # images where the neuron is exactly 0
            has_zero = zeros > 0
            z = torch.zeros_like(bmin)
            count_min = torch.where(has_zero & (bmin > 0), zeros,
                                    torch.where(has_zero & (bmin == 0), zeros + count_min, count_min))
            count_min = torch.where(has_zero & (bmin == float("inf")), zeros, count_min)
            bmin = torch.where(has_zero, torch.minimum(bmin, z), bmin)
            bmax = torch.where(has_zero, torch.maximum(bmax, z), bmax)
        m = bmin
        Q = self.S2 - 2 * m * self.S1 + N * m * m
        if keep_W:
            W = self.V - m[:, None] * self.U[None, :]
            w_sq = (W * W).sum(1)
        else:  # the same arithmetic, row block by row block: no [K, d] temporaries
            W, w_sq = None, torch.empty_like(m)
            for r0 in range(0, len(m), 4096):
                w = self.V[r0:r0 + 4096] - m[r0:r0 + 4096, None] * self.U[None, :]
                w_sq[r0:r0 + 4096] = (w * w).sum(1)
        num = w_sq - Q
        den = (self.S1 - N * m) ** 2 - Q
        ms = num / den
        constant = bmax == bmin
        undefined = constant | (N - count_min <= 1)
        # why a score is undefined: the neuron never varies, or varies on one image only
        self.dead_constant = int(constant.sum())
        self.dead_one_image = int((undefined & ~constant).sum())
        ms = torch.where(undefined, torch.full_like(ms, float("nan")), ms)
        return {"m": m, "W": W, "A": self.S1 - N * m, "num": num, "den": den, "ms": ms}

    def jackknife(self) -> "MSJackknife":
        """The second pass of the MS's uncertainty (see :class:`MSJackknife`): feed it the same
        chunks again, in the same order."""
        return MSJackknife(self)


class MSJackknife:
    """Standard errors of the MS over resampling of the images: the delete-one jackknife, exact
    through the closed form, in one more streamed pass over the same chunks.

    With ã_n = b_n - m (the shifted activations), W = Σ ã_n u_n and A = Σ ã_n, image n enters the
    pair sums through g_n = ã_n (W·u_n - ã_n) and f_n = ã_n (A - ã_n) (Σ g_n = num, Σ f_n = den;
    each pair is counted twice in both), so leaving image n out gives exactly

        MS_(-n) = (num - 2 g_n) / (den - 2 f_n)

    with the shift m and the min-max scale held fixed (the scale cancels in the ratio; m moves only
    when image n is a neuron's unique minimum, which for sparse codes is never: their minimum is
    the 0 of the images where they are off). Images where ã_n = 0 leave the MS unchanged, so for
    SAE codes only the non-zeros are touched (N k d products, as in the first pass). Per neuron:

        SE² = (N - 1) / N Σ_n (MS_(-n) - mean_n MS_(-n))²,   95 % interval: MS ± 1.96 SE.

    A neuron whose score becomes undefined without one of its images (active on two images) gets
    SE = inf. Per image, the change of the mean MS over the scored neurons when that image is left
    out (``image_deltas``) gives the SAE-level interval and, for two SAEs scored on the same images,
    the interval of their difference (paired: the same image left out of both).
    """

    def __init__(self, acc: MSAccumulator):
        import torch

        self.acc = acc
        t = acc._finish(keep_W=True)
        self.m, self.W, self.A, self.num, self.den, self.ms = t["m"], t["W"], t["A"], t["num"], t["den"], t["ms"]
        # sparse codes with negative values: the implicit zeros sit above the minimum and would move
        # the score too; such neurons get no interval (SAE codes are never negative)
        zeros = acc.n - acc.nnz
        self.unsupported = (self.m != 0) & (zeros > 0) if acc.mode == "sparse" else torch.zeros_like(self.ms,
                                                                                                      dtype=torch.bool)
        self.scored = ~torch.isnan(self.ms)
        f64 = dict(dtype=torch.float64, device=acc.device)
        self.sum_d = torch.zeros(acc.num_neurons, **f64)  # Σ (MS_(-n) - MS) over the images that move it
        self.sum_d2 = torch.zeros(acc.num_neurons, **f64)
        self.undefined = torch.zeros(acc.num_neurons, dtype=torch.bool, device=acc.device)
        self.deltas: list = []  # per image: change of the mean MS over scored neurons
        self.n = 0

    def _fold(self, cols, rows, at, wu, n: int) -> None:
        """Entries (row, neuron) with shifted activation ``at`` and W_k·u_n = ``wu``."""
        import torch

        g = at * (wu - at)
        f = at * (self.A[cols] - at)
        den = self.den[cols] - 2 * f
        ok = den > 0
        r = (self.num[cols] - 2 * g) / torch.where(ok, den, torch.ones_like(den))
        d = torch.where(ok, r - self.ms[cols], torch.zeros_like(r))
        bad = ~ok & self.scored[cols]
        if bool(bad.any()):
            self.undefined[cols[bad]] = True
        d = torch.where(self.scored[cols], d, torch.zeros_like(d))
        self.sum_d.index_add_(0, cols, d)
        self.sum_d2.index_add_(0, cols, d * d)
        # per image: the defined changes, and the neurons its removal leaves undefined (the mean
        # over scored neurons then runs over the others, as recomputing it literally would)
        per_image = torch.zeros(n, dtype=torch.float64, device=d.device)
        per_image.index_add_(0, rows, d)
        lost = torch.zeros(n, dtype=torch.float64, device=d.device)
        lost_ms = torch.zeros(n, dtype=torch.float64, device=d.device)
        if bool(bad.any()):
            lost.index_add_(0, rows[bad], torch.ones_like(d[bad]))
            lost_ms.index_add_(0, rows[bad], self.ms[cols][bad])
        self.deltas.append(torch.stack([per_image, lost, lost_ms], 1).cpu().numpy())
        self.n += n

    def add_csr(self, indptr, indices, values, embeds_nd) -> None:
        import torch

        acc = self.acc
        u = acc._unit(embeds_nd)
        indptr = np.asarray(indptr, dtype=np.int64)
        n = len(indptr) - 1
        cols = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=acc.device)
        vals = torch.as_tensor(np.array(values, dtype=np.float64), device=acc.device)
        rows = torch.as_tensor(np.repeat(np.arange(n), np.diff(indptr)), device=acc.device)
        at = vals - self.m[cols]
        keep = (vals != 0) & (at != 0)
        cols, rows, at = cols[keep], rows[keep], at[keep]
        # W_k · u_n for every stored entry, in blocks: a [block, d] temporary of a few MB stays in
        # the allocator's reach (blocks of 2^16 entries, 400 MB, took twice the time in page faults)
        wu = torch.empty_like(at)
        for a in range(0, len(at), 1 << 12):
            b = min(a + (1 << 12), len(at))
            wu[a:b] = (self.W[cols[a:b]] * u[rows[a:b]]).sum(1)
        self._fold(cols, rows, at, wu, n)
        # implicit zeros move a neuron only when its shift is not 0 (a neuron active on every image
        # has no implicit zero: its entries are all stored)

    def add_dense(self, acts_nk, embeds_nd) -> None:
        import torch

        acc = self.acc
        u = acc._unit(embeds_nd)
        a = torch.as_tensor(np.asarray(acts_nk), device=acc.device).to(torch.float64)
        n, K = a.shape
        at = a - acc.shift[None] - self.m[None]
        wu = u @ self.W.T  # [n, K]
        rows = torch.arange(n, device=a.device).repeat_interleave(K)
        cols = torch.arange(K, device=a.device).repeat(n)
        at, wu = at.reshape(-1), wu.reshape(-1)
        keep = at != 0
        self._fold(cols[keep], rows[keep], at[keep], wu[keep], n)

    def result(self) -> dict[str, np.ndarray]:
        """se [K] (inf: undefined without one of its images; NaN: the MS itself is undefined),
        ci95 [K, 2] (clipped to [-1, 1]), image_deltas [N]."""
        import torch

        N = self.n
        mean_d = self.sum_d / N
        var = (N - 1) / N * torch.clamp(self.sum_d2 - N * mean_d * mean_d, min=0.0)
        se = torch.sqrt(var)
        se = torch.where(self.undefined, torch.full_like(se, float("inf")), se)
        se = torch.where(self.scored & ~self.unsupported, se, torch.full_like(se, float("nan")))
        se_np, ms_np = se.cpu().numpy(), self.ms.cpu().numpy()
        with np.errstate(invalid="ignore"):
            ci = np.stack([np.clip(ms_np - 1.96 * se_np, -1, 1), np.clip(ms_np + 1.96 * se_np, -1, 1)], 1)
        parts = np.concatenate(self.deltas) if self.deltas else np.zeros((0, 3))
        scored = ~np.isnan(ms_np)
        total, count = float(ms_np[scored].sum()), int(scored.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            left = count - parts[:, 1]
            deltas = np.where(left > 0, (total + parts[:, 0] - parts[:, 2]) / np.maximum(left, 1) - total / max(count, 1),
                              0.0)
        return {"se": se_np, "ci95": ci, "image_deltas": deltas}


def jackknife_interval(deltas_n: np.ndarray) -> float:
    """The jackknife standard error of a statistic from its delete-one changes (per image)."""
    N = len(deltas_n)
    if N < 2:
        return float("nan")
    return float(np.sqrt((N - 1) / N * ((deltas_n - deltas_n.mean()) ** 2).sum()))


# A latent active (> 0) on fewer images has an MS resting on few image pairs: the explorer's table
# hides such latents by default and the report ranks the best latents among the others.
MIN_ACTIVE_IMAGES = 16


def best_active(scores_k: np.ndarray, active_k: np.ndarray, top: int = 10,
                min_active: int = MIN_ACTIVE_IMAGES) -> list[list]:
    """The ``top`` best [neuron, MS] among neurons active on at least ``min_active`` images."""
    return summarize(np.where(np.asarray(active_k) >= min_active, scores_k, np.nan), top)["top10"]


def summarize(scores_k: np.ndarray, top: int = 10) -> dict:
    """mean, std, dead, total, top10 / bottom10 ([neuron, score]) over the defined scores."""
    valid = np.flatnonzero(~np.isnan(scores_k))
    vals = scores_k[valid]
    order = valid[np.argsort(-vals, kind="stable")]
    return {
        "mean": float(vals.mean()) if len(vals) else float("nan"),
        # unbiased, as the authors' torch.std (ddof=1)
        "std": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
        "dead": int(len(scores_k) - len(valid)),
        "total": int(len(scores_k)),
        "top10": [[int(i), float(scores_k[i])] for i in order[:top]],
        "bottom10": [[int(i), float(scores_k[i])] for i in order[::-1][:top]],
    }
