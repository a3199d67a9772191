"""Writing stores (docs/store-format.md, "Writing rules"): shard by shard, resumable, several
processes at once, each file checksummed as it is written, one writer per store (a lock)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saevlm.data.atomic import OutputLock, atomic_save_npy, atomic_write_json, file_checksum
from saevlm.data.manifest import Manifest, Provenance
from saevlm.data.store import (_STORAGE, FORMAT_NAME, LOCK, MANIFEST, SCHEMA_VERSION, _count_nonfinite,
                               _image_ids_of, _nonfinite_rows, encode_for_storage, normalize_store_dtype,
                               sha256_of_ints)
from saevlm.errors import UserError


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

    Every file's size and CRC-32 go into its shard's manifest entry as it is written, with the
    count of non-finite values (refused unless ``allow_nonfinite``) and, when the caller passes
    them, the images' content hashes (``images_XXXXX.npy``). A lock file keeps a second writer out.

    Subclasses change what a shard holds by overriding ``FORMAT`` and ``_write_payload`` (the
    sparse code store of :mod:`saevlm.data.codes` does).
    """

    SHARD_PREFIXES = ("acts_", "rows_", "codes_", "images_")
    FORMAT = FORMAT_NAME

    def __init__(self, path: str | os.PathLike, *, kind: str, dim: int, dtype: str,
                 images_per_shard: int, num_images: int, provenance: Provenance | dict, software: dict,
                 overwrite: bool = False, extra_files: dict[str, np.ndarray] | None = None,
                 extra_json: dict[str, Any] | None = None, field: str = "output_dir",
                 rank: int = 0, world_size: int = 1, allow_nonfinite: bool = False):
        self.path = Path(path)
        self.field = field
        self.format = self.FORMAT
        self.dtype = normalize_store_dtype(dtype)
        self.dim = int(dim)
        self.input_dim = getattr(self, "input_dim", self.dim)  # a CodeStoreWriter takes activations
        self.images_per_shard = int(images_per_shard)
        self.num_images = int(num_images)
        self.num_shards = -(-self.num_images // self.images_per_shard)
        self.rank, self.world_size = int(rank), int(world_size)
        self.allow_nonfinite = allow_nonfinite
        # rank 0 holds the lock for a whole torchrun job: the other ranks open the store only after
        # rank 0 has, so a second job stops at its rank 0
        self._lock = OutputLock(self.path, field, name=LOCK) if self.rank == 0 else None
        identity = self.identity(kind, self.dim, self.dtype, self.images_per_shard, provenance)
        self.provenance = identity["provenance"]
        self.manifest = self._open_manifest(identity, overwrite, software, extra_files or {}, extra_json or {})
        self.already_complete = bool(self.manifest.get("complete"))
        self.done: dict[int, dict] = {}
        if self.already_complete:
            self.close()
        else:
            self._load_done()
            if self.rank == 0:
                self._prune_unlisted()

    @staticmethod
    def identity(kind: str, dim: int, dtype: str, images_per_shard: int, provenance: Provenance | dict) -> dict:
        """What an existing store must have been written with to be resumed (or taken as done):
        :meth:`Manifest.identity` of the store these settings write."""
        # the provenance through JSON, so that it compares equal to what a manifest reads back
        return {"kind": kind, "dim": int(dim), "dtype": normalize_store_dtype(dtype),
                "images_per_shard": int(images_per_shard), "provenance": Provenance.from_json(_jsonable(provenance))}

    @classmethod
    def complete_there(cls, path: str | os.PathLike, identity: dict) -> bool:
        """Whether ``path`` holds a complete store of this kind written with ``identity``: read
        only (no lock taken, nothing written), for commands that skip finished work before
        loading a model. Anything else (no store, another one, a damaged manifest) is False, and
        the writer itself then says what is wrong."""
        f = Path(path) / MANIFEST
        try:
            manifest = Manifest.from_json(json.loads(f.read_text()), f, "output_dir", cls.FORMAT, ())
        except (OSError, ValueError, UserError):
            return False
        return manifest.complete and manifest.identity() == identity

    def _open_manifest(self, identity: dict, overwrite: bool, software: dict,
                       extra_files: dict[str, np.ndarray], extra_json: dict[str, Any]) -> dict:
        """The manifest to write into: the one there (a resumed or complete store), or a new one
        (rank 0 only; with --overwrite the old store's files are removed first)."""
        manifest_path = self.path / MANIFEST
        if self.rank == 0 and overwrite and (manifest_path.exists() or self._leftovers()):
            self._remove_store_files()
        if manifest_path.exists():
            return self._resume_manifest(manifest_path, identity)
        if self.rank != 0:
            raise RuntimeError(f"rank {self.rank}: {manifest_path} is missing; rank 0 creates it first")
        return self._new_manifest(identity, software, extra_files, extra_json)

    def _resume_manifest(self, manifest_path: Path, identity: dict) -> dict:
        """The manifest already there, if it is a store of this kind written with these settings."""
        field = self.field
        old = self._read_own_manifest(manifest_path)
        if old.get("format") != self.FORMAT:
            raise UserError(f"{field} {self.path}: holds a {old.get('format')!r} store, not "
                            f"{self.FORMAT!r}; use another directory or --overwrite", field=field)
        try:
            old_identity = Manifest.from_json(old, manifest_path, field, self.FORMAT, ()).identity()
        except UserError as err:
            raise UserError(f"{err}; or pass --overwrite to replace the store") from None
        if old_identity != identity:
            diff = _first_difference(_jsonable(old_identity), _jsonable(identity))
            raise UserError(
                f"{field} {self.path}: a store written with different settings is already there "
                f"({diff}). Use another output directory, or pass --overwrite to replace it.", field=field)
        return old

    def _new_manifest(self, identity: dict, software: dict, extra_files: dict[str, np.ndarray],
                      extra_json: dict[str, Any]) -> dict:
        """Create the directory, write the store-wide files and an empty (incomplete) manifest."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": self.FORMAT, "schema_version": SCHEMA_VERSION, "complete": False,
            **_jsonable(identity), "num_rows": 0, "num_images": 0,
            "storage_dtype": np.dtype(_STORAGE[self.dtype]).name,
            "shards": [], "skipped_images": [], "files": {}, "file_checksums": {},
            "software": software,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for name, arr in extra_files.items():
            manifest["file_checksums"][name] = atomic_save_npy(self.path / name, arr)
            manifest["files"][name.split(".")[0]] = name
        for name, obj in extra_json.items():
            atomic_write_json(self.path / name, obj)
            manifest["file_checksums"][name] = file_checksum(self.path / name)
            manifest["files"][name.split(".")[0]] = name
        atomic_write_json(self.path / MANIFEST, manifest)
        return manifest

    def close(self) -> None:
        """Give up the lock (also released when the process ends)."""
        if self._lock is not None:
            self._lock.release()

    def _read_own_manifest(self, manifest_path: Path) -> dict:
        """The existing manifest, or a message telling how to replace a damaged one."""
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.field} {self.path}: its {MANIFEST} is damaged ({e}); pass --overwrite "
                            f"to replace the store", field=self.field) from None
        if not isinstance(old, dict) or not isinstance(old.get("shards", []), list):
            raise UserError(f"{self.field} {self.path}: its {MANIFEST} is damaged (not a store manifest); "
                            f"pass --overwrite to replace the store", field=self.field)
        return old

    # -- state
    def _rank_manifest(self, rank: int) -> Path:
        return self.path / f"manifest.rank{rank}.json"

    def _load_done(self) -> None:
        """Finished shards: those in the main manifest and in any rank's partial manifest."""
        for entry in self.manifest.get("shards", []):
            self.done[int(entry["index"])] = entry
        for f in sorted(self.path.glob("manifest.rank*.json")):
            try:
                entries = json.loads(f.read_text()).get("shards", [])
            except (OSError, json.JSONDecodeError, AttributeError):
                entries = []  # a damaged progress file: its shards are recomputed
            for entry in entries:
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
                    num_images: int, skipped: Sequence[dict] = (), images_n2: np.ndarray | None = None) -> None:
        """Write shard ``index``. ``images_n2``: (dataset index, content hash) of each of its
        ``num_images`` selected images, skipped ones included (hash 0 when unreadable)."""
        if first_image != index * self.images_per_shard:
            raise RuntimeError(f"shard {index} starts at image {first_image}, expected "
                               f"{index * self.images_per_shard}")
        if acts_nd.ndim != 2 or acts_nd.shape[1] != self.input_dim:
            raise RuntimeError(f"shard shape {acts_nd.shape}, expected [rows, {self.input_dim}]")
        if len(rows_n2) != len(acts_nd):
            raise RuntimeError("rows index and activations differ in length")
        rows_n2 = np.ascontiguousarray(rows_n2, dtype=np.int64)
        payload, checksums, nonfinite = self._write_payload(index, acts_nd, rows_n2)
        self._record_shard(index, payload, checksums, nonfinite, rows_n2, first_image, num_images, skipped, images_n2)

    def _record_shard(self, index: int, payload: dict, checksums: dict, nonfinite: tuple | None, rows_n2: np.ndarray,
                      first_image: int, num_images: int, skipped: Sequence[dict] = (),
                      images_n2: np.ndarray | None = None) -> None:
        """Write the shard's row index and image hashes beside its payload files, and record the
        shard (its manifest entry, with every file's checksum) as done."""
        if first_image != index * self.images_per_shard:
            raise RuntimeError(f"shard {index} starts at image {first_image}, expected "
                               f"{index * self.images_per_shard}")
        if images_n2 is not None and len(images_n2) != num_images:
            raise RuntimeError(f"{len(images_n2)} image hashes for {num_images} images")
        rows_n2 = np.ascontiguousarray(rows_n2, dtype=np.int64)
        rows_file = f"rows_{index:05d}.npy"
        checksums[rows_file] = atomic_save_npy(self.path / rows_file, rows_n2)
        entry = {"index": int(index), **payload, "rows_file": rows_file,
                 "num_rows": int(len(rows_n2)), "first_image": int(first_image),
                 "num_images": int(num_images), "skipped_images": list(skipped)}
        if images_n2 is not None:
            images_file = f"images_{index:05d}.npy"
            checksums[images_file] = atomic_save_npy(self.path / images_file,
                                                     np.ascontiguousarray(images_n2, dtype=np.int64))
            entry["images_file"] = images_file
        if nonfinite:
            entry["nonfinite"], entry["first_nonfinite_row"] = nonfinite
        entry["checksums"] = checksums
        self.done[index] = entry
        self._save_progress()

    def _refuse_nonfinite(self, index: int, values: np.ndarray, rows_n2: np.ndarray,
                          what: str = "activations") -> tuple[int, int] | None:
        """(count, first local row) of NaN / inf in a shard about to be written; a UserError
        unless ``allow_nonfinite`` (then the counts go into the manifest)."""
        bad = _nonfinite_rows(values, "float32")
        if not len(bad):
            return None
        count = _count_nonfinite(values, "float32")
        first = int(bad[0])
        if not self.allow_nonfinite:
            img, tok = (int(v) for v in rows_n2[first]) if len(rows_n2) > first else (-1, -1)
            raise UserError(f"{self.field} {self.path}: shard {index} would hold {count} non-finite {what} "
                            f"(NaN/inf), first at image {img}, token {tok}; nothing was written for it. "
                            f"fp16 overflow? Try --autocast none, or pass --allow_nonfinite to keep them", field=self.field)
        return count, first

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

    def _write_payload(self, i: int, acts_nd: np.ndarray, rows_n2: np.ndarray) -> tuple[dict, dict, tuple | None]:
        """Write shard ``i``'s data files; return (manifest entries, {file: checksum}, non-finite)."""
        nonfinite = self._refuse_nonfinite(i, acts_nd, rows_n2)
        acts_file = f"acts_{i:05d}.npy"
        checksum = atomic_save_npy(self.path / acts_file, encode_for_storage(acts_nd, self.dtype))
        return {"file": acts_file}, {acts_file: checksum}, nonfinite

    def finalize(self, extra: dict | None = None) -> None:
        """Mark the store complete once every shard is on disk (single process, or rank 0 after
        all ranks are done: it gathers the ranks' partial manifests)."""
        if self.rank != 0:
            self.close()
            return
        self._load_done()
        missing = [i for i in range(self.num_shards) if i not in self.done]
        if missing:
            raise UserError(f"{self.path}: {len(missing)} of {self.num_shards} shards missing (first: "
                            f"{missing[0]}); a process stopped early. Rerun the same command to complete "
                            f"the store")
        self._fill_manifest()
        self._record_image_hashes()
        self.manifest.update(extra or {})
        self.manifest["complete"] = True
        self.manifest["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        import uuid
        self.manifest["write_id"] = uuid.uuid4().hex  # derived results record it (data/stamps.py)
        from saevlm.data.manifest import manifest_seal
        self.manifest["seal_sha256"] = manifest_seal(json.loads(json.dumps(self.manifest, default=str)))
        atomic_write_json(self.path / MANIFEST, self.manifest)
        for f in self.path.glob("manifest.rank*.json"):
            f.unlink()
        self.close()

    def _record_image_hashes(self) -> None:
        """The store's image count and the hashes that pair it with other stores (image ids, and
        the images' contents when every shard recorded them)."""
        entries = self.manifest["shards"]
        ids = _image_ids_of(self.path, [e["rows_file"] for e in entries])
        self.manifest["num_images"] = int(len(ids))
        self.manifest["image_ids_sha256"] = sha256_of_ints(ids)
        if entries and all(e.get("images_file") for e in entries):
            h = hashlib.sha256()
            for e in entries:
                h.update(np.ascontiguousarray(np.load(self.path / e["images_file"]), dtype="<i8").tobytes())
            self.manifest["content_sha256"] = h.hexdigest()

    # -- housekeeping
    def _prune_unlisted(self) -> None:
        """Remove temp files and shard files that a crashed writer left but never listed."""
        listed = {v for e in self.done.values() for v in e.values() if isinstance(v, str)}
        for f in self.path.iterdir():
            if f.name.startswith(".") and ".tmp-" in f.name:
                f.unlink()
            elif f.name.startswith(self.SHARD_PREFIXES) and f.name not in listed:
                f.unlink()

    def _leftovers(self) -> bool:
        return self.path.is_dir() and any(f.name.startswith(self.SHARD_PREFIXES + ("manifest.rank",))
                                          for f in self.path.iterdir())

    def _remove_store_files(self) -> None:
        """--overwrite: remove the old store's files, whatever state its manifest is in (a damaged
        manifest names nothing, so files are recognised by their names too)."""
        names = self._listed_files()
        (self.path / MANIFEST).unlink(missing_ok=True)
        for f in self.path.iterdir():
            if f.is_file() and (f.name in names or f.name.startswith(self.SHARD_PREFIXES)
                                or ".tmp-" in f.name or f.name.startswith("manifest.rank")):
                f.unlink()


    def _listed_files(self) -> set[str]:
        """The files an old manifest lists (none when it is damaged or missing)."""
        try:
            old = json.loads((self.path / MANIFEST).read_text())
            return ({v for s in old.get("shards", []) for v in s.values() if isinstance(v, str)}
                    | set(old.get("files", {}).values()))
        except (OSError, ValueError, AttributeError, TypeError):
            return set()  # damaged or missing: the file-name patterns alone recognise the files


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.to_json()))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'value'}: existing {a!r}, requested {b!r}"
