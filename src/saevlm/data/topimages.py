"""The top-images store: what ``extract --sae_path --mean_pool --top_k`` writes instead of codes
(a manifest plus ``top_images_<k>.npy`` and friends, see :mod:`saevlm.sae.pooled`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import Provenance

TOP_IMAGES_FORMAT = "saevlm-top-images"


class TopImagesStore:
    """Top images per latent, no codes. Enough for ``visualize``, ``hierarchy``, ``uniqueness``
    and ``steering-score``."""

    def __init__(self, path, flag: str = "--activations_dir"):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{flag} {self.path}: unreadable manifest.json ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != TOP_IMAGES_FORMAT:
            raise UserError(f"{flag} {self.path}: not a top-images store")
        if not self.manifest.get("complete"):
            raise UserError(f"{flag} {self.path}: the extraction that writes it has not finished; "
                            f"rerun the same extract command to resume it")
        try:
            self.dim = int(self.manifest["dim"])
            self.num_rows = int(self.manifest["num_images"])
            self.k = int(self.manifest["k"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{flag} {self.path}/manifest.json: damaged ({type(e).__name__}: {e}); rerun "
                            f"the extract command with --overwrite") from None

    @property
    def dict_size(self) -> int:
        return self.dim

    @property
    def num_neurons(self) -> int:
        return self.dim

    @property
    def provenance(self) -> Provenance:
        from saevlm.data.manifest import ManifestError, Provenance

        try:
            return Provenance.from_json(self.manifest.get("provenance"))
        except ManifestError as e:
            raise UserError(f"{self.path}/manifest.json: damaged ({e}); rerun the extract command with "
                            f"--overwrite") from None

    def image_ids(self) -> np.ndarray:
        return np.load(self.path / "image_ids.npy")


def load_top_images(directory, k: int, store=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top image ids [K, k], k-th values [K], all values [K, k]) written by ``saevlm top-images``.
    With ``store`` (the store they should describe): refused when stale (computed from an earlier
    version of it, ``top_images_<k>.json``) or of another size."""
    d = Path(directory)
    f = d / f"top_images_{k}.npy"
    if not f.is_file():
        raise UserError(f"--activations_dir {d}: no top_images_{k}.npy; run `saevlm top-images "
                        f"--activations_dir {d} --k {k}` first")
    top = np.load(f)
    if store is not None:
        import json

        from saevlm.metrics.results import check_fresh
        refresh = f"saevlm top-images --activations_dir {store.path} --k {k}"
        stamp = d / f"top_images_{k}.json"
        if stamp.is_file():
            try:
                source = json.loads(stamp.read_text()).get("source")
            except (OSError, ValueError, AttributeError):
                raise UserError(f"{stamp}: not valid JSON; refresh it with `{refresh}`") from None
            check_fresh(source, store, str(f), refresh)
        if top.ndim != 2 or len(top) != store.num_neurons:
            raise UserError(f"{f}: top images for {len(top)} neurons, but {store.path} has {store.num_neurons}; "
                            f"refresh it with `{refresh}`")
    return (top, np.load(d / f"top_images_{k}_kth_value.npy"), np.load(d / f"top_images_{k}_values.npy"))


def load_top_images_for(directory, k: int, hai_indices_path: str | None = None, store=None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top images for an analysis command: saevlm's files in ``directory``, or the file given by
    the authors' ``--hai_indices_path``. A ``hai_indices_<k>.npy`` file is in the authors' order
    (``argsort(a)[-k:]``: highest last) and is reversed here; its ``_worst.npy`` gives the k-th
    values. Values per image are known only when saevlm's ``top_images_<k>_values.npy`` is beside it
    and lists the same images."""

    if hai_indices_path is None:
        return load_top_images(directory, k, store)
    f = Path(hai_indices_path)
    if not f.is_file() and (Path(directory) / f.name).is_file():
        # the authors' path names the folder they passed as --activations_dir / --output_dir; saevlm
        # wrote the file inside the store that folder holds
        f = Path(directory) / f.name
    if not f.is_file():
        raise UserError(f"--hai_indices_path {f}: no such file (written by `saevlm top-images` or the "
                        f"authors' find_hai_indices.py)")
    top = np.load(f)
    if top.ndim != 2 or top.shape[1] != k:
        raise UserError(f"--hai_indices_path {f}: shape {top.shape}, expected [neurons, {k}] (--k {k})")
    authors_order = f.name.startswith("hai_indices")
    if authors_order:
        top = np.ascontiguousarray(top[:, ::-1])
    worst = f.with_name(f.name[:-4] + "_worst.npy")
    ours = f.parent / f"top_images_{k}.npy"
    values = None
    if ours.is_file() and np.array_equal(np.load(ours), top):
        _, kth, values = load_top_images(f.parent, k, store if f.parent == Path(directory) else None)
    elif worst.is_file():
        kth = np.load(worst)
    else:
        raise UserError(f"--hai_indices_path {f}: no {worst.name} beside it (the k-th values, which mark "
                        f"near-dead neurons)")
    return top, np.asarray(kth, dtype=np.float32), values
