"""Top-activating images per neuron (the authors' ``find_hai_indices.py``), one streaming pass.

For every neuron: the k image indices with the highest activation, highest first (equal values
ordered by lower row), and the k-th value (the authors' "worst" value; 0 marks a neuron active
on fewer than k images, left out as near-dead by later analyses). The store is never loaded
whole: a running top-k is merged chunk by chunk.

- Dense stores (raw neurons): per chunk ``torch.topk`` over rows, merged with the running list.
- Code stores (SAE latents, non-negative): only the non-zeros are merged (a lexsort of
  running entries + the chunk's non-zeros); neurons with fewer than k non-zeros are padded
  with the lowest-row images where they are 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, DeviceOption, OutputOption, ProgressOption, opt
from saevlm.config import paper_default
from saevlm.data.topimages import (latent_value_row_order, load_top_images,  # noqa: F401 (the loaders
                                   load_top_images_for)  # are re-exported)
from saevlm.errors import UserError


def top_k_dense(chunks, num_neurons: int, k: int, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """``chunks`` yields ``(start_row, acts [n, K])``; returns (rows [K, k], values [K, k])."""
    from saevlm.sae.pooled import RunningTopK

    top = RunningTopK(num_neurons, k, device=device)
    for start, acts in chunks:
        top.update(start, np.asarray(acts, dtype=np.float32))
    try:
        return top.result()
    except UserError:
        raise UserError(f"fewer than k = {k} rows in the store") from None


def top_k_csr(csr_chunks, num_neurons: int, num_rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``csr_chunks`` yields CSRChunk objects of non-negative codes; returns (rows, values) [K, k]."""
    if num_rows < k:
        raise UserError(f"--k {k}: the store has only {num_rows} rows")
    run_n = np.zeros(0, np.int64)  # neuron, value, row of the running top entries
    run_v = np.zeros(0, np.float32)
    run_r = np.zeros(0, np.int64)
    for ch in csr_chunks:
        vals = np.asarray(ch.values, dtype=np.float32)
        if len(vals) and vals.min() < 0:
            raise UserError("top-images: the code store holds negative codes; SAE codes are expected "
                            "to be non-negative")
        keep = vals > 0
        n = np.concatenate([run_n, np.asarray(ch.indices, dtype=np.int64)[keep]])
        v = np.concatenate([run_v, vals[keep]])
        r = np.concatenate([run_r, ch.row_ids()[keep] + ch.start])
        order = latent_value_row_order(n, v, r)  # by neuron, then value desc, then row asc
        n, v, r = n[order], v[order], r[order]
        first = np.searchsorted(n, n, side="left")
        rank = np.arange(len(n)) - first
        sel = rank < k
        run_n, run_v, run_r = n[sel], v[sel], r[sel]
    rows = np.empty((num_neurons, k), dtype=np.int64)
    values = np.zeros((num_neurons, k), dtype=np.float32)
    starts = np.searchsorted(run_n, np.arange(num_neurons + 1))
    for neuron in range(num_neurons):
        a, b = starts[neuron], starts[neuron + 1]
        c = b - a
        rows[neuron, :c] = run_r[a:b]
        values[neuron, :c] = run_v[a:b]
        if c < k:  # pad with zero-activation images, lowest rows first
            taken = set(run_r[a:b].tolist())
            pad = [x for x in range(k + c) if x not in taken][: k - c]
            rows[neuron, c:] = pad
    return rows, values


def pooled_chunks(store, how: str):
    """Per shard, the store's rows pooled per image (mean or max): CSRChunk for code stores,
    (start, dense) for activation stores. Shards hold whole images, so no image is split."""
    from saevlm.data.codes import CodeStore, CSRChunk

    start = 0
    for i in range(len(store.shards)):
        img = np.asarray(store.shard_rows(i))[:, 0]
        if len(img) == 0:
            continue
        first = np.ones(len(img), dtype=bool)
        first[1:] = img[1:] != img[:-1]
        group = np.cumsum(first) - 1  # image position within the shard, per row
        n_img = int(group[-1]) + 1
        counts = np.bincount(group, minlength=n_img)
        if isinstance(store, CodeStore):
            ch = store.shard_csr(i)
            rows = group[ch.row_ids()]
            keys = rows * store.dict_size + np.asarray(ch.indices, dtype=np.int64)
            uniq, inv = np.unique(keys, return_inverse=True)
            vals = np.asarray(ch.values, dtype=np.float64)
            if how == "mean":
                pooled = np.bincount(inv, weights=vals) / counts[uniq // store.dict_size]
            else:
                pooled = np.full(len(uniq), -np.inf)
                np.maximum.at(pooled, inv, vals)
                pooled = np.maximum(pooled, 0)  # an image with a zero row has max >= 0
            img_of = uniq // store.dict_size
            indptr = np.concatenate([[0], np.cumsum(np.bincount(img_of, minlength=n_img))])
            yield CSRChunk(start, indptr, (uniq % store.dict_size).astype(np.int32), pooled.astype(np.float32), store.dict_size)
        else:
            sh = store.shards[i]
            acts = store.read(sh.row_start, sh.row_start + sh.num_rows)
            starts = np.flatnonzero(first)
            red = np.add.reduceat(acts, starts, axis=0) / counts[:, None] if how == "mean" \
                else np.maximum.reduceat(acts, starts, axis=0)
            yield start, red
        start += n_img


@dataclass(frozen=True, kw_only=True)
class TopImagesConfig(CommandConfig, DeviceOption, ProgressOption, OutputOption):
    """`saevlm top-images`: the k highest-activating images of every neuron."""

    COMMAND: ClassVar[str] = "top-images"
    OUTPUT_DEFAULT: ClassVar[str] = "the store directory itself, for top_images_<k>.npy and the authors' hai_indices_<k>.npy"

    activations_dir: str = opt()
    """activation store (raw neurons) or code store (SAE latents), one row per image"""
    k: int = opt(paper_default("top-images", "k"))
    """images per neuron (default: %(default)s, the paper's grids)"""
    chunk_rows: int = opt(65536)
    """rows per streamed chunk (default: %(default)s)"""
    pool: str | None = opt(None, choices=['mean', 'max'])
    """stores with several rows per image (tokens): pool each image's rows first (the paper's steering SAE
    uses mean-pooled codes)"""
    allow_nonfinite: bool = opt(False)
    """rank stores holding NaN / inf (refused by default)"""
    dataset_name: str | None = opt(None, group="the authors' find_hai_indices.py flags (checked against the store)")
    """must be the store's dataset"""
    data_path: str | None = opt(None, group="the authors' find_hai_indices.py flags (checked against the store)")
    """must hold the store's images"""
    split: str | None = opt(None, group="the authors' find_hai_indices.py flags (checked against the store)")
    """must be the store's split"""
    chunk_size: int | None = opt(None, group="the authors' find_hai_indices.py flags (checked against the store)")
    """their neurons/rows per chunk; saevlm streams by --chunk_rows, so this only sets --chunk_rows"""


CONFIG = TopImagesConfig


def run(args: TopImagesConfig) -> int:
    import sys
    import time
    from pathlib import Path

    from tqdm import tqdm

    from saevlm.data.codes import CodeStore
    from saevlm.data.open import open_any_store
    from saevlm.device import resolve_device
    from saevlm.metrics.results import check_one_row_per_image

    t0 = time.time()
    if args.k < 1:
        raise UserError(f"--k {args.k}: expected a positive integer")
    if args.chunk_rows < 1:
        raise UserError(f"--chunk_rows {args.chunk_rows}: expected a positive integer")
    device = resolve_device(args.device)
    store = open_any_store(args.activations_dir, allow_top_images=True, allow_nonfinite=args.allow_nonfinite)
    from saevlm.data.images import check_dataset_flags
    check_dataset_flags(store.provenance.dataset, args.dataset_name, args.data_path, args.split,
                        f"--activations_dir {store.path}")
    if args.chunk_size is not None:
        if args.chunk_size < 1:
            raise UserError(f"--chunk_size {args.chunk_size}: expected a positive integer")
        args = dataclasses.replace(args, chunk_rows=args.chunk_size)  # their name for the same knob
    from saevlm.data.topimages import TopImagesStore, write_top_images
    if isinstance(store, TopImagesStore):
        if store.k != args.k:
            raise UserError(f"--activations_dir {store.path}: holds the top {store.k} images per latent "
                            f"(computed during extract --top_k {store.k}), not {args.k}")
        print(f"{store.path}: top-{store.k} images were computed during extraction "
              f"(top_images_{store.k}.npy, hai_indices_{store.k}.npy); nothing to do")
        return 0
    n_images = int(store.manifest.num_images if store.manifest.num_images is not None else store.num_rows)
    pooled = store.num_rows != n_images
    if pooled and not args.pool:
        raise UserError(f"--activations_dir {store.path}: {store.num_rows} rows for {n_images} images; "
                        f"pass --pool mean (or max) to rank images by their pooled codes")
    if not pooled:
        check_one_row_per_image(store, "activations_dir")
    if n_images < args.k:
        raise UserError(f"--k {args.k}: the store has only {n_images} images")
    from saevlm.data.atomic import OutputLock
    out = Path(args.output_dir) if args.output_dir else store.path
    lock = OutputLock(out, "output_dir", name=f".top_images_{args.k}.lock")  # writable, ours, before work
    bar = tqdm(total=n_images, unit="img", disable=args.no_progress, desc="top-images",
               dynamic_ncols=True, file=sys.stderr)

    def counted(it, size):
        for item in it:
            bar.update(size(item))
            yield item

    with bar:
        if pooled and isinstance(store, CodeStore):
            rows, values = top_k_csr(counted(pooled_chunks(store, args.pool), lambda c: c.num_rows),
                                     store.dict_size, n_images, args.k)
        elif pooled:
            rows, values = top_k_dense(counted(pooled_chunks(store, args.pool), lambda c: len(c[1])),
                                       store.num_neurons, args.k, device)
        elif isinstance(store, CodeStore):
            rows, values = top_k_csr(counted(store.iter_csr(args.chunk_rows), lambda c: c.num_rows),
                                     store.dict_size, store.num_rows, args.k)
        else:
            rows, values = top_k_dense(counted(store.iter_chunks(args.chunk_rows), lambda c: len(c[1])),
                                       store.num_neurons, args.k, device)
    image_ids = store.image_ids()
    images = image_ids[rows]
    from saevlm.data.stamps import source_stamp
    files = write_top_images(out, args.k, images, values, source=source_stamp(store))
    lock.release()
    near_dead = int((values[:, -1] == 0).sum())
    print(f"{store.num_neurons} neurons x top {args.k} images; {near_dead} with k-th value 0 (near-dead)")
    print(f"wrote {out}/{', '.join(files)} ({time.time() - t0:.1f} s)")
    return 0
