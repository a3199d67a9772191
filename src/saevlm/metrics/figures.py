"""Figures of neurons: 4 x 4 grids of top images and MS histograms (used by ``visualize`` and
``report``), and reading a store's images back from its dataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from saevlm.data.atomic import atomic_savefig
from saevlm.errors import UserError


def group_of(neurons: np.ndarray, group_sizes: list[int] | None) -> np.ndarray:
    """Matryoshka group index of each neuron (0 when the SAE has no groups)."""
    if not group_sizes:
        return np.zeros(len(neurons), dtype=np.int64)
    return np.searchsorted(np.cumsum(group_sizes), neurons, side="right")


class VerifiedImages:
    """A store's dataset whose every read is checked against the content hash the store recorded
    for that image, so other pictures under the same file names are never shown as its images."""

    def __init__(self, images, hashes: dict[int, int], root, field: str = "data_path"):
        self.images, self.hashes, self.root, self.field = images, hashes, root, field
        self.verified: set[int] = set()

    def __getattr__(self, name):
        return getattr(self.images, name)

    def read_bytes(self, index: int) -> bytes:
        from saevlm.data.decode import content_hash

        data = self.images.read_bytes(index)
        want = self.hashes.get(int(index))
        if want is not None and data is not None and content_hash(data) != want:
            name = self.images.name_of(int(index)) if hasattr(self.images, "name_of") else str(index)
            raise UserError(f"{self.field} {self.root}: image {index} ({name}) is not the picture the store was made "
                            f"from (its content hash differs); the folder holds other pictures under the same "
                            f"file names. Pass --data_path with the original images", field=self.field)
        self.verified.add(int(index))
        return data

    def check(self, indices) -> None:
        """Verify these images now (before anything is written)."""
        for i in sorted({int(i) for i in np.asarray(indices).ravel()} - self.verified):
            self.read_bytes(i)


def _open_recorded_dataset(store):
    """The dataset at the root a store's provenance records (an error saying how to point at a moved one)."""
    from saevlm.data.images import open_dataset

    ds = store.provenance.dataset
    try:
        return open_dataset(ds.name, ds.root, ds.split)
    except UserError as err:
        raise UserError(f"{store.path}: the dataset it was extracted from ({ds.name}, split {ds.split}, at "
                        f"{ds.root}) cannot be opened ({err}); if it moved, pass --data_path with its new "
                        f"folder") from None


def open_store_images(store, data_path: str | None = None, field: str = "data_path"):
    """The dataset of a store's provenance, verified to be the same image list, with every image
    read checked against the store's recorded content hashes (where recorded)."""
    from saevlm.data.images import open_dataset, select_indices

    ds = store.provenance.dataset
    if ds.name in (None, "synthetic"):
        raise UserError(f"{store.path}: a {ds.name or 'dataset-less'} store has no images to show "
                        f"(use --histogram_only)")
    root = data_path or ds.root
    if data_path is None:  # the user passed no dataset field: never blame one they did not pass
        field = f"the dataset {store.path} was extracted from"
        images = _open_recorded_dataset(store)
    else:
        images = open_dataset(ds.name, root, ds.split)
    selected = select_indices(len(images), ds.take_every or 1, ds.max_images)
    if images.paths_sha256(selected) != ds.paths_sha256:
        raise UserError(f"{field} {root}: its images differ from those the store was made from "
                        f"(fingerprint mismatch); point --data_path at the same dataset", field=field)
    hashes = store.image_hashes() if hasattr(store, "image_hashes") else None
    if hashes is None:
        return images
    return VerifiedImages(images, {int(i): int(h) for i, h in np.asarray(hashes)}, root, field)


def save_grid(images, image_ids, values, title: str, path: Path, size: int = 160) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(4, 4, figsize=(8, 8.6))
    for ax, idx, v in zip(axes.flat, list(image_ids) + [None] * 16, list(values) + [None] * 16):
        ax.axis("off")
        if idx is None:
            continue
        with Image.open(io.BytesIO(images.read_bytes(int(idx)))) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            ax.imshow(np.asarray(im))
        ax.set_title(f"#{int(idx)}  a={v:.3g}", fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def save_histogram(sae_scores, raw_scores, path: Path, labels=("SAE latents", "raw neurons")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = [(s[~np.isnan(s)], label) for s, label in ((sae_scores, labels[0]), (raw_scores, labels[1]))
              if s is not None]
    lo = min([0.0] + [float(s.min()) for s, _ in series if len(s)])
    bins = np.linspace(lo, 1, 41)  # one set of bins for both series, so their bars compare
    for s, label in series:
        if len(s):
            ax.hist(np.clip(s, lo, 1), bins=bins, alpha=0.6, density=True,
                    label=f"{label} (n={len(s)}, mean {s.mean():.3f})")
    ax.set_xlabel("Monosemanticity Score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
