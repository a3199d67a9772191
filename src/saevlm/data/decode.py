"""From an image file's bytes to a batch: the content hash, the decode, the collation. Shared by
the dataset readers (:mod:`saevlm.data.images` for folders, :mod:`saevlm.data.hub` for hub
datasets), so neither imports the other for it."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, NamedTuple


def content_hash(data: bytes) -> int:
    """A 64-bit hash of an image file's bytes (BLAKE2b, as a signed int64 so it fits an int64 array;
    never 0, which stands for "unreadable")."""
    h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
    return h or 1


def decode_image(data: bytes, preprocess: Callable) -> tuple[Any, str | None, int]:
    """(pixels or None, error or None, content hash) of one image file's bytes: the hash is
    taken from the same bytes that are decoded."""
    import io

    from PIL import Image

    digest = content_hash(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return preprocess(img.convert("RGB")), None, digest
    except Exception as err:  # noqa: BLE001 - any decode failure is reported with its path
        return None, f"{type(err).__name__}: {err}", digest


class ImageBatch(NamedTuple):
    """A collated batch: ``good`` dataset indices with their ``pixels``, ``bad`` (index, error)
    pairs, and ``hashes`` (index, content hash) of every image of the batch in order. A
    NamedTuple, so the DataLoader pins its pixels."""

    good: list[int]
    pixels: Any
    bad: list[tuple[int, str]]
    hashes: list[tuple[int, int]]


def collate_images(batch) -> ImageBatch:
    from saevlm.models.base import stack_pixels

    good = [(i, x) for i, x, err, _ in batch if err is None]
    bad = [(i, err) for i, _, err, _ in batch if err is not None]
    pixels = stack_pixels([x for _, x in good]) if good else None
    return ImageBatch([i for i, _ in good], pixels, bad, [(i, h) for i, _, _, h in batch])
