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

import datetime as _dt
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from saevlm.errors import UserError

FORMAT_NAME = "saevlm-activations"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STORE_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                "bf16": "bfloat16", "bfloat16": "bfloat16"}
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


# ----------------------------------------------------------------------------- helpers
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, then rename, so a crash never leaves a half shard."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_of_ints(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<i8").tobytes()).hexdigest()


def normalize_store_dtype(name: str, flag: str = "--dtype") -> str:
    try:
        return STORE_DTYPES[name.lower()]
    except KeyError:
        raise UserError(f"{flag} {name!r}: expected one of fp32, fp16, bf16") from None


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


# ----------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows_file: str
    num_rows: int
    first_image: int  # position in the selected image list
    num_images: int
    row_start: int  # global row offset of this shard


def resolve_store_path(path: str | os.PathLike, flag: str = "store") -> Path:
    """The store directory ``path`` names: itself when it holds a manifest, else its single child
    that does. The authors' ``--output_dir`` of save_activations.py IS the store; saevlm's extract
    writes ``<output_dir>/<point>/``, so their later ``--activations_dir <output_dir>`` lands here."""
    p = Path(path)
    if (p / MANIFEST).is_file() or not p.is_dir():
        return p
    children = sorted(c for c in p.iterdir() if c.is_dir() and (c / MANIFEST).is_file())
    if len(children) == 1:
        print(f"note: {flag} {p}: using the store it holds, {children[0].name}/", file=sys.stderr)
        return children[0]
    if len(children) > 1:
        raise UserError(f"{flag} {p}: holds {len(children)} stores ({', '.join(c.name for c in children)}); "
                        f"name one of them")
    return p


class ActivationStore:
    """Read-only view of a store; nothing is loaded into RAM beyond what is asked for.

    Parameters
    ----------
    path:
        The store directory (the one holding ``manifest.json``).
    allow_incomplete:
        Open a store whose writer has not finished (``complete: false``); only its complete
        shards are visible. Off by default so a partial store is never mistaken for a finished one.
    """

    FORMAT = FORMAT_NAME

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False, flag: str = "store"):
        self.path = resolve_store_path(path, flag)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            what = "does not exist" if not self.path.exists() else f"has no {MANIFEST}"
            raise UserError(f"{flag} {self.path}: {what}; expected a saevlm store directory "
                            f"(written by `saevlm extract` / `saevlm embed`)")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{flag} {manifest_path}: not valid JSON ({e})") from None
        if self.manifest.get("format") != self.FORMAT:
            raise UserError(f"{flag} {manifest_path}: format is {self.manifest.get('format')!r}, "
                            f"expected {self.FORMAT!r}")
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(f"{flag} {manifest_path}: schema_version {version}, this saevlm reads "
                            f"{SCHEMA_VERSION}")
        if not self.manifest.get("complete") and not allow_incomplete:
            raise UserError(
                f"{flag} {self.path}: the store is incomplete (its writer stopped after "
                f"{len(self.manifest.get('shards', []))} shard(s)). Rerun the same command to resume it.")
        self.dtype: str = self.manifest["dtype"]
        self.dim: int = int(self.manifest["dim"])
        self.shards: list[ShardInfo] = []
        offset = 0
        for s in self.manifest["shards"]:
            self.shards.append(ShardInfo(s.get("file", ""), s["rows_file"], int(s["num_rows"]),
                                         int(s["first_image"]), int(s["num_images"]), offset))
            offset += int(s["num_rows"])
        self.num_rows = offset
        if self.manifest.get("complete") and offset != int(self.manifest["num_rows"]):
            raise UserError(f"{flag} {manifest_path}: shards hold {offset} rows, manifest says "
                            f"{self.manifest['num_rows']}")
        self._starts = np.array([s.row_start for s in self.shards] + [offset], dtype=np.int64)
        self._mmaps: dict[int, np.ndarray] = {}

    # -- metadata
    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.dim)

    @property
    def provenance(self) -> dict:
        return self.manifest.get("provenance", {})

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        hook = self.provenance.get("hook", {})
        return (f"ActivationStore({str(self.path)!r}, rows={self.num_rows}, dim={self.dim}, "
                f"dtype={self.dtype}, point={hook.get('attachment_point')}, layer={hook.get('layer')})")

    # -- raw access
    def shard_array(self, i: int) -> np.ndarray:
        """The i-th shard, memory-mapped, in its storage dtype."""
        if i not in self._mmaps:
            f = self.path / self.shards[i].file
            arr = np.load(f, mmap_mode="r")
            if arr.shape != (self.shards[i].num_rows, self.dim):
                raise UserError(f"{f}: shape {arr.shape}, manifest says "
                                f"{(self.shards[i].num_rows, self.dim)}")
            self._mmaps[i] = arr
        return self._mmaps[i]

    def shard_rows(self, i: int) -> np.ndarray:
        return np.load(self.path / self.shards[i].rows_file, mmap_mode="r")

    def row_index(self) -> np.ndarray:
        """``[N, 2]`` int64: (image index, token index) of every row (token -1 = pooled)."""
        if not self.shards:
            return np.zeros((0, 2), dtype=np.int64)
        return np.concatenate([np.asarray(self.shard_rows(i)) for i in range(len(self.shards))])

    def image_ids(self) -> np.ndarray:
        """The dataset index of each stored image, in store order (one entry per image)."""
        return _image_ids_of(self.path, self.manifest)

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
        if batch_size > self.num_rows:
            raise UserError(f"batch size {batch_size} exceeds the {self.num_rows} rows of {self.path}")
        per_epoch = self.num_rows // batch_size
        step = start_step
        while True:
            epoch, within = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(self.num_rows)
            for b in range(within, per_epoch):
                idx = np.sort(perm[b * batch_size:(b + 1) * batch_size])
                yield self.gather(idx)
                step += 1


# ----------------------------------------------------------------------------- writer
class StoreWriter:
    """Writes a store shard by shard; resumes an interrupted store written with the same settings.

    Shard ``i`` always covers selected-image positions ``[i * images_per_shard, (i+1) * ...)``;
    since ``images_per_shard`` is a multiple of the batch size, batches are the same whichever
    shards are recomputed, and a resumed store is byte-identical to an uninterrupted one.

    Several processes (``torchrun``) write one store together: rank r owns the shards with
    ``index % world_size == r`` and records them in ``manifest.rank<r>.json``; rank 0 creates the
    main manifest first and, once every rank is done, ``merge()`` lists all shards in order and
    marks the store complete. Until then the main manifest says ``complete: false``. Any later
    run, with any number of processes, resumes from the union of finished shards.

    Subclasses change what a shard holds by overriding ``FORMAT`` and ``_write_payload`` (the
    sparse code store of :mod:`saevlm.data.codes` does).
    """

    SHARD_PREFIXES = ("acts_", "rows_", "codes_")
    FORMAT = FORMAT_NAME

    def __init__(self, path: str | os.PathLike, *, kind: str, dim: int, dtype: str,
                 images_per_shard: int, num_images: int, provenance: dict, software: dict,
                 overwrite: bool = False, extra_files: dict[str, np.ndarray] | None = None,
                 extra_json: dict[str, Any] | None = None, flag: str = "--output_dir",
                 rank: int = 0, world_size: int = 1):
        self.path = Path(path)
        self.format = self.FORMAT
        self.dtype = normalize_store_dtype(dtype)
        self.dim = int(dim)
        self.input_dim = getattr(self, "input_dim", self.dim)  # a CodeStoreWriter takes activations
        self.images_per_shard = int(images_per_shard)
        self.num_images = int(num_images)
        self.num_shards = -(-self.num_images // self.images_per_shard)
        self.rank, self.world_size = int(rank), int(world_size)
        self.already_complete = False
        identity = {"kind": kind, "dim": self.dim, "dtype": self.dtype,
                    "images_per_shard": self.images_per_shard, "provenance": provenance}
        manifest_path = self.path / MANIFEST
        if self.rank == 0 and manifest_path.exists() and overwrite:
            self._remove_store_files()
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            if old.get("format") != self.FORMAT:
                raise UserError(f"{flag} {self.path}: holds a {old.get('format')!r} store, not "
                                f"{self.FORMAT!r}; use another directory or --overwrite")
            old_identity = {k: old.get(k) for k in ("kind", "dim", "dtype", "images_per_shard",
                                                    "provenance")}
            if old_identity != _jsonable(identity):
                diff = _first_difference(old_identity, _jsonable(identity))
                raise UserError(
                    f"{flag} {self.path}: a store written with different settings is already there "
                    f"({diff}). Use another output directory, or pass --overwrite to replace it.")
            self.manifest = old
            self.already_complete = bool(old.get("complete"))
        elif self.rank != 0:
            raise RuntimeError(f"rank {self.rank}: {manifest_path} is missing; rank 0 creates it first")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": self.FORMAT, "schema_version": SCHEMA_VERSION, "complete": False,
                **_jsonable(identity), "num_rows": 0, "num_images": 0,
                "storage_dtype": np.dtype(_STORAGE[self.dtype]).name,
                "shards": [], "skipped_images": [], "files": {},
                "software": software,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            for name, arr in (extra_files or {}).items():
                atomic_save_npy(self.path / name, arr)
                self.manifest["files"][name.split(".")[0]] = name
            for name, obj in (extra_json or {}).items():
                atomic_write_json(self.path / name, obj)
                self.manifest["files"][name.split(".")[0]] = name
            atomic_write_json(manifest_path, self.manifest)
        self.done: dict[int, dict] = {}
        if not self.already_complete:
            self._load_done()
            if self.rank == 0:
                self._prune_unlisted()

    # -- state
    def _rank_manifest(self, rank: int) -> Path:
        return self.path / f"manifest.rank{rank}.json"

    def _load_done(self) -> None:
        """Finished shards: those in the main manifest and in any rank's partial manifest."""
        for entry in self.manifest.get("shards", []):
            self.done[int(entry["index"])] = entry
        for f in sorted(self.path.glob("manifest.rank*.json")):
            for entry in json.loads(f.read_text()).get("shards", []):
                self.done.setdefault(int(entry["index"]), entry)

    @property
    def images_done(self) -> int:
        return sum(int(e["num_images"]) for e in self.done.values())

    def shard_ranges(self) -> list[tuple[int, int, int]]:
        """(index, first, stop) selected-image positions of this rank's shards still to write."""
        out = []
        for idx in range(self.num_shards):
            if idx % self.world_size == self.rank and idx not in self.done:
                first = idx * self.images_per_shard
                out.append((idx, first, min(first + self.images_per_shard, self.num_images)))
        return out

    # -- writing
    def write_shard(self, index: int, acts_nd: np.ndarray, rows_n2: np.ndarray, first_image: int,
                    num_images: int, skipped: Sequence[dict] = ()) -> None:
        if first_image != index * self.images_per_shard:
            raise RuntimeError(f"shard {index} starts at image {first_image}, expected "
                               f"{index * self.images_per_shard}")
        if acts_nd.ndim != 2 or acts_nd.shape[1] != self.input_dim:
            raise RuntimeError(f"shard shape {acts_nd.shape}, expected [rows, {self.input_dim}]")
        if len(rows_n2) != len(acts_nd):
            raise RuntimeError("rows index and activations differ in length")
        rows_file = f"rows_{index:05d}.npy"
        payload = self._write_payload(index, acts_nd)
        atomic_save_npy(self.path / rows_file, np.ascontiguousarray(rows_n2, dtype=np.int64))
        self.done[index] = {"index": int(index), **payload, "rows_file": rows_file,
                            "num_rows": int(len(acts_nd)), "first_image": int(first_image),
                            "num_images": int(num_images), "skipped_images": list(skipped)}
        self._save_progress()

    def _save_progress(self) -> None:
        if self.world_size == 1:
            self._fill_manifest()
            atomic_write_json(self.path / MANIFEST, self.manifest)
        else:
            mine = [self.done[i] for i in sorted(self.done) if i % self.world_size == self.rank]
            atomic_write_json(self._rank_manifest(self.rank), {"rank": self.rank, "world_size": self.world_size,
                                                               "pid": os.getpid(), "shards": mine})

    def _fill_manifest(self) -> None:
        entries = [self.done[i] for i in sorted(self.done)]
        self.manifest["shards"] = entries
        self.manifest["skipped_images"] = [r for e in entries for r in e.get("skipped_images", [])]
        self.manifest["num_rows"] = int(sum(e["num_rows"] for e in entries))

    def _write_payload(self, i: int, acts_nd: np.ndarray) -> dict:
        """Write shard ``i``'s data files; return their manifest entries."""
        acts_file = f"acts_{i:05d}.npy"
        atomic_save_npy(self.path / acts_file, encode_for_storage(acts_nd, self.dtype))
        return {"file": acts_file}

    def finalize(self, extra: dict | None = None) -> None:
        """Mark the store complete once every shard is on disk (single process, or rank 0 after
        all ranks are done: it gathers the ranks' partial manifests)."""
        if self.rank != 0:
            return
        self._load_done()
        missing = [i for i in range(self.num_shards) if i not in self.done]
        if missing:
            raise UserError(f"{self.path}: {len(missing)} of {self.num_shards} shards missing (first: "
                            f"{missing[0]}); a process stopped early. Rerun the same command to complete "
                            f"the store")
        self._fill_manifest()
        ids = _image_ids_of(self.path, self.manifest)
        self.manifest["num_images"] = int(len(ids))
        self.manifest["image_ids_sha256"] = sha256_of_ints(ids)
        self.manifest.update(extra or {})
        self.manifest["complete"] = True
        self.manifest["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.path / MANIFEST, self.manifest)
        for f in self.path.glob("manifest.rank*.json"):
            f.unlink()

    # -- housekeeping
    def _prune_unlisted(self) -> None:
        """Remove temp files and shard files that a crashed writer left but never listed."""
        listed = {v for e in self.done.values() for v in e.values() if isinstance(v, str)}
        for f in self.path.iterdir():
            if f.name.startswith(".") and ".tmp-" in f.name:
                f.unlink()
            elif f.name.startswith(self.SHARD_PREFIXES) and f.name not in listed:
                f.unlink()

    def _remove_store_files(self) -> None:
        old = json.loads((self.path / MANIFEST).read_text())
        names = {v for s in old.get("shards", []) for v in s.values() if isinstance(v, str)}
        names |= set(old.get("files", {}).values())
        (self.path / MANIFEST).unlink()
        for f in self.path.iterdir():
            if f.name in names or f.name.startswith(self.SHARD_PREFIXES) or ".tmp-" in f.name \
                    or f.name.startswith("manifest.rank"):
                f.unlink()


def _image_ids_of(path: Path, manifest: dict) -> np.ndarray:
    """Distinct image indices of a store's rows, in order (from its rows files)."""
    parts = [np.load(path / s["rows_file"], mmap_mode="r")[:, 0] for s in manifest["shards"]]
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = rows[1:] != rows[:-1]
    return rows[keep]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'value'}: existing {a!r}, requested {b!r}"


def check_same_images(a: ActivationStore, b: ActivationStore, what: str = "stores") -> None:
    """Refuse a pair of stores that do not describe the same images in the same order."""
    da = a.provenance.get("dataset", {})
    db = b.provenance.get("dataset", {})
    for key in ("paths_sha256", "split"):
        if da.get(key) != db.get(key):
            raise UserError(f"{what}: {a.path} and {b.path} come from different image lists "
                            f"(dataset {key}: {da.get(key)!r} vs {db.get(key)!r})")
    if a.manifest.get("image_ids_sha256") != b.manifest.get("image_ids_sha256") or \
            a.manifest.get("num_images") != b.manifest.get("num_images"):
        raise UserError(f"{what}: {a.path} ({a.manifest.get('num_images')} images) and {b.path} "
                        f"({b.manifest.get('num_images')} images) do not hold the same images in the "
                        f"same order (skipped images or --take_every differ)")
