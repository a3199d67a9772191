"""The activation store: a directory of ``.npy`` shards plus ``manifest.json``.

The format is specified in ``docs/store-format.md``; any divergence of this code from that
document is a bug. In short:

- ``manifest.json`` holds the schema version, ``complete``, shape, dtype, the ordered shard list
  and the provenance (model, hook point, layer, token selection, dataset, image order).
- ``acts_XXXXX.npy`` are ``[rows, dim]`` arrays; concatenated in manifest order they are the
  ``N x dim`` matrix. ``rows_XXXXX.npy`` are ``[rows, 2]`` int64: (image index in the dataset
  order, token index; -1 for a pooled row).
- Shards are written under a temporary name and renamed; the manifest (also replaced
  atomically) lists only complete shards, so a reader never sees a partial shard and a store
  with ``complete: false`` is never taken for a finished one.

Only numpy is needed to read a store (``numpy.load(..., mmap_mode="r")``); bf16 is stored as
the raw ``uint16`` bit pattern and widened to float32 on read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from saevlm.data.manifest import SCHEMA_VERSION, DatasetInfo, Manifest, Provenance  # noqa: F401 (re-exported)
from saevlm.errors import UserError

FORMAT_NAME = "saevlm-activations"
MANIFEST = "manifest.json"
LOCK = ".saevlm.lock"
STORE_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                "bf16": "bfloat16", "bfloat16": "bfloat16"}
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


# ----------------------------------------------------------------------------- helpers
from saevlm.data.atomic import describe_os_error  # noqa: E402 - atomic writing lives in saevlm.data.atomic


def sha256_of_ints(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<i8").tobytes()).hexdigest()


def normalize_store_dtype(name: str, field: str = "dtype") -> str:
    try:
        return STORE_DTYPES[name.lower()]
    except KeyError:
        raise UserError(f"{field} {name!r}: expected one of fp32, fp16, bf16", field=field) from None


def encode_for_storage(acts: np.ndarray, dtype: str) -> np.ndarray:
    """float32 activations -> the stored representation of ``dtype``."""
    acts = np.ascontiguousarray(acts, dtype=np.float32)
    if dtype == "float32":
        return acts
    if dtype == "float16":
        return acts.astype(np.float16)
    if dtype == "bfloat16":
        # Round to nearest even on the upper 16 bits of the IEEE float32 pattern; NaN stays NaN.
        bits = acts.view(np.uint32)
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
        out = (rounded >> np.uint32(16)).astype(np.uint16)
        nan = np.isnan(acts)
        if nan.any():
            out[nan] = np.uint16(0x7FC0)
        return out
    raise ValueError(dtype)


def decode_from_storage(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored representation -> float32 (a new array)."""
    if dtype == "bfloat16":
        return (np.asarray(stored, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.array(stored, dtype=np.float32)  # always a copy: never a view of a read-only memmap


def _finite_mask(block: np.ndarray, dtype: str) -> np.ndarray:
    """Per-element "is finite" of stored values (bf16 bits: exponent not all ones)."""
    if dtype == "bfloat16":
        return (np.asarray(block, dtype=np.uint16) & np.uint16(0x7F80)) != np.uint16(0x7F80)
    return np.isfinite(block)


def _nonfinite_rows(values: np.ndarray, dtype: str, block_rows: int = 16384) -> np.ndarray:
    """Local indices of rows holding NaN / inf (scanned in blocks: bounded memory)."""
    out = []
    for a in range(0, len(values), block_rows):
        ok = _finite_mask(values[a:a + block_rows], dtype)
        rows_ok = ok.all(axis=tuple(range(1, ok.ndim))) if ok.ndim > 1 else ok
        if not rows_ok.all():
            out.append(a + np.flatnonzero(~rows_ok))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _count_nonfinite(values: np.ndarray, dtype: str, block_rows: int = 16384) -> int:
    return int(sum(int((~_finite_mask(values[a:a + block_rows], dtype)).sum())
                   for a in range(0, len(values), block_rows)))


# ----------------------------------------------------------------------------- manifest
def read_manifest(path: Path, field: str) -> dict:
    """``manifest.json`` as a dict, or a UserError saying what is wrong with it."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"{field} {path}: cannot read ({describe_os_error(err)})", field=field) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{field} {path}: damaged, not valid JSON ({e}); re-create the store, e.g. "
                        f"rerun its command with --overwrite", field=field) from None
    if not isinstance(manifest, dict):
        raise UserError(f"{field} {path}: damaged, expected a JSON object, found a "
                        f"{type(manifest).__name__}; re-create the store with --overwrite", field=field)
    return manifest


STORAGE_DTYPE_NAMES = {k: np.dtype(v).name for k, v in _STORAGE.items()}


def parse_manifest(m: dict, path: Path, field: str, fmt: str, payload_keys: Sequence[str]) -> Manifest:
    """The typed :class:`~saevlm.data.manifest.Manifest`, or one line naming the bad key."""
    return Manifest.from_json(m, path, field, fmt, payload_keys, STORAGE_DTYPE_NAMES)



# ----------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows_file: str
    num_rows: int
    first_image: int  # position in the selected image list
    num_images: int
    row_start: int  # global row offset of this shard


def resolve_store_path(path: str | os.PathLike, field: str = "store") -> Path:
    """The store directory ``path`` names: itself when it holds a manifest, else its single child
    that does. The authors' ``--output_dir`` of save_activations.py IS the store; saevlm's extract
    writes ``<output_dir>/<point>/``, so their later ``--activations_dir <output_dir>`` lands here."""
    p = Path(path)
    if (p / MANIFEST).is_file() or not p.is_dir():
        return p
    children = sorted(c for c in p.iterdir() if c.is_dir() and (c / MANIFEST).is_file())
    if len(children) == 1:
        print(f"note: {field} {p}: using the store it holds, {children[0].name}/", file=sys.stderr)
        return children[0]
    if len(children) > 1:
        raise UserError(f"{field} {p}: holds {len(children)} stores ({', '.join(c.name for c in children)}); "
                        f"name one of them", field=field)
    return p


def verify_enabled() -> bool:
    """Checksums are verified on first use unless ``SAEVLM_VERIFY=0`` (sizes, headers, dtypes and
    shapes are checked always)."""
    return os.environ.get("SAEVLM_VERIFY", "1").strip().lower() not in ("0", "false", "no", "off")


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from an ``.npy`` file's header, without reading its data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = reader(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(int(n) for n in shape), dtype, f.tell()


class ActivationStore:
    """Read-only view of a store; nothing is loaded into RAM beyond what is asked for.

    Trust (docs/store-format.md, "Integrity"): opening checks the manifest's keys and types and,
    for every listed file, that it exists with the recorded size and an ``.npy`` header whose
    dtype and shape agree with the manifest. The first read of a file in this process also
    checks its CRC-32 against the manifest (``SAEVLM_VERIFY=0`` turns that off) and scans its
    values: NaN / inf are refused, naming the shard and first row, unless ``allow_nonfinite``.

    Parameters
    ----------
    path:
        The store directory (the one holding ``manifest.json``).
    allow_incomplete:
        Open a store whose writer has not finished (``complete: false``); only its complete
        shards are visible. Off by default so a partial store is never mistaken for a finished one.
    allow_nonfinite:
        Read NaN / inf values instead of refusing them.
    """

    FORMAT = FORMAT_NAME
    PAYLOAD_KEYS: tuple[str, ...] = ("file",)

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False, field: str = "store",
                 allow_nonfinite: bool = False):
        self.path = resolve_store_path(path, field)
        self.field = field
        self.allow_nonfinite = allow_nonfinite
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            what = "does not exist" if not self.path.exists() else f"has no {MANIFEST}"
            raise UserError(f"{field} {self.path}: {what}; expected a saevlm store directory "
                            f"(written by `saevlm extract` / `saevlm embed`)", field=field)
        raw_manifest = read_manifest(manifest_path, field)
        self.manifest: Manifest = parse_manifest(raw_manifest, manifest_path, field, self.FORMAT, self.PAYLOAD_KEYS)
        m = self.manifest
        if not m.complete and not allow_incomplete:
            raise UserError(
                f"{field} {self.path}: the store is incomplete (its writer stopped after "
                f"{len(m.shards)} shard(s)). Rerun the same command to resume it.", field=field)
        self.dtype: str = m.dtype
        self.dim: int = m.dim
        self.shards: list[ShardInfo] = []
        offset = 0
        for s in m.shards:
            self.shards.append(ShardInfo(s.file or "", s.rows_file, s.num_rows, s.first_image, s.num_images,
                                         offset))
            offset += s.num_rows
        self.num_rows = offset
        self._starts = np.array([s.row_start for s in self.shards] + [offset], dtype=np.int64)
        self._mmaps: dict[int, np.ndarray] = {}
        self._verified: set[str] = set()
        self.has_checksums = all(s.has_checksums for s in m.shards)
        self._check_integrity(raw_manifest, manifest_path)

    # -- integrity
    def _check_integrity(self, raw_manifest: dict, manifest_path: Path) -> None:
        """Every check that needs no payload read: the shard list, each shard's files, the row
        total, the seal, and no non-finite values unless ``allow_nonfinite``."""
        m, field, offset = self.manifest, self.field, self.num_rows
        if m.shards and not self.has_checksums:
            print(f"note: {field} {self.path}: written without checksums (by an older saevlm); damage to its "
                  f"files cannot be detected beyond sizes and headers", file=sys.stderr)
        self._check_shard_list(manifest_path)
        for i in range(len(self.shards)):
            self._check_shard_files(i)  # names the shard whose row count disagrees, if one does
        if m.complete and offset != m.num_rows:
            raise UserError(f"{field} {manifest_path}: its shards list {offset} rows in all, but num_rows "
                            f"says {m.num_rows}; the manifest was edited or damaged", field=field)
        from saevlm.data.manifest import check_seal
        check_seal(raw_manifest, f"{field} {manifest_path}")
        if not self.allow_nonfinite:
            self._refuse_nonfinite()

    def _refuse_nonfinite(self) -> None:
        """A store whose writer kept NaN / inf (--allow_nonfinite) is read only when allowed again."""
        m, field = self.manifest, self.field
        nonfinite = m.nonfinite_shards()
        if nonfinite:
            i = nonfinite[0]
            raise UserError(f"{field} {self.path}: holds {sum(m.shards[j].nonfinite for j in nonfinite)} "
                            f"non-finite values (NaN/inf), first in shard {i} ({self._payload_files(i)[0]}) "
                            f"at row {self.shards[i].row_start + (m.shards[i].first_nonfinite_row or 0)}; "
                            f"pass --allow_nonfinite to use them anyway", field=field)

    def _check_shard_list(self, manifest_path: Path) -> None:
        """The manifest's shard list itself (cheap, no file read): entries numbered 0, 1, ... in
        order, no file listed twice, image ranges contiguous, and (complete stores) as many images
        as the manifest says. A duplicated or dropped entry would otherwise read the wrong rows."""
        m = self.manifest
        seen: dict[str, int] = {}
        next_image = m.shards[0].first_image if m.shards else 0
        for i, e in enumerate(m.shards):
            where = f"{self.field} {manifest_path}: shard entry {i}"
            if e.index != i:
                raise UserError(f"{where} is numbered {e.index}; entries must be 0, 1, 2, ... in order (one "
                                f"was duplicated, dropped or reordered: the manifest was edited or damaged)")
            for name in (*self._payload_files(i), e.rows_file):
                if name in seen:
                    raise UserError(f"{where} lists {name}, which shard {seen[name]} lists too; the manifest "
                                    f"was edited or damaged")
                seen[name] = i
            if e.first_image != next_image:
                raise UserError(f"{where} starts at image {e.first_image}, but the previous shard ends at "
                                f"{next_image}; a shard entry is missing or repeated (the manifest was edited)")
            next_image = e.first_image + e.num_images
        if m.complete and m.num_images is not None and m.shards:
            self._check_image_total(manifest_path)

    def _check_image_total(self, manifest_path: Path) -> None:
        """A complete store's num_images is what its shards cover (with or without the skipped)."""
        m = self.manifest
        listed = sum(e.num_images for e in m.shards)
        stored = listed - sum(len(e.skipped_images) for e in m.shards)
        if m.num_images not in (listed, stored):
            raise UserError(f"{self.field} {manifest_path}: its shards cover {listed} images, but num_images "
                            f"says {m.num_images}; the manifest was edited or damaged", field=self.field)

    def _payload_files(self, i: int) -> list[str]:
        return [self.manifest.shards[i].file or ""]

    def _expected_layout(self, i: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """file -> (shape, dtype) that shard ``i``'s files must have."""
        s = self.manifest.shards[i]
        out = {s.file: ((s.num_rows, self.dim), np.dtype(_STORAGE[self.dtype])),
               s.rows_file: ((s.num_rows, 2), np.dtype(np.int64))}
        if s.images_file:
            out[s.images_file] = ((s.num_images, 2), np.dtype(np.int64))
        return out

    def _damaged(self, i: int, name: str, what: str) -> UserError:
        return UserError(f"{self.field} {self.path}: shard {i} ({name}) {what}; the store is damaged, "
                         f"re-create it (rerun its command with --overwrite)", field=self.field)

    def _check_shard_files(self, i: int) -> None:
        """Existence, size, header, dtype and shape of shard ``i``'s files (cheap: stat + header)."""
        sums = self.manifest.shards[i].checksums
        for name, (shape, dtype) in self._expected_layout(i).items():
            f = self.path / name
            if not f.is_file():
                raise self._damaged(i, name, "is missing")
            size = f.stat().st_size
            if name in sums and size != int(sums[name]["bytes"]):
                raise self._damaged(i, name, f"has {size} bytes, the manifest recorded {sums[name]['bytes']} "
                                             f"(truncated or overwritten)")
            self._check_npy_header(i, name, size, shape, dtype)

    def _check_npy_header(self, i: int, name: str, size: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """The .npy header's dtype and shape are what the manifest says, and the file holds them all."""
        try:
            got_shape, got_dtype, offset = npy_header(self.path / name)
        except (ValueError, OSError, SyntaxError) as err:
            raise self._damaged(i, name, f"has no valid .npy header ({err})") from None
        if got_dtype != dtype:
            raise self._damaged(i, name, f"holds {got_dtype} values, but the manifest's dtype "
                                         f"{self.dtype!r} is stored as {dtype}")
        if got_shape != shape:
            if len(got_shape) == 2 and got_shape[1:] == shape[1:] and got_shape[0] != shape[0]:
                raise self._damaged(i, name, f"holds {got_shape[0]} rows, the manifest says {shape[0]}")
            raise self._damaged(i, name, f"has shape {got_shape}, the manifest says {shape}")
        need = offset + int(np.prod(got_shape)) * got_dtype.itemsize
        if size != need:
            raise self._damaged(i, name, f"has {size} bytes, its header needs {need} (truncated)")

    def _verify_file(self, i: int, name: str) -> None:
        """CRC-32 of one file against the manifest, once per process."""
        if name in self._verified:
            return
        recorded = self.manifest.shards[i].checksums.get(name)
        if recorded is not None and verify_enabled():
            from saevlm.data.atomic import file_checksum
            got = file_checksum(self.path / name)
            if got["crc32"] != recorded["crc32"]:
                raise self._damaged(i, name, f"has CRC-32 {got['crc32']}, the manifest recorded "
                                             f"{recorded['crc32']} (its bytes changed after it was written)")
        self._verified.add(name)

    def _check_finite(self, i: int, name: str, values: np.ndarray) -> None:
        """Refuse NaN / inf (unless allowed), naming the shard and the first bad row (called once
        per shard: shard_array caches what it checked)."""
        if self.allow_nonfinite:
            return
        bad_rows = _nonfinite_rows(values, self.dtype)
        if len(bad_rows):
            first = int(bad_rows[0])
            img, tok = (int(v) for v in np.asarray(self.shard_rows(i)[first]))
            count = int(_count_nonfinite(values, self.dtype))
            raise UserError(f"{self.field} {self.path}: shard {i} ({name}) holds {count} non-finite values "
                            f"(NaN/inf), first at row {self.shards[i].row_start + first} (image {img}, "
                            f"token {tok}); pass --allow_nonfinite to use them anyway", field=self.field)

    def verify(self, progress: bool = False) -> int:
        """Check every shard now (checksums, values); returns the bytes checked."""
        from tqdm import tqdm

        total = 0
        for i in tqdm(range(len(self.shards)), desc="verify", unit="shard", disable=not progress,
                      file=sys.stderr):
            for name in self._expected_layout(i):
                self._verify_file(i, name)
                total += (self.path / name).stat().st_size
            self._check_payload(i)
            self.shard_rows(i)
            self.shard_images(i)
        self.labels()  # checks classes.json too
        self.classes()
        recorded = self.manifest.image_ids_sha256
        if recorded is not None and self.manifest.complete:
            got = sha256_of_ints(self.image_ids())
            if got != recorded:
                raise UserError(f"{self.field} {self.path}: the image ids its rows files hold hash to {got[:12]}..., "
                                f"the manifest recorded {recorded[:12]}... (image_ids_sha256); shards were "
                                f"swapped, copied or edited", field=self.field)
        return total

    def _check_payload(self, i: int) -> None:
        """Open shard ``i``'s data the way a reader does (value checks included)."""
        self.shard_array(i)

    # -- metadata
    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.dim)

    @property
    def num_neurons(self) -> int:
        """Columns scored as neurons: the activation width here, the dictionary size of codes."""
        return self.dim

    @property
    def provenance(self) -> Provenance:
        return self.manifest.provenance

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        hook = self.provenance.hook
        return (f"{type(self).__name__}({str(self.path)!r}, rows={self.num_rows}, dim={self.dim}, "
                f"dtype={self.dtype}, point={hook.attachment_point}, layer={hook.layer})")

    # -- raw access
    def _load(self, i: int, name: str) -> np.ndarray:
        self._verify_file(i, name)
        try:
            return np.load(self.path / name, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise self._damaged(i, name, f"cannot be read ({err})") from None

    def shard_array(self, i: int) -> np.ndarray:
        """The i-th shard, memory-mapped, in its storage dtype (checked on first use)."""
        if i not in self._mmaps:
            name = self.shards[i].file
            arr = self._load(i, name)
            self._check_finite(i, name, arr)
            self._mmaps[i] = arr
        return self._mmaps[i]

    def shard_rows(self, i: int) -> np.ndarray:
        return self._load(i, self.shards[i].rows_file)

    def shard_images(self, i: int) -> np.ndarray | None:
        """``[num_images, 2]`` int64 (dataset index, content hash) of shard ``i``'s images, or None
        for stores written before content hashes."""
        name = self.manifest.shards[i].images_file
        return None if not name else self._load(i, name)

    def image_hashes(self) -> np.ndarray | None:
        """(dataset index, content hash) of every selected image, in order; None if not recorded."""
        parts = [self.shard_images(i) for i in range(len(self.shards))]
        if not parts or any(p is None for p in parts):
            return None
        return np.concatenate([np.asarray(p) for p in parts])

    def row_index(self) -> np.ndarray:
        """``[N, 2]`` int64: (image index, token index) of every row (token -1 = pooled)."""
        if not self.shards:
            return np.zeros((0, 2), dtype=np.int64)
        return np.concatenate([np.asarray(self.shard_rows(i)) for i in range(len(self.shards))])

    def image_ids(self) -> np.ndarray:
        """The dataset index of each stored image, in store order (one entry per image)."""
        for i in range(len(self.shards)):
            self._verify_file(i, self.shards[i].rows_file)
        return _image_ids_of(self.path, [s.rows_file for s in self.manifest.shards])

    # -- the dataset's files beside the shards
    @property
    def dataset_files(self) -> "DatasetFiles":
        """labels.npy / classes.json, checked as shards are (:class:`DatasetFiles`)."""
        if not hasattr(self, "_dataset_files"):
            m = self.manifest
            self._dataset_files = DatasetFiles(self.path, m.files, m.file_checksums, m.schema_version,
                                               self.provenance.dataset.num_images_in_split, self.field)
        return self._dataset_files

    def labels(self) -> np.ndarray | None:
        return self.dataset_files.labels()

    def classes(self) -> dict | None:
        return self.dataset_files.classes()

    # -- float32 reads
    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new float32 array."""
        start, stop = max(0, start), min(stop, self.num_rows)
        parts = []
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        i = max(first, 0)
        while i < len(self.shards) and self._starts[i] < stop:
            lo = max(start, int(self._starts[i])) - int(self._starts[i])
            hi = min(stop, int(self._starts[i + 1])) - int(self._starts[i])
            parts.append(decode_from_storage(self.shard_array(i)[lo:hi], self.dtype))
            i += 1
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Sequential float32 chunks ``(start_row, rows)`` covering the store in order."""
        for start in range(0, self.num_rows, chunk_rows):
            yield start, self.read(start, start + chunk_rows)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order) as float32, reading each shard's rows in sorted order."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        shard_of = np.searchsorted(self._starts, sorted_idx, side="right") - 1
        bounds = np.searchsorted(shard_of, np.arange(len(self.shards) + 1))
        for i in range(len(self.shards)):
            a, b = bounds[i], bounds[i + 1]
            if a == b:
                continue
            local = sorted_idx[a:b] - self._starts[i]
            out[order[a:b]] = decode_from_storage(self.shard_array(i)[local], self.dtype)
        return out

    def random_batches(self, batch_size: int, seed: int = 0, start_step: int = 0) -> Iterator[np.ndarray]:
        """Endless shuffled batches (a new permutation each epoch), deterministic by ``seed``.

        ``start_step`` skips that many batches, so a resumed training run continues the same
        sequence. Rows within a batch come back in storage order (cheaper reads; the order
        inside a batch does not matter to an optimiser step).
        """
        for idx in self.random_batch_indices(batch_size, seed, start_step):
            yield self.gather(idx)

    def random_batch_indices(self, batch_size: int, seed: int = 0, start_step: int = 0) -> Iterator[np.ndarray]:
        """The sorted row indices of each batch of :meth:`random_batches` (the same sequence, for
        a copy of the store held elsewhere, e.g. on the GPU)."""
        if batch_size > self.num_rows:
            raise UserError(f"batch size {batch_size} exceeds the {self.num_rows} rows of {self.path}")
        per_epoch = self.num_rows // batch_size
        step = start_step
        while True:
            epoch, within = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(self.num_rows)
            for b in range(within, per_epoch):
                yield np.sort(perm[b * batch_size:(b + 1) * batch_size])
                step += 1


class DatasetFiles:
    """The dataset's files a store holds beside its shards: ``labels.npy`` (one int64 class index
    per image of the split, -1 = unlabelled) and ``classes.json``. Each is checked like a shard:
    listed by the manifest, its size and CRC-32 as recorded (once per process); labels also for
    dtype, shape and range against classes.json. A store of schema version 2 must have recorded a
    checksum for every such file it holds, so one dropped in later is refused."""

    def __init__(self, path: Path, files, file_checksums, schema_version: int, num_images_in_split: int | None,
                 field: str):
        self.path, self.files, self.checksums = Path(path), dict(files or {}), dict(file_checksums or {})
        self.schema_version, self.num_images_in_split, self.field = schema_version, num_images_in_split, field
        self._verified: set[str] = set()

    def file(self, name: str) -> Path | None:
        """``name`` checked like a shard: listed by the manifest, its size and CRC-32 as recorded.
        None when the store has no such file. A store of schema version 2 must have recorded a
        checksum for every such file it holds (one dropped in later is refused)."""
        from saevlm.data.manifest import SEALED_SINCE

        f = self.path / name
        listed = name in self.files.values()
        recorded = self.checksums.get(name)
        new_format = self.schema_version >= SEALED_SINCE
        if not f.is_file():
            if listed:
                raise UserError(f"{self.field} {self.path}: {name} is missing (the manifest lists it); the store "
                                f"is damaged, re-create it (rerun its command with --overwrite)", field=self.field)
            return None
        if recorded is None:
            if new_format:
                raise UserError(f"{self.field} {f}: not written with this store (the manifest records no checksum "
                                f"for it): it was copied in or the manifest edited; re-create the store (rerun "
                                f"its command with --overwrite)", field=self.field)
            return f
        if name in self._verified:
            return f
        from saevlm.data.atomic import file_checksum

        size = f.stat().st_size
        if size != int(recorded.get("bytes", -1)):
            raise UserError(f"{self.field} {f}: has {size} bytes, the manifest recorded {recorded.get('bytes')} "
                            f"(replaced or truncated); re-create the store (rerun its command with --overwrite)",
                            field=self.field)
        if verify_enabled():
            got = file_checksum(f)["crc32"]
            if got != recorded.get("crc32"):
                raise UserError(f"{self.field} {f}: has CRC-32 {got}, the manifest recorded {recorded.get('crc32')} "
                                f"(its bytes changed after the store was written); re-create the store (rerun "
                                f"its command with --overwrite)", field=self.field)
        self._verified.add(name)
        return f

    def classes(self) -> dict | None:
        """``classes.json`` (checked as above; a JSON object with a ``classes`` list), or None."""
        from saevlm.data.artifacts import CLASSES

        f = self.file(CLASSES)
        if f is None:
            return None
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{self.field} {f}: not valid JSON ({e})", field=self.field) from None
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise UserError(f"{self.field} {f}: expected a JSON object with a 'classes' list", field=self.field)
        return data

    def labels(self) -> np.ndarray | None:
        """``labels.npy``: one int64 class index per image of the dataset split (-1 = unlabelled),
        checked for its checksum, dtype, shape and range against classes.json; None when the store
        has none."""
        from saevlm.data.artifacts import LABELS

        f = self.file(LABELS)
        if f is None:
            return None
        try:
            labels = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{self.field} {f}: not a NumPy array file ({str(e).splitlines()[0][:120]}); "
                            f"expected one int64 class index per image", field=self.field) from None
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserError(f"{self.field} {f}: holds {labels.dtype} values of shape {labels.shape}, expected "
                            f"one integer class index per image", field=self.field)
        need = self.num_images_in_split
        if need is not None and len(labels) != need:
            raise UserError(f"{self.field} {f}: {len(labels)} labels, but the dataset split has {need} images",
                            field=self.field)
        if len(labels):
            self._check_label_range(f, labels)
        return labels.astype(np.int64, copy=False)

    def _check_label_range(self, f: Path, labels: np.ndarray) -> None:
        """Labels are -1 (unlabelled) or an index into classes.json's list."""
        classes = self.classes()
        lo, hi = int(labels.min()), int(labels.max())
        n_classes = len(classes["classes"]) if classes is not None else None
        if lo < -1 or (n_classes is not None and hi >= n_classes):
            raise UserError(f"{self.field} {f}: labels range over [{lo}, {hi}], but classes.json lists "
                            f"{n_classes} classes (expected -1 .. {(n_classes or 0) - 1})", field=self.field)


def _image_ids_of(path: Path, rows_files: Sequence[str]) -> np.ndarray:
    """Distinct image indices of a store's rows, in order (from its rows files)."""
    parts = [np.load(path / f, mmap_mode="r")[:, 0] for f in rows_files]
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = rows[1:] != rows[:-1]
    return rows[keep]


def check_same_images(a: ActivationStore, b: ActivationStore, what: str = "stores") -> None:
    """Refuse a pair of stores that do not describe the same images in the same order: same image
    list (file names), same stored images and, where recorded, the same picture content (a hash of
    each image file's bytes, docs/store-format.md)."""
    diff = a.provenance.compatible_with(b.provenance, aspects=("dataset",))
    if diff is not None:
        raise UserError(f"{what}: {a.path} and {b.path} come from different image lists "
                        f"(dataset {diff.key}: {diff.ours!r} vs {diff.theirs!r})")
    ma, mb = a.manifest, b.manifest
    if ma.image_ids_sha256 != mb.image_ids_sha256 or ma.num_images != mb.num_images:
        raise UserError(f"{what}: {a.path} ({ma.num_images} images) and {b.path} "
                        f"({mb.num_images} images) do not hold the same images in the "
                        f"same order (skipped images or --take_every differ)")
    ca, cb = ma.content_sha256, mb.content_sha256
    if ca is None or cb is None:
        old = [str(s.path) for s, c in ((a, ca), (b, cb)) if c is None]
        print(f"note: {what}: {', '.join(old)} written without image content hashes (by an older saevlm); "
              f"the pairing is checked by file names and order only", file=sys.stderr)
        return
    if ca != cb:
        raise _content_difference(a, b, what)


def _content_difference(a: ActivationStore, b: ActivationStore, what: str) -> UserError:
    """The error for two stores whose images have the same names but not the same bytes: how
    many differ, and the first (its dataset index and path, when the dataset is still on disk)."""
    ha, hb = a.image_hashes(), b.image_hashes()
    n = min(len(ha), len(hb))
    differ = np.flatnonzero((ha[:n] != hb[:n]).any(axis=1))
    first = int(differ[0]) if len(differ) else n
    index = int(ha[first, 0]) if first < len(ha) else -1
    name = _image_path(a.provenance.dataset, index)
    return UserError(f"{what}: {a.path} and {b.path} hold different pictures under the same file names: "
                    f"{len(differ)} of {n} images differ in content, the first at position {first} "
                    f"(dataset index {index}{', ' + name if name else ''}); re-extract one of them from "
                    f"the same images")


def _image_path(dataset: DatasetInfo, index: int) -> str | None:
    """The relative path of dataset image ``index`` when the dataset is still on disk (error
    messages only)."""
    try:
        from saevlm.data.images import open_dataset

        images = open_dataset(dataset.name, dataset.root, dataset.split)
        return images.name_of(index)
    except Exception:  # noqa: BLE001 - best effort: the message names the index anyway
        return None
