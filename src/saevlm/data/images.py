"""Image datasets with a fixed, documented order (docs/datasets.md).

Order = torchvision's ``ImageFolder`` order, which is also the order of torchvision's
``ImageNet``: class folders sorted by name, then files sorted by path within each class folder
(recursively, ``os.walk`` sorted). The dataset index of an image is its position in that list;
``--take_every n`` keeps indices 0, n, 2n, ... All stores record the dataset index of every
row, so indices never shift silently: an unreadable image stops the run with its path, or
with ``--skip_bad_images`` is logged and listed in the manifest.

Supported (``--dataset_name``):
- ``imagenet``: ``<data_path>/{train,val}/<wnid>/*.JPEG`` (torchvision ``ImageNet`` layout, with
  its ``meta.bin`` giving class names when present, or plain class folders).
- ``inat`` (alias ``inat2021``): iNaturalist 2021, ``<data_path>/{train,train_mini,val}/<NNNNN_Kingdom_
  Phylum_Class_Order_Family_Genus_species>/*.jpg``; the taxonomy is parsed from the folder names.
- ``imagefolder``: any ``<data_path>[/<split>]/<class>/<image>`` tree.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from saevlm.data.decode import collate_images, decode_image
from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import DatasetInfo

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("imagenet", "inat", "inat2021", "imagefolder")
INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


@dataclass
class ImageList:
    """An ordered list of images with class labels."""

    name: str
    root: Path
    split: str | None
    split_dir: Path
    paths: list[str]  # relative to split_dir, in dataset order
    labels: np.ndarray  # int64 class index per image
    classes: list[str]  # class folder names, sorted
    class_names: list[str] | None = None  # human-readable names (ImageNet meta.bin)
    taxonomy: list[list[str]] | None = None  # per class: names from the root level down (iNat)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.split_dir / self.paths[index]

    def name_of(self, index: int) -> str:
        """Image ``index`` as recorded in manifests: its path relative to the split folder."""
        return str(self.paths[index])

    def file_name(self, index: int) -> str:
        return Path(self.paths[index]).name

    def read_bytes(self, index: int) -> bytes:
        return self.path(index).read_bytes()

    def batches(self, indices: np.ndarray, preprocess: Callable, batch_size: int, num_workers: int,
                pin_memory: bool = False):
        """Collated :class:`ImageBatch` es of the images at ``indices``, in order."""
        import torch

        return torch.utils.data.DataLoader(
            ImageDataset(self, indices, preprocess), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, collate_fn=collate_images, pin_memory=pin_memory,
            persistent_workers=False)

    def paths_sha256(self, indices: Sequence[int] | np.ndarray) -> str:
        """Fingerprint of the selected images (their relative paths, in order)."""
        h = hashlib.sha256()
        for i in indices:
            h.update(self.paths[int(i)].encode())
            h.update(b"\n")
        return h.hexdigest()

    def provenance(self, selected: np.ndarray, take_every: int, max_images: int | None) -> DatasetInfo:
        from saevlm.data.manifest import DatasetInfo

        return DatasetInfo(name=self.name, root=str(self.root.resolve()), split=self.split,
                           num_images_in_split=len(self.paths), num_classes=len(self.classes),
                           take_every=take_every, max_images=max_images,
                           num_selected=int(len(selected)), paths_sha256=self.paths_sha256(selected))

    def classes_json(self) -> dict:
        out: dict[str, Any] = {"classes": self.classes}
        if self.class_names is not None:
            out["names"] = self.class_names
        if self.taxonomy is not None:
            out["taxonomy_levels"] = list(INAT_LEVELS)
            out["taxonomy"] = self.taxonomy
        return out


def scan_class_folders(split_dir: Path, field: str = "data_path") -> tuple[list[str], list[str], np.ndarray]:
    """torchvision ``ImageFolder`` order: sorted classes, then sorted paths inside each class."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        loose = [e.name for e in os.scandir(split_dir) if e.name.lower().endswith(IMG_EXTENSIONS)]
        hint = (f" It holds {len(loose)} loose images: class folders are expected (for the raw "
                f"ImageNet val set, sort it into <wnid>/ folders first, e.g. by instantiating "
                f"torchvision.datasets.ImageNet(root, split='val') once).") if loose else ""
        raise UserError(f"{field} {split_dir}: no class folders found.{hint}", field=field)
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    skipped: dict[str, int] = {}
    for label, cls in enumerate(classes):
        found = _class_images(split_dir, cls, skipped)
        paths += found
        labels += [label] * len(found)
        if not found:
            empty.append(cls)
    if not paths:
        raise UserError(f"{field} {split_dir}: {len(classes)} class folders but no images "
                        f"(extensions {', '.join(IMG_EXTENSIONS)})", field=field)
    _note_skipped(split_dir, field, skipped, empty)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _class_images(split_dir: Path, cls: str, skipped: dict[str, int]) -> list[str]:
    """One class folder's image paths (relative to ``split_dir``, sorted, subfolders followed);
    other files are counted by extension in ``skipped`` (hidden files ignored)."""
    paths = []
    for dirpath, _dirs, files in sorted(os.walk(split_dir / cls, followlinks=True)):
        for fname in sorted(files):
            if fname.lower().endswith(IMG_EXTENSIONS):
                paths.append(os.path.relpath(os.path.join(dirpath, fname), split_dir))
            elif not fname.startswith("."):
                ext = os.path.splitext(fname)[1].lower() or "(no extension)"
                skipped[ext] = skipped.get(ext, 0) + 1
    return paths


def _note_skipped(split_dir: Path, field: str, skipped: dict[str, int], empty: list[str]) -> None:
    """Say on stderr which files were not taken as images and which class folders are empty."""
    import sys

    if skipped:
        kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
        print(f"note: {field} {split_dir}: skipped {sum(skipped.values())} files that are not images of the "
              f"supported kinds ({kinds}; supported: {', '.join(IMG_EXTENSIONS)})", file=sys.stderr)
    if empty:
        print(f"note: {field} {split_dir}: {len(empty)} class folders hold no images (first: {empty[0]}); "
              f"they keep their label index, as in torchvision's ImageFolder order", file=sys.stderr)


def parse_inat_folder(name: str) -> list[str]:
    """``00000_Animalia_Arthropoda_Arachnida_Araneae_Araneidae_Araneus_diadematus`` -> the 7 names
    kingdom .. species (species as 'Genus epithet', since epithets repeat across genera)."""
    parts = name.split("_")
    if len(parts) < 8 or not parts[0].isdigit():
        raise UserError(f"iNat class folder {name!r}: expected 'NNNNN_Kingdom_Phylum_Class_Order_"
                        f"Family_Genus_species'")
    genus, epithet = parts[6], "_".join(parts[7:])
    return parts[1:7] + [f"{genus} {epithet}"]


def _imagenet_names(root: Path, classes: list[str]) -> list[str] | None:
    meta = root / "meta.bin"
    if not meta.is_file():
        return None
    import torch

    wnid_to_classes = torch.load(meta, weights_only=False)[0]
    return [", ".join(wnid_to_classes[c]) if c in wnid_to_classes else c for c in classes]


def _split_dir(name: str, root: Path, split: str | None) -> Path:
    """The folder of ``--split`` inside the root (the root itself for an imagefolder without one)."""
    if name == "imagefolder":
        split_dir = root / split if split else root
        if split and not split_dir.is_dir():
            raise UserError(f"split {split}: {split_dir} does not exist (omit --split to use "
                            f"{root} itself)", field="split")
        return split_dir
    if not split:
        raise UserError(f"split: required for --dataset_name {name} (e.g. train or val)", field="split")
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        raise UserError(f"split {split}: {split_dir} does not exist (folders in --data_path: "
                        f"{', '.join(found) or 'none'})", field="split")
    return split_dir


def open_dataset(name: str, data_path: str | os.PathLike | None, split: str | None):
    """Open a dataset by ``--dataset_name`` / ``--data_path`` / ``--split``; errors name the field.

    ``hf:<repo id or directory>`` as either field opens a hub dataset instead
    (:class:`saevlm.data.hub.HubImageList`, same interface)."""
    from saevlm.data.hub import hub_spec

    spec = hub_spec(name, data_path)
    if spec is not None:
        from saevlm.data.hub import open_hub_dataset
        return open_hub_dataset(spec, split)
    if name not in DATASETS:
        raise UserError(f"dataset_name {name!r}: unknown; expected one of {', '.join(DATASETS)}", field="dataset_name")
    if not data_path:
        raise UserError("data_path: required (the dataset's root directory)", field="data_path")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise UserError(f"data_path {root}: no such directory", field="data_path")
    split_dir = _split_dir(name, root, split)
    classes, paths, labels = scan_class_folders(split_dir)
    images = ImageList(name="inat" if name == "inat2021" else name, root=root, split=split,
                       split_dir=split_dir, paths=paths, labels=labels, classes=classes)
    if name == "imagenet":
        images.class_names = _imagenet_names(root, classes)
    elif name in ("inat", "inat2021"):
        images.taxonomy = [parse_inat_folder(c) for c in classes]
    return images


def select_indices(num_images: int, take_every: int, max_images: int | None) -> np.ndarray:
    if take_every < 1:
        raise UserError(f"take_every {take_every}: expected a positive integer", field="take_every")
    if max_images is not None and max_images < 1:
        raise UserError(f"max_images {max_images}: expected a positive integer", field="max_images")
    selected = np.arange(0, num_images, take_every, dtype=np.int64)
    return selected[:max_images] if max_images is not None else selected


class ImageDataset:
    """A map-style dataset over selected images; a read error comes back as data, not an
    exception, so the main process can name the file and decide (stop or skip).

    Each item is ``(dataset index, pixels or None, error or None, content hash)``: the hash of
    the file's bytes (:func:`content_hash`, 0 if the file could not be read) is computed from the
    same bytes that are decoded, so a store's fingerprint covers exactly the pictures it holds."""

    def __init__(self, images: ImageList, indices: np.ndarray, preprocess: Callable):
        self.images, self.indices, self.preprocess = images, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        try:
            data = self.images.read_bytes(index)
        except Exception as err:  # noqa: BLE001 - reported with the image's path
            return index, None, f"{type(err).__name__}: {err}", 0
        return (index, *decode_image(data, self.preprocess))


def check_dataset_flags(dataset: DatasetInfo, dataset_name: str | None, data_path: str | None,
                        split: str | None, what: str) -> None:
    """The authors' analysis scripts take ``--dataset_name/--data_path/--split`` to re-open the
    images; saevlm knows them from the store's provenance. When given, they must name the same
    images: same dataset kind and split, and (for another root, e.g. a moved copy) the same
    image list, else a clear error."""
    if dataset.name == "hf":  # a hub dataset: its root is the hf:<id> spec, and splits may say "validation"
        _check_hub_flags(dataset, dataset_name, data_path, split, what)
        return
    if dataset_name is not None:
        want = "inat" if dataset_name == "inat2021" else dataset_name
        have = dataset.name
        if want != have and not (want == "imagefolder" and have in ("imagenet", "inat")):
            raise UserError(f"dataset_name {dataset_name}: {what} was made from the {have!r} dataset", field="dataset_name")
    if split is not None and dataset.split not in (None, split):
        raise UserError(f"split {split}: {what} was made from the {dataset.split!r} split", field="split")
    if data_path is not None:
        _check_same_image_list(dataset, Path(data_path).expanduser(), split, what)


def _check_hub_flags(dataset: DatasetInfo, dataset_name: str | None, data_path: str | None,
                     split: str | None, what: str) -> None:
    from saevlm.data.hub import hub_spec

    given = hub_spec(dataset_name, data_path)
    if given is not None and f"hf:{given}" != dataset.root:
        raise UserError(f"data_path hf:{given}: {what} was made from {dataset.root}", field="data_path")
    if split is not None and split not in (dataset.split, "val" if dataset.split == "validation" else None):
        raise UserError(f"split {split}: {what} was made from the {dataset.split!r} split", field="split")


def _check_same_image_list(dataset: DatasetInfo, root: Path, split: str | None, what: str) -> None:
    """``--data_path`` elsewhere than the recorded root (a moved copy) must list the same images."""
    if not root.is_dir():
        raise UserError(f"data_path {root}: no such directory", field="data_path")
    if str(root.resolve()) == dataset.root:
        return
    images = open_dataset(dataset.name or "imagefolder", root, split if split is not None else dataset.split)
    selected = select_indices(len(images), dataset.take_every or 1, dataset.max_images)
    if images.paths_sha256(selected) != dataset.paths_sha256:
        raise UserError(f"data_path {root}: its images differ from those {what} was made from "
                        f"({dataset.root}, {dataset.num_selected} images)", field="data_path")


def load_class_names(path: str) -> dict[str, str]:
    """``--class_names FILE``: JSON, either ``{"0": ["n01440764", "tench"], ...}`` (the
    index -> [wnid, name] layout of the class-name list the authors embed) or ``{wnid: name}``."""
    import json

    f = Path(path)
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"class_names {f}: cannot read it as JSON ({e})", field="class_names") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"class_names {f}: expected a JSON object", field="class_names")
    first = next(iter(data.values()))
    if isinstance(first, list):
        return {str(v[0]): str(v[1]) for v in data.values()}
    return {str(k): str(v) for k, v in data.items()}
