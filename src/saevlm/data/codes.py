"""The sparse SAE-code store: the store layout of docs/store-format.md with CSR shards.

Specified in docs/codes-format.md. Each shard ``i`` holds ``codes_XXXXX.indptr.npy`` (int64,
rows + 1, starting at 0), ``codes_XXXXX.indices.npy`` (int32 latent ids, increasing within a
row) and ``codes_XXXXX.values.npy`` (float32), plus the usual ``rows_XXXXX.npy``. The manifest
is an activation-store manifest with ``format: "saevlm-codes"``, ``dim`` = dictionary size and
``nnz`` per shard; ``provenance`` is the activations' provenance plus ``sae``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from saevlm.data.atomic import atomic_save_npy
from saevlm.data.store import ActivationStore
from saevlm.data.writer import StoreWriter
from saevlm.errors import UserError

CODES_FORMAT = "saevlm-codes"


@dataclass
class CSRChunk:
    """Rows ``[start, start + n)`` of a code matrix in CSR form (indptr starts at 0)."""

    start: int
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    num_cols: int

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    def row_ids(self) -> np.ndarray:
        """Local row index of every stored value."""
        return np.repeat(np.arange(self.num_rows), np.diff(self.indptr))

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.num_rows, self.num_cols), dtype=np.float32)
        out[self.row_ids(), self.indices] = self.values
        return out


def dense_to_csr(codes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dense torch or numpy [n, K] matrix -> (indptr int64, indices int32, values float32)."""
    import torch

    t = torch.as_tensor(codes)
    rows, cols = torch.nonzero(t, as_tuple=True)  # row-major order: rows sorted, cols increasing
    values = t[rows, cols].float().cpu().numpy()
    counts = torch.bincount(rows, minlength=t.shape[0]).cpu().numpy()
    indptr = np.zeros(t.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, cols.cpu().numpy().astype(np.int32), values


class CSRParts(list):
    """A shard of codes already in CSR form: (indptr, indices, values) triples from
    :func:`dense_to_csr`, in row order (what :meth:`CodeStoreWriter.write_shard` takes besides
    dense activations)."""


class CodeStoreWriter(StoreWriter):
    """A StoreWriter whose shards are SAE codes: dense activations in, CSR out.

    ``encode`` maps a float32 [n, d] numpy array to dense codes [n, K] (a torch tensor); it is
    applied in sub-batches of ``encode_rows`` rows so memory stays bounded for wide SAEs.
    """

    FORMAT = CODES_FORMAT

    def __init__(self, path, *, encode: Callable, input_dim: int, encode_rows: int = 1024, **kwargs):
        self.encode = encode
        self.input_dim = int(input_dim)
        self.encode_rows = encode_rows
        super().__init__(path, **kwargs)

    def write_shard(self, index: int, payload, rows_n2: np.ndarray, first_image: int, num_images: int,
                    skipped=(), images_n2: np.ndarray | None = None) -> None:
        """Write shard ``index``: ``payload`` is dense activations [n, d] that the SAE encodes here,
        or :class:`CSRParts`, codes computed elsewhere (e.g. mean-pooled over tokens)."""
        if not isinstance(payload, CSRParts):
            return super().write_shard(index, payload, rows_n2, first_image, num_images, skipped, images_n2)
        self._precomputed = payload
        try:
            # a zero-stride placeholder of the right shape: the base class checks shapes only
            placeholder = np.broadcast_to(np.float32(0), (len(rows_n2), self.input_dim))
            super().write_shard(index, placeholder, rows_n2, first_image, num_images, skipped, images_n2)
        finally:
            self._precomputed = None

    def _write_payload(self, i: int, acts_nd: np.ndarray, rows_n2: np.ndarray) -> tuple[dict, dict, tuple | None]:
        indptrs, indices, values = [np.zeros(1, dtype=np.int64)], [], []
        offset = 0
        parts = getattr(self, "_precomputed", None)
        if parts is None:
            parts = (dense_to_csr(self.encode(acts_nd[s:s + self.encode_rows]))
                     for s in range(0, len(acts_nd), self.encode_rows))
        for p, ix, v in parts:
            indptrs.append(p[1:] + offset)
            offset += int(p[-1])
            indices.append(ix)
            values.append(v)
        indptr = np.concatenate(indptrs)
        ix = np.concatenate(indices) if indices else np.zeros(0, np.int32)
        v = np.concatenate(values) if values else np.zeros(0, np.float32)
        nonfinite = None
        if not np.isfinite(v).all():  # the row of each value is needed only to name the bad one
            row_of_value = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            count, first = self._refuse_nonfinite(i, v, rows_n2[row_of_value], "codes")
            nonfinite = (count, int(row_of_value[first]))
        base = f"codes_{i:05d}"
        files = {"indptr": f"{base}.indptr.npy", "indices": f"{base}.indices.npy", "values": f"{base}.values.npy"}
        checksums = {files["indptr"]: atomic_save_npy(self.path / files["indptr"], indptr),
                     files["indices"]: atomic_save_npy(self.path / files["indices"], ix),
                     files["values"]: atomic_save_npy(self.path / files["values"], v)}
        return {**files, "nnz": int(len(v))}, checksums, nonfinite

    def finalize(self, extra: dict | None = None) -> None:
        nnz = sum(int(s["nnz"]) for s in self.manifest["shards"])  # the writer's own working manifest
        super().finalize({"nnz": nnz, **(extra or {})})


class CodeStore(ActivationStore):
    """Read-only view of a code store; ``iter_csr`` streams CSR chunks without densifying.

    The integrity checks of :class:`ActivationStore` apply to its CSR files; the first use of a
    shard also checks that ``indptr`` runs from 0 to ``nnz`` without decreasing and that every
    latent id lies in ``[0, dict_size)``."""

    FORMAT = CODES_FORMAT
    PAYLOAD_KEYS = ("indptr", "indices", "values", "nnz")

    @property
    def dict_size(self) -> int:
        """The SAE's dictionary size: the number of latents (the manifest's ``dim``)."""
        return self.dim

    @property
    def nnz(self) -> int:
        return sum(int(s.nnz or 0) for s in self.manifest.shards)

    def _expected_layout(self, i: int) -> dict:
        s = self.manifest.shards[i]
        n, nnz = s.num_rows, int(s.nnz or 0)
        out = {s.indptr: ((n + 1,), np.dtype(np.int64)), s.indices: ((nnz,), np.dtype(np.int32)),
               s.values: ((nnz,), np.dtype(np.float32)), s.rows_file: ((n, 2), np.dtype(np.int64))}
        if s.images_file:
            out[s.images_file] = ((s.num_images, 2), np.dtype(np.int64))
        return out

    def _payload_files(self, i: int) -> list[str]:
        s = self.manifest.shards[i]
        return [s.values, s.indices, s.indptr]

    def shard_csr(self, i: int) -> CSRChunk:
        if i not in self._mmaps:
            s = self.manifest.shards[i]
            indptr, indices, values = (self._load(i, name) for name in (s.indptr, s.indices, s.values))
            self._check_csr(i, indptr, indices, values)  # once: the chunk is cached below
            self._mmaps[i] = CSRChunk(self.shards[i].row_start, indptr, indices, values, self.dict_size)
        return self._mmaps[i]

    def _check_csr(self, i: int, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        s = self.manifest.shards[i]
        if int(indptr[0]) != 0 or int(indptr[-1]) != len(values) or bool((np.diff(indptr) < 0).any()):
            raise self._damaged(i, s.indptr, f"is not a valid CSR row index (runs from {int(indptr[0])} "
                                                f"to {int(indptr[-1])} over {len(values)} values)")
        for a in range(0, len(indices), 1 << 24):
            block = indices[a:a + (1 << 24)]
            lo, hi = (int(block.min()), int(block.max())) if len(block) else (0, 0)
            if lo < 0 or hi >= self.dict_size:
                bad = a + int(np.flatnonzero((block < 0) | (block >= self.dict_size))[0])
                row = int(np.searchsorted(indptr, bad, side="right")) - 1
                raise self._damaged(i, s.indices, f"holds latent id {int(indices[bad])} at row "
                                                     f"{self.shards[i].row_start + row}, outside the "
                                                     f"dictionary [0, {self.dict_size})")
        self._check_finite_values(i, s.values, values, indptr)

    def _check_finite_values(self, i: int, name: str, values: np.ndarray, indptr: np.ndarray) -> None:
        if self.allow_nonfinite:
            return
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            row = int(np.searchsorted(indptr, int(bad[0]), side="right")) - 1
            img, tok = (int(v) for v in np.asarray(self.shard_rows(i)[row]))
            raise UserError(f"{self.field} {self.path}: shard {i} ({name}) holds {len(bad)} non-finite codes "
                            f"(NaN/inf), first at row {self.shards[i].row_start + row} (image {img}, "
                            f"token {tok}); pass --allow_nonfinite to use them anyway", field=self.field)

    def iter_csr(self, chunk_rows: int = 65536) -> Iterator[CSRChunk]:
        """CSR chunks of at most ``chunk_rows`` rows, in row order (never crossing a shard)."""
        for i in range(len(self.shards)):
            sh = self.shard_csr(i)
            for a in range(0, sh.num_rows, chunk_rows):
                b = min(a + chunk_rows, sh.num_rows)
                lo, hi = int(sh.indptr[a]), int(sh.indptr[b])
                yield CSRChunk(sh.start + a, np.asarray(sh.indptr[a:b + 1]) - lo,
                               np.asarray(sh.indices[lo:hi]), np.asarray(sh.values[lo:hi]), self.dict_size)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` densified (for small reads; use iter_csr for streaming)."""
        start, stop = max(0, start), min(stop, self.num_rows)
        out = np.zeros((stop - start, self.dict_size), dtype=np.float32)
        for chunk in self.iter_csr():
            a, b = max(start, chunk.start), min(stop, chunk.start + chunk.num_rows)
            if a < b:
                out[a - start:b - start] = chunk.to_dense()[a - chunk.start:b - chunk.start]
        return out

    def shard_dense(self, i: int) -> np.ndarray:
        """Shard ``i`` as a dense float32 [rows, dict_size] array (memory: rows x dict_size x 4)."""
        return self.shard_csr(i).to_dense()

    def shard_array(self, i: int) -> np.ndarray:
        """Densifies: prefer :meth:`shard_csr`, or :meth:`shard_dense` to say so."""
        return self.shard_dense(i)

    def _check_payload(self, i: int) -> None:
        self.shard_csr(i)
