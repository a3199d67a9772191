"""The top-images store: what ``extract --sae_path --mean_pool --top_k`` writes instead of codes
(the steering protocol, :mod:`saevlm.sae.pooled`): a manifest plus ``top_images_<k>.npy``,
``top_images_<k>_values.npy``, ``top_images_<k>_kth_value.npy`` and the authors'
``hai_indices_<k>.npy`` / ``hai_indices_<k>_worst.npy``. At ImageNet-train size the pooled codes
would be 1.28 M x 65,536 = 335 GB dense; the top-k holds 2 x k x 65,536 numbers.

:class:`TopImagesWriter` is a kind of :class:`saevlm.data.writer.StoreWriter`: the extraction
engine hands it each shard's own top-k, so the store has the same lock, per-file checksums,
resume by shard and torchrun ranks as every other store; when all shards are in, the shards'
top-k lists are merged into the files above."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saevlm.data import artifacts as A
from saevlm.data.writer import StoreWriter
from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import Provenance

TOP_IMAGES_FORMAT = "saevlm-top-images"


def write_top_images(out: Path, k: int, image_ids_k: np.ndarray, values_k: np.ndarray,
                     source: dict | None = None) -> dict[str, dict]:
    """saevlm's files (highest first) and the authors' ``find_hai_indices.py`` files:
    ``hai_indices_<k>.npy`` in THEIR order (``argsort(a)[-k:]``: the k-th highest first, the
    highest last) and ``hai_indices_<k>_worst.npy`` (the k-th highest value). ``source`` (the
    stamp of the store they come from, data.stamps.source_stamp) goes to ``top_images_<k>.json``
    so readers can tell a stale set. Returns {file name: checksum} (size and CRC-32)."""
    from saevlm.data.atomic import atomic_save_npy, file_checksum

    kth = values_k[:, -1].copy()
    files = {A.top_images_npy(k): image_ids_k, A.top_images_kth_npy(k): kth,
             A.top_images_values_npy(k): values_k,
             A.hai_indices_npy(k): np.ascontiguousarray(image_ids_k[:, ::-1]),
             A.hai_worst_npy(k): kth.astype(np.float64)}
    written = {name: atomic_save_npy(out / name, arr) for name, arr in files.items()}
    if source is not None:
        # the checksums let readers tell a top_images_<k>.npy copied in from another SAE's folder
        A.TopImagesStamp.write_json(out / A.top_images_json(k), {"k": k, "neurons": int(len(image_ids_k)),
                                                                 "source": source, "files": written})
        written = {**written, A.top_images_json(k): file_checksum(out / A.top_images_json(k))}
    return written


def top_images_files(k: int) -> list[str]:
    """The .npy files saevlm's top images of size ``k`` are read from."""
    return [A.top_images_npy(k), A.top_images_values_npy(k), A.top_images_kth_npy(k)]


def latent_value_row_order(latents: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The order of saevlm's top-k lists, written once: entries (latent, value, row) by latent, then
    value descending, then lower row first. ``top-images`` on a code store, the merge of shards'
    lists and the explorer's per-latent columns take it; :class:`saevlm.sae.pooled.RunningTopK`
    keeps the same order on the device for dense blocks."""
    return np.lexsort((rows, -np.asarray(values, dtype=np.float64), latents))


def merge_top_k(rows_list: list[np.ndarray], values_list: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several top-k lists, per column: (rows [k, K], values [k, K]) in the order of
    :func:`latent_value_row_order`, so merging the shards' lists gives exactly the top-k of the
    whole stream. Empty places: row -1, -inf (they sort last)."""
    rows = np.concatenate(rows_list, axis=0)
    values = np.concatenate(values_list, axis=0).astype(np.float32)
    m, num_columns = rows.shape
    latents = np.broadcast_to(np.arange(num_columns), rows.shape).T.ravel()
    rows_t, values_t = rows.T.ravel(), values.T.ravel()
    order = latent_value_row_order(latents, values_t, np.where(rows_t < 0, np.iinfo(np.int64).max, rows_t))
    best = order.reshape(num_columns, m)[:, :k]  # each column has m entries, in its own block
    return rows_t[best].T, values_t[best].T


class TopImagesStore:
    """Top images per latent, no codes. Enough for ``visualize``, ``hierarchy``, ``uniqueness``
    and ``steering-score``."""

    FORMAT = TOP_IMAGES_FORMAT
    PAYLOAD_KEYS = ("file", "top_rows_file")  # each shard's top values, and their rows

    def __init__(self, path, field: str = "activations_dir"):
        from saevlm.data.store import parse_manifest, read_manifest

        self.path = Path(path)
        f = self.path / A.MANIFEST
        raw = read_manifest(f, field)
        if raw.get("format") != TOP_IMAGES_FORMAT:
            raise UserError(f"{field} {self.path}: not a top-images store", field=field)
        self.manifest = parse_manifest(raw, f, field, self.FORMAT, self.PAYLOAD_KEYS)  # the one schema of every store
        if not self.manifest.complete:
            raise UserError(f"{field} {self.path}: the extraction that writes it has not finished; "
                            f"rerun the same extract command to resume it", field=field)
        self.dim = self.manifest.dim
        self.num_rows = self.manifest.num_images if self.manifest.num_images is not None else self.manifest.num_rows
        k = self.manifest.extra.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"{field} {self.path}/manifest.json: damaged (k is {k!r}); rerun the extract command "
                            f"with --overwrite", field=field)
        self.k = k

    @property
    def dict_size(self) -> int:
        return self.dim

    @property
    def num_neurons(self) -> int:
        return self.dim

    @property
    def provenance(self) -> Provenance:
        return self.manifest.provenance

    def image_ids(self) -> np.ndarray:
        return np.load(self.path / A.IMAGE_IDS)

    @property
    def file_checksums(self) -> dict:
        """{file: {bytes, crc32}} of the store's files (sealed with the manifest)."""
        return {name: dict(c) for name, c in self.manifest.file_checksums.items()}

    @property
    def dataset_files(self):
        """labels.npy / classes.json, checked as in activation stores."""
        from saevlm.data.store import DatasetFiles

        from saevlm.data.stamps import store_schema

        return DatasetFiles(self.path, dict(self.manifest.files), self.file_checksums, store_schema(self),
                            self.provenance.dataset.num_images_in_split, "activations_dir")

    def labels(self) -> np.ndarray | None:
        return self.dataset_files.labels()

    def classes(self) -> dict | None:
        return self.dataset_files.classes()


def load_top_images(directory, k: int, store=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top image ids [K, k], k-th values [K], all values [K, k]) written by ``saevlm top-images``.
    With ``store`` (the store they should describe): refused when stale (computed from an earlier
    version of it, ``top_images_<k>.json``) or of another size."""
    d = Path(directory)
    f = d / A.top_images_npy(k)
    if not f.is_file():
        raise UserError(f"activations_dir {d}: no top_images_{k}.npy; run `saevlm top-images "
                        f"--activations_dir {d} --k {k}` first", field="activations_dir")
    if store is not None:
        check_top_images(d, k, store)
    try:
        top = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{f}: not a NumPy array file ({str(e).splitlines()[0][:120]})") from None
    if store is not None:
        refresh = f"saevlm top-images --activations_dir {store.path} --k {k}"
        if top.ndim != 2 or len(top) != store.num_neurons:
            raise UserError(f"{f}: top images for {len(top)} neurons, but {store.path} has {store.num_neurons}; "
                            f"refresh it with `{refresh}`")
    return (top, np.load(d / A.top_images_kth_npy(k)), np.load(d / A.top_images_values_npy(k)))


def check_top_images(d: Path, k: int, store) -> None:
    """Refuse top images that do not describe ``store``: computed from an earlier version of it
    (``top_images_<k>.json``'s source stamp), or .npy files that are not the ones the stamp (or a
    top-images store's manifest) recorded, e.g. copied in from another SAE's folder. A store of
    schema version 2 must have the stamp."""
    import json

    from saevlm.data.stamps import check_fresh, files_reason, result_files_reason, store_schema

    refresh = f"saevlm top-images --activations_dir {store.path} --k {k}"
    if isinstance(store, TopImagesStore) and Path(store.path) == d:
        # written by extract --top_k: the store's own manifest lists their checksums (sealed)
        reason = files_reason(d, store.file_checksums, top_images_files(k)) if store_schema(store) >= 2 else None
        if reason:
            raise UserError(f"{d / 'manifest.json'}: {reason}; re-create the store with its extract command and "
                            f"--overwrite")
        return
    stamp = d / A.top_images_json(k)
    if not stamp.is_file():
        if store_schema(store) >= 2:
            raise UserError(f"{d / A.top_images_npy(k)}: no {stamp.name} beside it (it records which store and "
                            f"which files the top images are); refresh it with `{refresh}`")
        return
    try:
        data = json.loads(stamp.read_text())
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        raise UserError(f"{stamp}: not valid JSON; refresh it with `{refresh}`") from None
    check_fresh(data.get("source"), store, str(d / A.top_images_npy(k)), refresh)
    reason = result_files_reason(d, data.get("files"), top_images_files(k), store)
    if reason:
        raise UserError(f"{stamp}: {reason}; refresh it with `{refresh}`")


def _hai_indices_file(directory, hai_indices_path: str) -> Path:
    """The file ``--hai_indices_path`` names, looked for inside ``directory`` too."""
    f = Path(hai_indices_path)
    if not f.is_file() and (Path(directory) / f.name).is_file():
        # the authors' path names the folder they passed as --activations_dir / --output_dir; saevlm
        # wrote the file inside the store that folder holds
        f = Path(directory) / f.name
    if not f.is_file():
        raise UserError(f"hai_indices_path {f}: no such file (written by `saevlm top-images` or the "
                        f"authors' find_hai_indices.py)", field="hai_indices_path")
    return f


def load_top_images_for(directory, k: int, hai_indices_path: str | None = None, store=None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top images for an analysis command: saevlm's files in ``directory``, or the file given by
    the authors' ``--hai_indices_path``. A ``hai_indices_<k>.npy`` file is in the authors' order
    (``argsort(a)[-k:]``: highest last) and is reversed here; its ``_worst.npy`` gives the k-th
    values. Values per image are known only when saevlm's ``top_images_<k>_values.npy`` is beside it
    and lists the same images."""

    if hai_indices_path is None:
        return load_top_images(directory, k, store)
    f = _hai_indices_file(directory, hai_indices_path)
    top = np.load(f)
    if top.ndim != 2 or top.shape[1] != k:
        raise UserError(f"hai_indices_path {f}: shape {top.shape}, expected [neurons, {k}] (--k {k})", field="hai_indices_path")
    authors_order = f.name.startswith("hai_indices")
    if authors_order:
        top = np.ascontiguousarray(top[:, ::-1])
    worst = f.with_name(f.name[:-4] + "_worst.npy")
    ours = f.parent / A.top_images_npy(k)
    values = None
    if ours.is_file() and np.array_equal(np.load(ours), top):
        _, kth, values = load_top_images(f.parent, k, store if f.parent == Path(directory) else None)
    elif worst.is_file():
        kth = np.load(worst)
    else:
        raise UserError(f"hai_indices_path {f}: no {worst.name} beside it (the k-th values, which mark "
                        f"near-dead neurons)", field="hai_indices_path")
    return top, np.asarray(kth, dtype=np.float32), values


class TopImagesWriter(StoreWriter):
    """A top-images store written shard by shard (see the module docstring). Shard ``i`` holds the
    top-k of its own images: ``toprows_XXXXX.npy`` (positions in the selected images) and
    ``topvals_XXXXX.npy`` [k, K], beside the usual ``rows_`` and ``images_`` files; ``finalize``
    merges every shard's lists into ``top_images_<k>.npy`` and the authors' files."""

    SHARD_PREFIXES = ("toprows_", "topvals_", "rows_", "images_")
    FORMAT = TOP_IMAGES_FORMAT

    def __init__(self, path, *, k: int, dim: int, selected: np.ndarray, **common):
        self.k = int(k)
        self.selected = np.asarray(selected, dtype=np.int64)
        # k is part of what the store is: another k is another store (refused, or --overwrite)
        super().__init__(path, kind=f"top_images_{self.k}", dim=dim, dtype="fp32",
                         extra_files={**(common.pop("extra_files", None) or {}), A.IMAGE_IDS: self.selected},
                         **common)

    def write_shard(self, index: int, payload: tuple[np.ndarray, np.ndarray], rows_n2: np.ndarray,
                    first_image: int, num_images: int, skipped=(), images_n2: np.ndarray | None = None) -> None:
        """Shard ``index``'s top-k, ``payload`` = (rows [k, K], values [k, K]) (rows are positions in
        the selected images, -1 where the shard had fewer than k images), with the shard's row index
        and image hashes as any store."""
        from saevlm.data.atomic import atomic_save_npy

        top_rows_kK, top_values_kK = payload
        if top_rows_kK.shape != (self.k, self.dim) or top_values_kK.shape != (self.k, self.dim):
            raise RuntimeError(f"shard top-k shape {top_rows_kK.shape}, expected ({self.k}, {self.dim})")
        checksums = {}
        rows_f, vals_f = f"toprows_{index:05d}.npy", f"topvals_{index:05d}.npy"
        checksums[rows_f] = atomic_save_npy(self.path / rows_f, np.ascontiguousarray(top_rows_kK, dtype=np.int64))
        checksums[vals_f] = atomic_save_npy(self.path / vals_f, np.ascontiguousarray(top_values_kK, dtype=np.float32))
        self._record_shard(index, {"file": vals_f, "top_rows_file": rows_f}, checksums, None, rows_n2,
                           first_image, num_images, skipped, images_n2)

    def _write_merged_top_k(self) -> dict:
        """Merge every shard's top-k into the store's files; their checksums by file name."""
        entries = [self.done[i] for i in sorted(self.done)]
        rows, values = merge_top_k([np.load(self.path / e["top_rows_file"]) for e in entries],
                                   [np.load(self.path / e["file"]) for e in entries], self.k)
        if (rows < 0).any():
            raise UserError(f"{self.path}: fewer than k = {self.k} readable images for some latents; use a "
                            f"smaller --top_k")
        values = np.where(np.isfinite(values), values, 0).astype(np.float32)
        return write_top_images(self.path, self.k, self.selected[rows.T], np.ascontiguousarray(values.T))

    def finalize(self, extra: dict | None = None) -> None:
        """Rank 0, once every shard is in: merge the shards' top-k into the store's files, then
        mark it complete (as every store)."""
        if self.rank != 0:
            return super().finalize(extra)
        self._load_done()
        missing = [i for i in range(self.num_shards) if i not in self.done]
        if missing:
            return super().finalize(extra)  # says which shards are missing
        written = self._write_merged_top_k()
        self.manifest["file_checksums"].update(written)
        self.manifest["files"].update({name.split(".")[0]: name for name in written})
        super().finalize({"k": self.k, **(extra or {}), "num_images": int(len(self.selected))})
