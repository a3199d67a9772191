"""Image datasets from the Hugging Face hub (or a local copy in the hub's format), streamed.

``--dataset_name hf:ILSVRC/imagenet-1k`` (or ``--data_path hf:ILSVRC/imagenet-1k`` with any
``--dataset_name``) reads a hub dataset without copying it to disk: the ``datasets`` library
resolves the split's parquet files and their features (with your login, for gated datasets such
as ImageNet), and the images are read from those files in place, row group by row group, through
the hub's file system (HTTP range reads). A local directory in the hub's layout (``hf:/data/my_ds``:
``data/train-00000-of-00004.parquet`` ...) goes through the same code. Datasets stored in another
format on the hub are read from the hub's own parquet conversion (``refs/convert/parquet``).

The order (docs/datasets.md): the split's parquet files in the order ``datasets`` lists them
(sorted file names), rows in file order. The image index of a row is its row number in that
concatenation, so stores pair across ``extract`` and ``embed`` and across runs exactly as with
folders; each image's content hash is taken from the same bytes that are decoded.

Work is done in units of one parquet row group (about 100 images in files written by
``datasets``): a worker reads the image column of one row group and decodes the rows asked for.
A resumed extraction (or one rank of several) reads only the row groups of the shards it still
has to write, plus the files' footers.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import DatasetInfo

HUB_PREFIX = "hf:"
PARQUET_REVISION = "refs/convert/parquet"


def hub_spec(dataset_name: str | None, data_path: str | os.PathLike | None) -> str | None:
    """The hub dataset (``repo/id`` or a local directory) named by ``--dataset_name hf:...`` or
    ``--data_path hf:...``, or None when the flags name a folder dataset."""
    for value in (dataset_name, data_path):
        if value is not None and str(value).startswith(HUB_PREFIX):
            spec = str(value)[len(HUB_PREFIX):].strip()
            if not spec:
                raise UserError(f"{value!r}: name a dataset after hf:, e.g. hf:ILSVRC/imagenet-1k")
            return spec
    if dataset_name == "hf":
        if not data_path:
            raise UserError("dataset_name hf: give the dataset as --data_path hf:<repo id or directory>", field="dataset_name")
        return str(data_path)
    return None


@dataclass(frozen=True)
class ParquetFileInfo:
    url: str  # a local path or an hf:// URL
    num_rows: int
    group_rows: tuple[int, ...]  # rows per row group
    first_index: int  # image index of the file's first row


@dataclass(frozen=True)
class Unit:
    """One row group's share of a request: which file and group, and the image indices wanted."""

    file: int
    group: int
    indices: np.ndarray  # image indices, increasing
    rows: np.ndarray  # their rows within the row group


def _open_fs(url: str):
    """(file system, path) of a data file: local, or the hub's (range reads, nothing copied)."""
    import fsspec

    if "://" not in url:
        return fsspec.filesystem("file"), url
    return fsspec.core.url_to_fs(url)


# words in the hub's (or datasets') messages that tell which failure it was
_GATED = ("gated", "401", "403", "authenticated", "access to")
_UNREACHABLE = ("offline", "couldn't reach", "connection")
_MISSING = ("doesn't exist", "not found", "notfound")


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    return any(w in text for w in words)


def _hub_error(spec: str, err: Exception) -> UserError:
    """A message a user can act on for a failure to reach or resolve a hub dataset."""
    text = f"{type(err).__name__}: {err}"
    page = f"https://huggingface.co/datasets/{spec}"
    low = text.lower()
    if _mentions(low, _GATED):
        return UserError(f"dataset_name hf:{spec}: the dataset is gated; accept its license at {page} "
                         f"and log in (`huggingface-cli login`, or set HF_TOKEN), then rerun", field="dataset_name")
    if isinstance(err, ConnectionError) or _mentions(low, _UNREACHABLE):
        return UserError(f"dataset_name hf:{spec}: cannot reach the hub ({text.splitlines()[0][:160]}); "
                         f"streaming needs the network (unset HF_HUB_OFFLINE), or download the dataset once "
                         f"(`huggingface-cli download --repo-type dataset {spec} --local-dir DIR`) and pass "
                         f"hf:DIR", field="dataset_name")
    if _mentions(low, _MISSING):
        return UserError(f"dataset_name hf:{spec}: no such dataset on the hub (or it is private: log in "
                         f"with `huggingface-cli login`); check the name at {page}", field="dataset_name")
    return UserError(f"dataset_name hf:{spec}: cannot open ({text.splitlines()[0][:200]})", field="dataset_name")


def _resolve_files(spec: str, split: str | None, revision: str | None) -> tuple[str, list[str], str | None]:
    """(split, parquet data files, revision) of ``spec`` through ``datasets``' resolution."""

    local = Path(spec).expanduser()
    is_local = local.exists() or spec.startswith(("/", ".", "~"))
    data_files = _data_files(spec, local, is_local, revision)
    chosen = _choose_split(spec, split, data_files)
    files = [str(f) for f in data_files[chosen]]
    if not all(f.endswith(".parquet") for f in files):
        if is_local or revision == PARQUET_REVISION:
            raise UserError(f"dataset_name hf:{spec}: split {chosen} is stored as "
                            f"{Path(files[0]).suffix or 'non-parquet'} files; saevlm streams parquet "
                            f"(convert with datasets' Dataset.to_parquet)", field="dataset_name")
        return _resolve_files(spec, chosen, PARQUET_REVISION)  # the hub's own parquet conversion
    check_sharded_file_set(spec, chosen, files)
    return chosen, files, revision


def _data_files(spec: str, local: Path, is_local: bool, revision: str | None) -> dict:
    """{split: data files} as ``datasets`` resolves them for a hub id or a local directory."""
    import datasets

    if is_local and not local.is_dir():
        raise UserError(f"dataset_name hf:{spec}: no such directory (a local dataset is a directory "
                        f"of parquet files in the hub's layout, e.g. data/train-00000-of-00001.parquet)", field="dataset_name")
    try:
        builder = datasets.load_dataset_builder(str(local) if is_local else spec, revision=revision)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one actionable line
        if is_local:
            raise UserError(f"dataset_name hf:{spec}: not a dataset directory ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]})", field="dataset_name") from None
        raise _hub_error(spec, err) from None
    return builder.config.data_files or {}


def _choose_split(spec: str, split: str | None, data_files: dict) -> str:
    """``--split``, or the only split; ``val`` reads a split called ``validation``."""
    splits = sorted(data_files)
    chosen = split
    if split is None:
        if len(splits) != 1:
            raise UserError(f"split: required for hf:{spec} (its splits: {', '.join(splits) or 'none'})", field="split")
        chosen = splits[0]
    elif split not in data_files and split == "val" and "validation" in data_files:
        print(f"note: --split val: hf:{spec} calls it 'validation'; using that", file=sys.stderr)
        chosen = "validation"
    if chosen not in data_files:
        raise UserError(f"split {split}: hf:{spec} has no such split (its splits: {', '.join(splits) or 'none'})", field="split")
    return chosen


_SHARD_NAME = re.compile(r"^(?P<stem>.*?)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")


def check_sharded_file_set(spec: str, split: str, files: list[str]) -> None:
    """Files named in the hub's ``<stem>-0000i-of-0000n.parquet`` layout must all be there: a
    missing one would silently drop part of the split (and every image index after it)."""
    groups: dict[tuple[str, int], set[int]] = {}
    for f in files:
        m = _SHARD_NAME.match(Path(f.split("::")[0]).name)
        if m:
            groups.setdefault((m["stem"], int(m["total"])), set()).add(int(m["index"]))
    for (stem, total), have in sorted(groups.items()):
        missing = sorted(set(range(total)) - have)
        if missing:
            names = ", ".join(f"{stem}-{i:05d}-of-{total:05d}.parquet" for i in missing[:3])
            raise UserError(f"dataset_name hf:{spec}: split {split} is incomplete: {len(missing)} of its {total} "
                            f"files are missing ({names}{', ...' if len(missing) > 3 else ''}); download them "
                            f"again", field="dataset_name")


def _typed_columns(schema) -> tuple[str | None, str | None, list[str]]:
    """The Image and ClassLabel columns (and the class names) that ``datasets``' metadata declares."""
    import datasets

    try:
        features = datasets.Features.from_arrow_schema(schema)
    except Exception:  # noqa: BLE001 - a parquet file written without datasets' metadata
        return None, None, []
    image_col = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    label = next(((k, v) for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
    if label is None:
        return image_col, None, []
    return image_col, label[0], list(label[1].names)


class HubImageList:
    """A hub (or hub-format local) image dataset with the interface of ``ImageList``: a fixed
    order, labels and class names from the dataset's features, content hashes, and batches of
    decoded images (see the module docstring)."""

    name = "hf"

    def __init__(self, spec: str, split: str | None, revision: str | None = None):
        self.spec = spec
        self.root = f"{HUB_PREFIX}{spec}"
        self.split, urls, self.revision = _resolve_files(spec, split, revision)
        self.image_column, self.label_column, self.classes = "", None, []
        self.files, labels = self._read_footers(urls)
        first = sum(f.num_rows for f in self.files)
        if first == 0:
            raise UserError(f"dataset_name {self.root}: split {self.split} holds no rows", field="dataset_name")
        self._num_rows = first
        self._starts = np.array([f.first_index for f in self.files] + [first], dtype=np.int64)
        self.labels = np.concatenate(labels) if labels else np.zeros(first, dtype=np.int64)
        if not self.classes and self.label_column is not None:  # integer labels without names
            self.classes = [str(c) for c in range(int(self.labels.max()) + 1)]
        self.class_names: list[str] | None = list(self.classes) if self.classes else None
        self.taxonomy = None
        self._handles: dict[str, Any] = {}

    def _read_footers(self, urls: list[str]) -> tuple[list[ParquetFileInfo], list[np.ndarray]]:
        """Each file's row counts and its label column (not the images), each file opened once;
        the first file's schema sets the image and label columns."""
        import pyarrow.parquet as pq

        files: list[ParquetFileInfo] = []
        labels = []
        first = 0
        for url in urls:
            try:
                fs, path = _open_fs(url)
                with fs.open(path, "rb") as f:
                    pf = pq.ParquetFile(f)
                    meta = pf.metadata
                    if not files:
                        self.image_column, self.label_column, self.classes = self._columns(pf.schema_arrow)
                    if self.label_column is not None:
                        col = pf.read(columns=[self.label_column]).column(0)
                        labels.append(np.asarray(col.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64))
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001
                raise self._read_error(url, err) from None
            groups = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            files.append(ParquetFileInfo(url, int(meta.num_rows), groups, first))
            first += int(meta.num_rows)
        return files, labels

    # -- schema
    def _columns(self, schema) -> tuple[str, str | None, list[str]]:
        """(image column, label column or None, class names): by ``datasets``' feature types, else
        by the usual column names."""
        columns = list(schema.names)
        image_col, label_col, names = _typed_columns(schema)
        if image_col is None:
            image_col = next((c for c in ("image", "img", "jpg", "png") if c in columns), None)
        if image_col is None:
            raise UserError(f"dataset_name {self.root}: no image column (columns: {', '.join(columns)}); "
                            f"saevlm needs one of datasets' Image type", field="dataset_name")
        if label_col is None and "label" in columns:
            label_col = "label"
        return image_col, label_col, names

    def _read_error(self, url: str, err: Exception) -> UserError:
        if "://" in url:
            return _hub_error(self.spec, err)
        return UserError(f"dataset_name {self.root}: cannot read {url} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); the file is damaged or not parquet", field="dataset_name")

    # -- ImageList interface
    def __len__(self) -> int:
        return self._num_rows

    def __getstate__(self) -> dict:  # worker processes open their own file handles
        return {**self.__dict__, "_handles": {}}

    def locate(self, index: int) -> tuple[int, int, int]:
        """(file, row group, row within it) of image ``index``."""
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = int(index) - self.files[f].first_index
        bounds = np.cumsum((0,) + self.files[f].group_rows)
        g = int(np.searchsorted(bounds, row, side="right")) - 1
        return f, g, row - int(bounds[g])

    def path(self, index: int) -> str:
        """Where image ``index`` is, in words (messages, manifests)."""
        f, _, _ = self.locate(index)
        return (f"{self.root} {self.split} row {index} ({Path(self.files[f].url).name} row "
                f"{index - self.files[f].first_index})")

    def name_of(self, index: int) -> str:
        return self.path(index)

    def file_name(self, index: int) -> str:
        data = self.read_bytes(index) or b""
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        return f"{self.split}_{index:08d}{ext}"

    def paths_sha256(self, indices) -> str:
        """Fingerprint of the selected images: the split's files, their row counts and the
        selected row numbers (the bytes themselves are covered by the content hashes)."""
        h = hashlib.sha256()
        for info in self.files:
            h.update(f"{Path(info.url).name}:{info.num_rows}\n".encode())
        h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
        return h.hexdigest()

    def provenance(self, selected: np.ndarray, take_every: int, max_images: int | None) -> DatasetInfo:
        from saevlm.data.manifest import DatasetInfo

        return DatasetInfo(name=self.name, root=self.root, split=self.split, num_images_in_split=len(self),
                           num_classes=len(self.classes), take_every=take_every, max_images=max_images,
                           num_selected=int(len(selected)), paths_sha256=self.paths_sha256(selected),
                           extra={"revision": self.revision, "image_column": self.image_column,
                                  "label_column": self.label_column,
                                  "files": [Path(f.url).name for f in self.files]})

    def classes_json(self) -> dict:
        out: dict[str, Any] = {"classes": list(self.classes), "source": f"{self.root} features"}
        if self.class_names is not None:
            out["names"] = self.class_names
        return out

    # -- reading
    def _group_images(self, file: int, group: int) -> list:
        """The image column of one row group: a list of bytes (None where missing)."""
        import pyarrow.parquet as pq

        info = self.files[file]
        try:
            if info.url not in self._handles:
                fs, path = _open_fs(info.url)
                self._handles[info.url] = pq.ParquetFile(fs.open(path, "rb"))
            column = self._handles[info.url].read_row_group(group, columns=[self.image_column]).column(0)
        except Exception as err:  # noqa: BLE001 - a network or file failure mid-run
            raise UserError(f"{self.root}: reading {Path(info.url).name} (row group {group}) failed "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); rerun the same "
                            f"command to resume") from None
        import pyarrow as pa

        if not pa.types.is_struct(column.type):
            return column.to_pylist()
        column = column.combine_chunks()
        data = column.field("bytes").to_pylist()
        if column.type.get_field_index("path") < 0 or all(d is not None for d in data):
            return data
        return self._fill_from_paths(data, column.field("path").to_pylist())

    def _fill_from_paths(self, data: list, paths: list) -> list:
        """Path-only rows ({"bytes": None, "path": ...}, as datasets' to_parquet writes images given
        by file path): read the file, as datasets does; a relative path is taken from the dataset
        folder. An unreadable file stays None (reported as an unreadable image, naming the row)."""
        local = Path(self.spec).expanduser()
        for i, (d, p) in enumerate(zip(data, paths)):
            if d is None and p:
                f = Path(p) if Path(p).is_absolute() or not local.is_dir() else local / p
                try:
                    data[i] = f.read_bytes()
                except OSError:
                    pass
        return data

    def read_bytes(self, index: int) -> bytes | None:
        f, g, r = self.locate(index)
        return self._group_images(f, g)[r]

    def units(self, indices: np.ndarray) -> list[Unit]:
        """``indices`` (increasing) cut into row-group units, in order."""
        indices = np.asarray(indices, dtype=np.int64)
        out: list[Unit] = []
        if not len(indices):
            return out
        file_of = np.searchsorted(self._starts, indices, side="right") - 1
        for f in np.unique(file_of):
            sel = indices[file_of == f]
            rows = sel - self.files[f].first_index
            bounds = np.cumsum((0,) + self.files[f].group_rows)
            group_of = np.searchsorted(bounds, rows, side="right") - 1
            for g in np.unique(group_of):
                mask = group_of == g
                out.append(Unit(int(f), int(g), sel[mask], rows[mask] - bounds[g]))
        return out

    def read_unit(self, unit: Unit, preprocess: Callable) -> list[tuple]:
        """Decoded items ``(index, pixels or None, error or None, content hash)`` of one unit."""
        from saevlm.data.decode import decode_image

        column = self._group_images(unit.file, unit.group)
        out = []
        for index, row in zip(unit.indices.tolist(), unit.rows.tolist()):
            data = column[row]
            if data is None:
                out.append((index, None, "no image bytes in this row", 0))
                continue
            out.append((index, *decode_image(data, preprocess)))
        return out

    def batches(self, indices: np.ndarray, preprocess: Callable, batch_size: int, num_workers: int,
                pin_memory: bool = False):
        """ImageBatch-es of ``batch_size`` images in the order of ``indices`` (increasing): workers
        decode and collate whole row-group units, the main process cuts them into batches of
        exactly ``batch_size`` (the same batches as for a folder, so the same numbers)."""
        import torch

        order = np.asarray(indices, dtype=np.int64)
        if len(order) > 1 and (np.diff(order) <= 0).any():
            raise ValueError("hub images are read in increasing index order")
        loader = torch.utils.data.DataLoader(_UnitDataset(self, self.units(order), preprocess), batch_size=None,
                                             shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                                             pin_memory=False, persistent_workers=False)
        parts: list = []
        have = 0
        for unit_batch in loader:
            parts.append(unit_batch)
            have += len(unit_batch.hashes)
            while have >= batch_size:
                batch, parts = _take(parts, batch_size)
                have -= batch_size
                yield batch
        if have:
            yield _take(parts, have)[0]


def _split(b, m: int):
    """(first ``m`` images, the rest) of an ImageBatch (images in increasing index order)."""
    from saevlm.data.decode import ImageBatch

    last = b.hashes[m - 1][0]
    g = sum(1 for i in b.good if i <= last)
    nb = sum(1 for i, _ in b.bad if i <= last)
    head = ImageBatch(b.good[:g], b.pixels[:g] if b.pixels is not None and g else None, b.bad[:nb], b.hashes[:m])
    rest_pixels = b.pixels[g:] if b.pixels is not None and g < len(b.good) else None
    return head, ImageBatch(b.good[g:], rest_pixels, b.bad[nb:], b.hashes[m:])


def _take(parts: list, m: int):
    """An ImageBatch of the first ``m`` images held by ``parts``, and the parts left."""
    taken = []
    while m > 0:
        b = parts.pop(0)
        if len(b.hashes) > m:
            b, rest = _split(b, m)
            parts.insert(0, rest)
        taken.append(b)
        m -= len(b.hashes)
    if len(taken) == 1:
        return taken[0], parts
    return _concat(taken), parts


def _concat(batches: list):
    """One ImageBatch of several, in order."""
    import torch

    from saevlm.data.decode import ImageBatch

    pix = [b.pixels for b in batches if b.pixels is not None]
    return ImageBatch([i for b in batches for i in b.good], torch.cat(pix) if pix else None,
                      [x for b in batches for x in b.bad], [h for b in batches for h in b.hashes])


def _as_is(x):
    return x


class _UnitDataset:
    """Map-style: item ``u`` = the decoded, collated images of unit ``u`` (one row group's share)."""

    def __init__(self, images: HubImageList, units: list[Unit], preprocess: Callable):
        self.images, self.units, self.preprocess = images, units, preprocess

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, u: int):
        from saevlm.data.decode import collate_images

        return collate_images(self.images.read_unit(self.units[u], self.preprocess))


def open_hub_dataset(spec: str, split: str | None) -> HubImageList:
    return HubImageList(spec, split)


def write_parquet_dataset(root: str | os.PathLike, splits: dict[str, tuple[list[bytes], list[int]]],
                          class_names: list[str], files_per_split: int = 1, row_group_rows: int = 100) -> Path:
    """Write images in the hub's layout (``data/<split>-0000i-of-0000n.parquet`` with an Image and a
    ClassLabel column, as ``datasets`` writes them): ``splits`` = {split: (image bytes, labels)}.
    For tests, benchmarks and for converting a folder once."""
    import datasets
    import pyarrow.parquet as pq

    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    for split, (images, labels) in splits.items():
        bounds = np.linspace(0, len(images), files_per_split + 1).astype(int)
        for i in range(files_per_split):
            a, b = int(bounds[i]), int(bounds[i + 1])
            ds = datasets.Dataset.from_dict({"image": [{"bytes": x, "path": None} for x in images[a:b]],
                                             "label": list(labels[a:b])}, features=features)
            table = ds.with_format("arrow")[:]
            table = table.replace_schema_metadata(ds.data.table.schema.metadata)
            pq.write_table(table, root / "data" / f"{split}-{i:05d}-of-{files_per_split:05d}.parquet",
                           row_group_size=row_group_rows)
    return root

