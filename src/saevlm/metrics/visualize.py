"""``saevlm visualize``: PNG grids of neurons' top-16 images and MS histograms.

Grids: 4 x 4, highest-activating first (row-major), titled with the neuron id, its MS and its
Matryoshka group, each image labelled with its activation. Images are read back from the
dataset named in the store's provenance (checked against its fingerprint; ``--data_path``
points to a moved copy). Histogram: MS of SAE latents against raw neurons.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, OutputOption, opt
from saevlm.data import artifacts as A
from saevlm.data.atomic import atomic_write_json
from saevlm.errors import UserError
from saevlm.metrics.figures import group_of, open_store_images, save_grid, save_histogram  # noqa: F401


@dataclass(frozen=True, kw_only=True)
class VisualizeConfig(CommandConfig, OutputOption):
    """`saevlm visualize`: PNG grids of neurons' top images and MS histograms."""

    COMMAND: ClassVar[str] = "visualize"
    OUTPUT_DEFAULT: ClassVar[str] = '<activations_dir>/figures'

    activations_dir: str | None = opt(None)
    """store with top_images_<k>.npy (saevlm top-images) and <ms_subdir>/scores.npy"""
    neurons: list[int] | None = opt(None, mutex='neurons+per_group')
    """neurons to draw"""
    per_group: int | None = opt(None, mutex='neurons+per_group')
    """the first n neurons of each Matryoshka group (default: 4, or the top-4 MS neurons without groups)"""
    k: int = opt(16)
    """top-k file to read (default: %(default)s; 16 are drawn)"""
    ms_subdir: str | None = opt(None)
    """the MS folder inside the store (default: its single ms*/ folder, e.g. ms_dinov2-base)"""
    raw_ms: str | None = opt(None)
    """scores.npy of raw neurons (or a raw store with <ms_subdir>/scores.npy) for the histogram"""
    data_path: str | None = opt(None)
    """dataset root, if it moved since extraction"""
    histogram_only: bool = opt(False)
    """draw only the MS histogram"""
    top_k: int | None = opt(None, group="the authors' visualize_neurons.py flags (their --output_dir is the store directory: without --activations_dir, figures go to <output_dir>/tree/)")
    """same as --k"""
    hai_indices_path: str | None = opt(None, group="the authors' visualize_neurons.py flags (their --output_dir is the store directory: without --activations_dir, figures go to <output_dir>/tree/)")
    """top images to draw (an authors' hai_indices_<k>.npy is read in their order); its folder is the store
    when --activations_dir is not given"""
    group_fractions: list[float] | None = opt(None, group="the authors' visualize_neurons.py flags (their --output_dir is the store directory: without --activations_dir, figures go to <output_dir>/tree/)")
    """Matryoshka groups as fractions (default: the SAE's own group sizes)"""
    dataset_name: str | None = opt(None, group="the authors' visualize_neurons.py flags (their --output_dir is the store directory: without --activations_dir, figures go to <output_dir>/tree/)")
    """checked: must be the store's dataset"""
    split: str | None = opt(None, group="the authors' visualize_neurons.py flags (their --output_dir is the store directory: without --activations_dir, figures go to <output_dir>/tree/)")
    """checked: must be the store's split"""
    visualization_size: int = opt(160, group="the authors' visualize_neurons.py flags (their --output_dir is the store directory: without --activations_dir, figures go to <output_dir>/tree/)")
    """pixels per grid cell (default: %(default)s)"""


CONFIG = VisualizeConfig


def _store_and_output(args: VisualizeConfig):
    """The store drawn, and where the figures go (the authors' form: the store is --output_dir or
    the hai file's folder, figures in <output_dir>/tree/)."""
    from saevlm.data.open import open_any_store

    if args.activations_dir is not None:
        store = open_any_store(args.activations_dir, allow_top_images=True)
        return store, Path(args.output_dir) if args.output_dir else store.path / "figures"
    if args.hai_indices_path is None and args.output_dir is None:
        raise UserError("--activations_dir: required (or the authors' --output_dir / --hai_indices_path)")
    store = open_any_store(Path(args.hai_indices_path).parent if args.hai_indices_path
                           else args.output_dir, field="output_dir", allow_top_images=True)
    return store, Path(args.output_dir) / "tree" if args.output_dir else store.path / "figures"


def _raw_scores(args: VisualizeConfig):
    """--raw_ms: the raw neurons' MS for the histogram's comparison, or None."""
    from saevlm.metrics.results import find_ms_dir

    if not args.raw_ms:
        return None
    rp = Path(args.raw_ms)
    if rp.suffix != ".npy":
        rp = find_ms_dir(rp, args.ms_subdir, "raw_ms", required=True) / A.MS_SCORES
    if not rp.is_file():
        raise UserError(f"--raw_ms {args.raw_ms}: no scores file at {rp} (run saevlm ms on it)")
    return np.load(rp)


def _alive(store, values, kth) -> np.ndarray:
    """A latent is dead here when even its best image does not activate it: its "top" images would
    be the first images in dataset order, which say nothing about it (SAE codes are >= 0, so "best
    value 0" means never active; raw neurons are never dead here)."""
    if store.provenance.sae is None:
        return np.ones(len(values), dtype=bool)
    if not np.isnan(values[:, 0]).all():
        return np.nan_to_num(values[:, 0], nan=0.0) > 0
    return kth > 0  # an authors' hai file: only the k-th value is known


def _neurons_drawn(args: VisualizeConfig, alive: np.ndarray, groups, ms) -> np.ndarray:
    """--neurons, else the first live ones of each Matryoshka group, else the best by MS."""
    from saevlm.sae.archs import group_bounds

    if args.neurons:
        neurons = np.asarray(args.neurons)
        bad = neurons[(neurons < 0) | (neurons >= len(alive))]
        if len(bad):
            raise UserError(f"--neurons {bad[0]}: out of range (0..{len(alive) - 1})")
        return neurons
    n = args.per_group or 4
    if groups:
        starts = group_bounds(groups)[:-1]
        neurons = np.concatenate([np.flatnonzero(alive[s:s + g])[:n] + s for s, g in zip(starts, groups)])
    else:
        order = np.argsort(-np.nan_to_num(ms, nan=-np.inf)) if ms is not None else np.arange(len(alive))
        neurons = order[alive[order]][:n]
    dead = int((~alive).sum())
    if dead:
        print(f"note: left out {dead} dead latent(s) of {len(alive)} (never active on these images); "
              f"name them with --neurons to draw them anyway", file=sys.stderr)
    return neurons


def _grids(args: VisualizeConfig, store, ms):
    """(images, top, values, [(neuron, title)]) of the grids to draw, all checked before any is written."""
    from saevlm.data.topimages import load_top_images_for
    from saevlm.sae.archs import resolve_group_sizes

    top, kth, values = load_top_images_for(store.path, args.k, args.hai_indices_path, store)
    if values is None:  # an authors' file: the k-th value is known, the others are not
        values = np.full(top.shape, np.nan, dtype=np.float32)
        values[:, -1] = kth
    sae = store.provenance.sae
    groups = resolve_group_sizes(args.group_fractions, sae.group_sizes if sae is not None else None, len(top))
    neurons = _neurons_drawn(args, _alive(store, values, kth), groups, ms)
    images = open_store_images(store, args.data_path)
    if hasattr(images, "check"):
        images.check(top[np.asarray(neurons, dtype=np.int64)][:, :16])  # before any figure is written
    grids = []
    for neuron, g in zip(neurons, group_of(neurons, groups)):
        score = f"{ms[neuron]:.3f}" if ms is not None and not np.isnan(ms[neuron]) else "n/a"
        title = f"neuron {int(neuron)}  |  MS {score}" + (f"  |  group {int(g)}" if groups else "")
        if values[neuron][min(15, args.k - 1)] == 0:
            title += "  |  near-dead (k-th value 0)"
        grids.append((neuron, title))
    return images, top, values, grids


def run(args: VisualizeConfig) -> int:
    if args.top_k is not None:
        args = dataclasses.replace(args, k=args.top_k)  # the authors' name for --k
    store, out = _store_and_output(args)
    from saevlm.data.images import check_dataset_flags
    check_dataset_flags(store.provenance.dataset, args.dataset_name, args.data_path,
                        args.split, f"the store {store.path}")
    from saevlm.metrics.results import find_ms_dir, load_ms_scores
    ms_dir = find_ms_dir(store.path, args.ms_subdir, "activations_dir", required=args.histogram_only)
    ms = load_ms_scores(ms_dir, store.num_neurons, "ms_subdir", store) if ms_dir else None
    raw = _raw_scores(args)
    # Validate everything before writing anything: a failing call must not replace figures.
    images, top, values, grids = _grids(args, store, ms) if not args.histogram_only else (None, None, None, [])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if ms is not None:
        path = out / "ms_histogram.png"
        save_histogram(ms, raw, path)
        written.append(path)
    for neuron, title in grids:
        path = out / f"neuron_{int(neuron):06d}.png"
        save_grid(images, top[neuron][:16], values[neuron][:16], title, path, size=args.visualization_size)
        written.append(path)
    atomic_write_json(out / A.FIGURES_INDEX, [str(p.name) for p in written])
    print(f"wrote {len(written)} figure(s) to {out}")
    return 0
