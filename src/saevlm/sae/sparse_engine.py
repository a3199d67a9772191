"""The sparse training engine: dictionary_learning's TopK / BatchTopK / Matryoshka BatchTopK update
(arXiv 2504.02821, Sec. 3 and App. A; Bussmann et al. 2024; Gao et al. 2024), computed at the cost of
the math.

A BatchTopK step of dictionary_learning is dense: the encoder forward, a decoder forward over all
``dict_size`` latents, the AuxK decode and the backward of each, about eight GEMMs of
``batch x d x dict_size``. Only ``k x batch`` codes are non-zero, so everything after the encoder's
forward is sparse:

- codes are kept as entries ``(row, latent, value)`` (the positive ones: a zero code adds nothing
  to a reconstruction, and ReLU passes no gradient where its output is 0);
- reconstructions are CSR x dense products over the active latents, the gradient of each code is a
  sampled dense-dense product (SDDMM) of the output gradient with its decoder row, and the weight
  gradients are transposed-CSR x dense products, all computed by hand under ``no_grad``;
- AuxK's top-k runs over the dead latents' columns only;
- the only dense ``batch x dict_size`` tensor is the encoder's pre-activation.

Every rule is dictionary_learning's (docs/training.md): the same trainer object supplies the
module, the Adam optimiser, the LR schedule, the threshold update (its own ``update_threshold``),
the dead-latent counter, AuxK's ``k_aux`` and window; the gradient goes through the same
parallel-component removal, ``clip_grad_norm_(1.0)``, Adam step, schedule step and decoder
renormalisation. Checkpoints and resume state are therefore the trainer's own, in its layout.

The decoder (and Matryoshka's ``W_enc``) keep their shapes but are stored latent-major (one
contiguous ``d``-vector per latent) so the sparse kernels read whole rows; :func:`relayout` does
this once and saved weights are made contiguous again.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from saevlm.sae.archs import ARCH_SPECS, spec

# the architectures whose table row says the sparse engine trains them
SPARSE_ARCHS = tuple(name for name, s in ARCH_SPECS.items() if s.sparse_engine)

# rows per chunk when the (rows x dict_size) pre-activations are scanned for candidates, so no
# second dense batch x dict_size tensor (a comparison mask) exists at once
_SCAN_ROWS = 512


def covers(arch: str) -> bool:
    """Whether the sparse engine trains ``arch`` (else dictionary_learning's update is used)."""
    return arch in ARCH_SPECS and spec(arch).sparse_engine


# -- sparse building blocks ---------------------------------------------------------------------

def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix of entries already sorted by row (unique (row, col) pairs)."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def spmm(rows, cols, vals, dense_kd: torch.Tensor, n_rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_e vals[e] * dense_kd[cols[e]] into output row rows[e]: (n_rows x d), entries sorted by
    row; written into ``out`` when given (a buffer kept across steps: on CPU a fresh large tensor
    costs more in page faults than the product itself)."""
    if out is None:
        out = dense_kd.new_empty(n_rows, dense_kd.shape[1])
    if rows.numel() == 0:
        return out.zero_()
    # beta=0: the old contents of out are ignored (NaN included)
    return torch.addmm(out, _csr(rows, cols, vals, (n_rows, dense_kd.shape[0])), dense_kd, beta=0.0, out=out)


def sddmm(rows, cols, a_nd: torch.Tensor, b_kd: torch.Tensor) -> torch.Tensor:
    """<a_nd[rows[e]], b_kd[cols[e]]> for every entry e (entries sorted by row): the gradient of
    each sparse code from the output gradient ``a_nd`` and the decoder rows ``b_kd``."""
    if rows.numel() == 0:
        return a_nd.new_zeros(0)
    ones = torch.ones_like(rows, dtype=a_nd.dtype)
    pattern = _csr(rows, cols, ones, (a_nd.shape[0], b_kd.shape[0]))
    try:
        return torch.sparse.sampled_addmm(pattern, a_nd, b_kd.t(), beta=0.0, alpha=1.0).values()
    except (RuntimeError, NotImplementedError):  # a build without sampled_addmm for this device
        return sddmm_gather(rows, cols, a_nd, b_kd)


def sddmm_gather(rows, cols, a_nd, b_kd, chunk: int = 4096) -> torch.Tensor:
    """:func:`sddmm` by gathering rows in chunks (the fallback, and the test's second opinion)."""
    out = a_nd.new_empty(rows.numel())
    for s in range(0, rows.numel(), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        out[s:s + chunk] = torch.einsum("nd,nd->n", a_nd.index_select(0, r), b_kd.index_select(0, c))
    return out


def batch_topk_entries(pre_bf: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positive entries of the top-``n`` of the flattened non-negative ``pre_bf`` (BatchTopK's
    ``flatten().topk(k * B)``), as ``(rows, cols, values)`` sorted by (row, col).

    A full top-k over ``B x dict_size`` values is slow; the ``n``-th largest value is first
    estimated from a strided sample, every value at or above the estimate is collected (a count
    check guarantees there are at least ``n``; otherwise the estimate is lowered, and the exact
    full top-k is the last resort), and the top-``n`` is taken among those candidates. The result
    is the same set as the full top-k (ties at the boundary, as in ``torch.topk``, in any order)."""
    B, F = pre_bf.shape
    total = B * F
    if n >= total:
        return _entries_above(pre_bf, 0.0, strict=True)
    sample_size = min(total, max(1 << 16, 64 * n // max(1, F // 64)))
    stride = max(1, total // sample_size)
    while math.gcd(stride, F) != 1:  # a stride sharing a factor with F would sample few columns
        stride += 1
    sample = pre_bf.reshape(-1)[::stride]
    expect = n * sample.numel() / total
    for margin in (1.0, 4.0, 32.0):
        r = min(sample.numel(), int(expect * 1.25 + margin * (5 * math.sqrt(expect) + 16)))
        tau = float(sample.topk(r, sorted=False).values.min())
        if tau <= 0.0:  # the n-th largest is 0: every positive value is in the top-n, zeros add nothing
            rows, cols, vals = _entries_above(pre_bf, 0.0, strict=True)
            if vals.numel() <= n:
                return rows, cols, vals
            break
        rows, cols, vals = _entries_above(pre_bf, tau, strict=False)
        if vals.numel() >= n:
            break
    else:  # the estimate never reached n candidates: the exact full top-k
        top = pre_bf.reshape(-1).topk(n, sorted=False)
        keep = top.values > 0
        flat = top.indices[keep]
        order = torch.argsort(flat)
        flat = flat[order]
        return flat // F, flat % F, top.values[keep][order]
    top = vals.topk(n, sorted=False).indices.sort().values  # back to (row, col) order
    # every candidate is >= tau > 0: no zero to drop (a boolean mask would cost a device sync)
    return rows[top], cols[top], vals[top]


def _entries_above(pre_bf: torch.Tensor, tau: float, strict: bool):
    """(rows, cols, values) of the entries of ``pre_bf`` above (or at) ``tau``, scanned in row chunks."""
    rows, cols, vals = [], [], []
    mask = torch.empty((min(_SCAN_ROWS, pre_bf.shape[0]), pre_bf.shape[1]), dtype=torch.bool, device=pre_bf.device)
    for s in range(0, pre_bf.shape[0], _SCAN_ROWS):
        block = pre_bf[s:s + _SCAN_ROWS]
        m = mask[: block.shape[0]]  # one mask buffer for every chunk (no fresh allocation per chunk)
        (torch.gt if strict else torch.ge)(block, tau, out=m)
        idx = torch.nonzero(m)
        rows.append(idx[:, 0] + s)
        cols.append(idx[:, 1])
        vals.append(block[idx[:, 0], idx[:, 1]])
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def row_topk_entries(pre_bf: torch.Tensor, k: int, cols_allowed: torch.Tensor | None = None):
    """Per-row top-``k`` of ``pre_bf`` (over the columns ``cols_allowed`` when given), chunked:
    ``(rows, cols, values)`` of every selected entry, sorted by row, zeros included."""
    B = pre_bf.shape[0]
    rows, cols, vals = [], [], []
    for s in range(0, B, _SCAN_ROWS):
        block = pre_bf[s:s + _SCAN_ROWS]
        if cols_allowed is not None:
            block = block.index_select(1, cols_allowed)
        top = block.topk(k, dim=1, sorted=False)
        c = top.indices if cols_allowed is None else cols_allowed[top.indices]
        order = torch.argsort(c, dim=1)  # (row, col) order inside each row
        rows.append(torch.arange(s, s + block.shape[0], device=pre_bf.device).repeat_interleave(k))
        cols.append(c.gather(1, order).reshape(-1))
        vals.append(top.values.gather(1, order).reshape(-1))
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


# -- layout ----------------------------------------------------------------------------------

def _latent_major(t: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """The same values stored with each latent's d-vector contiguous (``latent_dim``: the axis of
    length dict_size)."""
    return t.contiguous() if latent_dim == 0 else t.t().contiguous().t()


def _latent_params(ae, arch: str) -> list[tuple[torch.nn.Parameter, int]]:
    """Each weight matrix with the axis that indexes latents."""
    if spec(arch).layout == "matrix":
        return [(ae.W_enc, 1), (ae.W_dec, 0)]
    return [(ae.encoder.weight, 0), (ae.decoder.weight, 1)]


def relayout(trainer: Any, arch: str) -> None:
    """Store every weight matrix of ``trainer`` and its Adam moments latent-major (one contiguous
    d-vector per latent), the order the sparse products read. Values, shapes and state-dict keys
    are unchanged; only the memory order differs (dictionary_learning's BatchTopK encoder, for
    one, starts as a transposed clone of the decoder; saved weights are made contiguous)."""
    for p, latent_dim in _latent_params(trainer.ae, arch):
        p.data = _latent_major(p.data, latent_dim)
        state = trainer.optimizer.state.get(p, {})
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)


def _grad_for(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g`` in the memory order of ``p`` (torch's fused Adam reads param, grad and moments as one
    flat layout, so they must agree)."""
    return g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)


# -- the engine --------------------------------------------------------------------------------

class SparseEngine:
    """Runs ``trainer.update(step, x)``'s arithmetic for a TopK / BatchTopK / Matryoshka trainer of
    dictionary_learning with sparse codes. ``matmul_dtype`` (bf16 under ``--autocast bf16``) is the
    precision of the encoder GEMM only; weights, Adam state and every sparse product stay fp32."""

    def __init__(self, trainer: Any, arch: str, matmul_dtype: torch.dtype | None = None,
                 fused_adam: bool = True):
        if not covers(arch):
            raise ValueError(f"the sparse engine does not train {arch}")
        self.trainer, self.arch, self.matmul_dtype = trainer, arch, matmul_dtype
        self.spec = spec(arch)
        # per-row top-k (TopK) or a top-k over the whole batch (BatchTopK, Matryoshka)
        self.per_row = self.spec.activation == "row_top_k"
        self.fused_adam = fused_adam
        self._buffers: dict[str, torch.Tensor] = {}
        self._k = int(trainer.ae.k)  # a buffer on the device; read once, not once per step
        self._group_cache: dict[int, tuple[list[int], list[float]]] = {}
        relayout(trainer, arch)

    # the four parameters as latent-major (dict_size x d) views and the two bias vectors
    def _weights(self):
        ae = self.trainer.ae
        if self.spec.layout == "matrix":
            return ae.W_enc.t(), ae.b_enc, ae.W_dec, ae.b_dec
        return ae.encoder.weight, ae.encoder.bias, ae.decoder.weight.t(), ae.b_dec

    def _groups(self) -> tuple[list[int], list[float]]:
        """Matryoshka's prefix boundaries (active groups) and loss weights; one group otherwise."""
        ae = self.trainer.ae
        if not self.spec.grouped:
            return [0, ae.dict_size], [1.0]
        active = int(ae.active_groups)
        if active not in self._group_cache:  # read from the device once per number of active groups
            self._group_cache[active] = ([int(b) for b in ae.group_indices[: active + 1]],
                                         [float(w) for w in self.trainer.group_weights[: active]])
        return self._group_cache[active]

    def _buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype=None) -> torch.Tensor:
        """A tensor kept across steps (pre-activations, weight gradients), reallocated only when its
        shape, dtype or device changes."""
        dtype = dtype or like.dtype
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device=like.device)
        return buf

    def _init_b_dec(self, x: torch.Tensor) -> None:
        tr, ae = self.trainer, self.trainer.ae
        if self.per_row:  # dictionary_learning's TopKTrainer has it as a module function
            from dictionary_learning.trainers.top_k import geometric_median
            median = geometric_median(x)
        else:
            median = tr.geometric_median(x)
        ae.b_dec.data = median.to(ae.b_dec.dtype)

    def update(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """One optimiser step on batch ``x`` (already normalised); returns the loss as a 0-d tensor
        on the device (``float()`` it to read it: dictionary_learning's ``update`` returns a float,
        which forces a host-device synchronisation every step)."""
        device_type = x.device.type
        with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
            return self._update(step, x)

    def _update(self, step: int, x: torch.Tensor) -> torch.Tensor:
        tr, ae = self.trainer, self.trainer.ae
        if step == 0:
            self._init_b_dec(x)
        x = x.to(tr.device).float()
        B, F = x.shape[0], ae.dict_size
        W_enc, b_enc, W_dec, b_dec = self._weights()

        # encoder: the one dense GEMM; relu in place
        xc = x - b_dec
        md = self.matmul_dtype or x.dtype
        pre = self._buffer("pre", (B, F), x, md)
        if md != x.dtype:
            torch.mm(xc.to(md), W_enc.to(md).t(), out=pre)
        else:
            torch.mm(xc, W_enc.t(), out=pre)
        pre.add_(b_enc.to(md)).relu_()

        # sparse codes, the threshold and the dead-latent counter, by the trainer's own rules
        k = self._k
        if self.per_row:
            rows, cols, vals = row_topk_entries(pre, k)
            fired_cols = cols
            if step > tr.threshold_start_step:
                tr.update_threshold(vals.view(B, k).float())
            tr.effective_l0 = k
        else:
            rows, cols, vals = batch_topk_entries(pre, k * B)
            bounds, _ = self._groups()
            if bounds[-1] < F:  # Matryoshka codes past the active groups are zeroed
                keep = cols < bounds[-1]
                rows, cols, vals = rows[keep], cols[keep], vals[keep]
            fired_cols = cols
            if step > tr.threshold_start_step:
                tr.update_threshold(vals.float())
            tr.effective_l0 = tr.k
        if self.per_row:  # a row's top-k can hold zeros; the batch top-k holds positive values only
            keep = vals > 0
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        vals = vals.float()
        tr.num_tokens_since_fired += B
        tr.num_tokens_since_fired[fired_cols] = 0

        # reconstructions: one prefix per Matryoshka group (one group otherwise)
        bounds, weights = self._groups()
        G = len(weights)
        group = torch.bucketize(cols, torch.tensor(bounds[1:-1], device=cols.device), right=True)
        srows = group * B + rows  # row of the stacked (G x B) partial reconstructions
        if G > 1:  # group-major, then by row
            order = torch.argsort(srows, stable=True)
            srows, scols, svals, sbatch = srows[order], cols[order], vals[order], rows[order]
        else:  # already in (row, col) order
            scols, svals, sbatch = cols, vals, rows
        partial_gbd = spmm(srows, scols, svals, W_dec, G * B).view(G, B, -1)
        recon = b_dec + partial_gbd.cumsum(0)  # x_reconstruct after each group
        err_gbd = x - recon
        l2_g = err_gbd.pow(2).sum(-1).mean(-1)  # mean over the batch of ||x - x_hat_g||^2
        if self.spec.grouped:
            w = torch.tensor(weights, device=x.device)
            main_loss = (l2_g * w).mean()
            coef = w / G  # d main_loss / d l2_g
        else:
            main_loss = l2_g[0]
            coef = torch.ones(1, device=x.device)
        # d loss / d (the reconstruction after group g); a code of group h reaches every g >= h
        grad_gbd = (-2.0 / B) * coef[:, None, None] * err_gbd
        grad_gbd = grad_gbd.flip(0).cumsum(0).flip(0)
        residual = err_gbd[-1]

        # AuxK over the dead latents (dictionary_learning's get_auxiliary_loss)
        aux_loss, aux = 0.0, None
        if not self.per_row or tr.auxk_alpha > 0:  # TopKTrainer weighs its AuxK loss by auxk_alpha
            dead = tr.num_tokens_since_fired >= tr.dead_feature_threshold
            tr.dead_features = int(dead.sum())
            if tr.dead_features > 0:
                k_aux = min(tr.top_k_aux, tr.dead_features)
                arows, acols, avals = row_topk_entries(pre, k_aux, torch.nonzero(dead).view(-1))
                pos = avals > 0
                arows, acols, avals = arows[pos], acols[pos], avals[pos].float()
                x_aux = spmm(arows, acols, avals, W_dec, B)
                diff = residual - x_aux
                l2_aux = diff.pow(2).sum(-1).mean()
                denom = (residual - residual.mean(0)).pow(2).sum(-1).mean()
                tr.pre_norm_auxk_loss = l2_aux
                ratio = l2_aux / denom
                # nan_to_num(0.0) of a non-finite ratio, its gradient zeroed, without a host sync
                finite = torch.isfinite(ratio)
                aux_loss = torch.where(finite, ratio, torch.zeros((), device=x.device))
                aux = (arows, acols, avals,
                       torch.where(finite, -2.0 * tr.auxk_alpha / (B * denom), 0.0) * diff)
            else:
                tr.pre_norm_auxk_loss = -1
        loss = main_loss + tr.auxk_alpha * aux_loss

        # backward: code gradients (SDDMM), then the weight gradients (transposed SpMM)
        grad_nd = grad_gbd.reshape(G * B, -1)
        erows, ecols, evals, ebatch = srows, scols, svals, sbatch
        if aux is not None:
            arows, acols, avals, grad_aux = aux
            erows = torch.cat([erows, arows + G * B])
            ecols = torch.cat([ecols, acols])
            evals = torch.cat([evals, avals])
            ebatch = torch.cat([ebatch, arows])
            grad_nd = torch.cat([grad_nd, grad_aux])
        # everything latent-major from here: entries sorted by latent
        by_latent = torch.argsort(ecols, stable=True)
        lat, erows, evals, ebatch = ecols[by_latent], erows[by_latent], evals[by_latent], ebatch[by_latent]
        dcode = sddmm(lat, erows, W_dec, grad_nd)  # d loss / d code (= d pre: ReLU passes, code > 0)
        g_W_dec = spmm(lat, erows, evals, grad_nd, F, out=self._buffer("g_W_dec", (F, W_dec.shape[1]), W_dec))
        g_W_enc = spmm(lat, ebatch, dcode, xc, F, out=self._buffer("g_W_enc", (F, W_dec.shape[1]), W_dec))
        g_b_enc = torch.zeros(F, device=x.device).index_add_(0, lat, dcode)
        g_b_dec = grad_gbd[0].sum(0) - g_b_enc @ W_enc

        # dictionary_learning's update after loss.backward(). remove_gradient_parallel_to_decoder_
        # directions: g -= <g, w/(|w|+1e-6)> w/(|w|+1e-6), per latent, in place
        rowdot = torch.bmm(g_W_dec.unsqueeze(1), W_dec.unsqueeze(2)).view(-1)
        scale = rowdot / (W_dec.norm(dim=1) + 1e-6).pow(2)
        g_W_dec.addcmul_(W_dec, scale.unsqueeze(1), value=-1.0)
        self._set_grads(g_W_enc, g_b_enc, g_W_dec, g_b_dec)
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        self._adam_step()
        tr.optimizer.zero_grad()
        tr.scheduler.step()
        W_dec = self._weights()[2]
        W_dec /= W_dec.norm(dim=1, keepdim=True) + torch.finfo(W_dec.dtype).eps  # set_decoder_norm_to_unit_norm
        return loss.detach()

    def _adam_step(self) -> None:
        """The trainer's Adam step, by torch's fused kernel where the device has one: the same
        elementwise update in one pass over each tensor (the step is memory-bound once the products
        are sparse). The fused kernel copies a non-contiguous tensor, so a latent-major (transposed)
        matrix steps through a contiguous alias of the same storage (its moments likewise); the
        optimiser's parameters, state and flags are restored afterwards, so its saved state is the
        trainer's own."""
        opt = self.trainer.optimizer
        swaps = []
        if self.fused_adam:
            for group in opt.param_groups:
                for i, p in enumerate(group["params"]):
                    if p.dim() == 2 and not p.is_contiguous() and p.t().is_contiguous() and p.grad is not None:
                        alias = torch.nn.Parameter(p.data.t())
                        alias.grad = p.grad.t()
                        state = opt.state.pop(p, None)
                        if state:
                            opt.state[alias] = {k: v.t() if isinstance(v, torch.Tensor) and v.dim() == 2 else v
                                                for k, v in state.items()}
                        group["params"][i] = alias
                        swaps.append((group, i, p, alias))
        before = [g.get("fused") for g in opt.param_groups]
        try:
            if self.fused_adam:
                for g in opt.param_groups:
                    g["fused"] = True
            opt.step()
        finally:
            for g, f in zip(opt.param_groups, before):
                g["fused"] = f
            for group, i, p, alias in swaps:
                group["params"][i] = p
                state = opt.state.pop(alias, None)
                if state is not None:
                    opt.state[p] = {k: v.t() if isinstance(v, torch.Tensor) and v.dim() == 2 else v
                                    for k, v in state.items()}

    def _set_grads(self, g_W_enc, g_b_enc, g_W_dec, g_b_dec) -> None:
        """Gradients (latent-major) into ``.grad`` in each parameter's own shape and memory order."""
        ae = self.trainer.ae
        if self.spec.layout == "matrix":
            pairs = [(ae.W_enc, g_W_enc.t()), (ae.W_dec, g_W_dec), (ae.b_enc, g_b_enc)]
        else:
            pairs = [(ae.encoder.weight, g_W_enc), (ae.decoder.weight, g_W_dec.t()), (ae.encoder.bias, g_b_enc)]
        for p, g in pairs + [(ae.b_dec, g_b_dec)]:
            p.grad = _grad_for(p, g)
