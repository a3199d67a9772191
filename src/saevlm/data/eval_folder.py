"""``saevlm make-eval-folder``: the first image of each class of a dataset, copied into a folder
(the paper's 1000-image ImageNet evaluation set for the steering score, arXiv 2504.02821 Sec. 4.3),
with class_names.json beside the images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saevlm.data import artifacts as A
from saevlm.commandline import CommandConfig, opt
from saevlm.data.images import load_class_names


@dataclass(frozen=True, kw_only=True)
class MakeEvalFolderConfig(CommandConfig):
    """`saevlm make-eval-folder`: first image of each class -> an eval folder."""

    COMMAND: ClassVar[str] = "make-eval-folder"

    dataset_name: str = opt('imagenet')
    """(default: %(default)s)"""
    data_path: str | None = opt(None, mutex='data_path+imagenet_root')
    """dataset root"""
    imagenet_root: str | None = opt(None, mutex='data_path+imagenet_root')
    """the authors' flag: the ImageNet root (saevlm reads its --split; their script needed the train folder
    itself); implies --layout flat"""
    split: str | None = opt(None)
    """split folder under the root (default: train, as the paper, which uses ImageNet train; for
    --dataset_name imagefolder the root itself)"""
    output_dir: str = opt('./images_imagenet')
    """where the copies go (default: %(default)s, the authors')"""
    layout: str | None = opt(None, choices=['flat', 'folders'])
    """flat: <wnid>_<file> as the authors' imagenet_subset.py (the default with --imagenet_root); folders:
    <wnid>/<file> (the default otherwise)"""
    class_names: str | None = opt(None)
    """JSON of class-name strings to store in class_names.json (see similarity-baseline)"""


    @property
    def root(self) -> str | None:
        return self.imagenet_root or self.data_path

    @property
    def chosen_layout(self) -> str:
        return self.layout or ("flat" if self.imagenet_root else "folders")

    @property
    def chosen_split(self) -> str | None:
        return self.split or (None if self.dataset_name == "imagefolder" else "train")


CONFIG = MakeEvalFolderConfig


def run(args: MakeEvalFolderConfig) -> int:
    from saevlm.data.atomic import atomic_write_json, check_not_own_input, ensure_writable_dir
    from saevlm.data.images import open_dataset
    check_not_own_input(args.output_dir, "output_dir", [("data_path", args.root)])
    layout = args.chosen_layout
    images = open_dataset(args.dataset_name, args.root, args.chosen_split)
    out = ensure_writable_dir(args.output_dir, "output_dir")  # a read-only output: one line, exit 2
    first: dict[int, int] = {}
    for i, label in enumerate(images.labels.tolist()):
        first.setdefault(label, i)
    for label, i in sorted(first.items()):
        cls, fname = images.classes[label], images.file_name(i)
        _copy_image(images, i, out / cls / fname if layout == "folders" else out / f"{cls}_{fname}")
    names = dict(zip(images.classes, images.class_names or images.classes))
    if args.class_names:
        names.update(load_class_names(args.class_names))
    atomic_write_json(out / A.EVAL_CLASS_NAMES, names)
    print(f"wrote {len(first)} images (the first of each class, layout {layout}) to {out}")
    return 0


def _copy_image(images, i: int, dest) -> None:
    """Image ``i``'s file, byte for byte (a hub dataset's bytes come from its parquet file)."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(images, "paths"):
        shutil.copy2(images.path(i), dest)
    else:
        dest.write_bytes(images.read_bytes(i))
