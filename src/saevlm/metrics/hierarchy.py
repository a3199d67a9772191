"""Matryoshka hierarchy (the authors' ``inat_depth.py``; arXiv 2504.02821, App. E.3).

Per neuron: its 16 highest-activating images, the depth of the lowest common ancestor of every
image pair (depth = number of leading taxonomy names shared, so 0 = different kingdoms), over the
120 pairs. Two per-neuron summaries: the mean depth rounded to an integer (the paper's; numpy's
round-half-to-even) and the majority depth (the most frequent pair depth, ties to the shallower).
Per Matryoshka group (sizes int(f * n) for all groups but the last, which takes the rest): the
mean of the per-neuron values over neurons whose k-th value is not 0 (near-dead ones are left out
and counted), and MS mean / max / min when scores are given.

Taxonomies: the store's ``classes.json`` (iNat folder names, the synthetic world's paths) or,
for ImageNet, WordNet hypernym paths through nltk (``--taxonomy wordnet``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, OutputOption, opt
from saevlm.config import paper_default
from saevlm.data import artifacts as A
from saevlm.errors import UserError
from saevlm.metrics.lca import lca_depths, level_codes, majority  # noqa: F401 (used below; importable from here)
from saevlm.sae.archs import group_bounds, resolve_group_sizes


def wordnet_taxonomy(wnids: list[str]) -> list[list[str]]:
    try:
        from nltk.corpus import wordnet as wn
        wn.synsets("dog")
    except Exception as err:  # noqa: BLE001 - missing package or data: one message
        raise UserError(f"--taxonomy wordnet needs nltk and its WordNet data (pip install nltk; "
                        f"python -m nltk.downloader wordnet): {err}") from None
    out = []
    for wnid in wnids:
        syn = wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
        path = syn.hypernym_paths()[0]
        out.append([s.name() for s in path])
    return out


def hierarchy_table(top_images_kn, kth_value_k, labels_of_image, taxonomy, group_sizes_g,
                    ms_k=None) -> dict:
    codes = level_codes(taxonomy)
    labels = labels_of_image[top_images_kn]
    depths = lca_depths(labels, codes)
    mean_rounded = np.round(depths.mean(1))
    major = majority(depths)
    bounds = group_bounds(group_sizes_g)
    groups = []
    for g in range(len(group_sizes_g)):
        sl = np.arange(bounds[g], bounds[g + 1])
        alive = sl[kth_value_k[sl] > 0]
        row = {"group": g, "size": int(len(sl)), "neurons_scored": int(len(alive)),
               "left_out_near_dead": float(1 - len(alive) / max(len(sl), 1)),
               "lca_depth_mean_rounded": float(mean_rounded[alive].mean()) if len(alive) else None,
               "lca_depth_majority": float(major[alive].mean()) if len(alive) else None}
        if ms_k is not None:
            s = ms_k[sl]
            s = s[~np.isnan(s)]
            row.update(ms_mean=float(s.mean()) if len(s) else None, ms_max=float(s.max()) if len(s) else None,
                       ms_min=float(s.min()) if len(s) else None)
        groups.append(row)
    return {"groups": groups, "taxonomy_depth": int(codes.shape[1]), "pairs_per_neuron": int(depths.shape[1]),
            "per_neuron_mean_rounded": mean_rounded.tolist()}


@dataclass(frozen=True, kw_only=True)
class HierarchyConfig(CommandConfig, OutputOption):
    """`saevlm hierarchy`: Matryoshka groups vs taxonomy depth of top images."""

    COMMAND: ClassVar[str] = "hierarchy"
    OUTPUT_DEFAULT: ClassVar[str] = '--activations_dir, for hierarchy_<k>.json'

    activations_dir: str = opt()
    """code store with top_images_<k>.npy (saevlm top-images)"""
    k: int = opt(paper_default("hierarchy", "k"))
    """(default: %(default)s: 120 pairs per neuron)"""
    group_fractions: list[float] | None = opt(None)
    """Matryoshka group fractions (default: the SAE's own group sizes, from the store)"""
    taxonomy: str = opt('classes', choices=['classes', 'wordnet'])
    """classes: the taxonomy in the store's classes.json (iNat, synthetic); wordnet: ImageNet wnids through
    nltk (default: %(default)s)"""
    ms_subdir: str | None = opt(None)
    """MS per group from <dir>/<ms_subdir>/scores.npy (default: the store's single ms*/ folder, if any)"""
    hai_indices_path: str | None = opt(None, group="the authors' inat_depth.py flags")
    """top images to use (default: <activations_dir>/top_images_<k>.npy); an authors' hai_indices_<k>.npy
    is read in their order"""
    data_path: str | None = opt(None, group="the authors' inat_depth.py flags")
    """checked: must hold the store's images"""
    split: str | None = opt(None, group="the authors' inat_depth.py flags")
    """checked: must be the store's split"""


CONFIG = HierarchyConfig


def run(args: HierarchyConfig) -> int:
    from saevlm.data.images import check_dataset_flags
    from saevlm.data.open import open_any_store
    from saevlm.data.topimages import load_top_images_for

    store = open_any_store(args.activations_dir, allow_top_images=True)
    check_dataset_flags(store.provenance.dataset, None, args.data_path, args.split,
                        f"--activations_dir {store.path}")
    d = store.path
    from saevlm.data.atomic import ensure_writable_dir
    out = ensure_writable_dir(args.output_dir or d, "output_dir" if args.output_dir else "activations_dir")
    top, kth, _ = load_top_images_for(d, args.k, args.hai_indices_path, store)
    classes_f = d / A.CLASSES
    classes, labels = store.classes(), store.labels()  # checksums, dtype, shape and range checked
    if classes is None or labels is None:
        raise UserError(f"--activations_dir {d}: no classes.json / labels.npy (written by extract, "
                        f"encode and synthetic); cannot tell the images' classes")
    if args.taxonomy == "wordnet":
        taxonomy = wordnet_taxonomy(classes["classes"])
    elif "taxonomy" in classes:
        taxonomy = classes["taxonomy"]
    else:
        raise UserError(f"{classes_f}: no taxonomy (not an iNat or synthetic dataset); for ImageNet use "
                        f"--taxonomy wordnet")
    sae = store.provenance.sae
    sizes = resolve_group_sizes(args.group_fractions, sae.group_sizes if sae is not None else None, len(top))
    if not sizes:
        raise UserError(f"--activations_dir {d}: the SAE has no Matryoshka groups; pass --group_fractions")
    from saevlm.metrics.results import find_ms_dir, load_ms_scores
    ms_dir = find_ms_dir(d, args.ms_subdir, "activations_dir", required=bool(args.ms_subdir))
    ms = load_ms_scores(ms_dir, len(top), "ms_subdir", store) if ms_dir else None
    table = hierarchy_table(top, kth, labels, taxonomy, sizes, ms)
    from saevlm.data.stamps import source_stamp
    table.update(k=args.k, group_sizes=[int(s) for s in sizes], taxonomy_source=args.taxonomy,
                 source=source_stamp(store))
    A.HierarchyResult.write_json(out / A.hierarchy_json(args.k), table)
    head = f"{'group':>5} {'size':>7} {'scored':>7} {'left out':>9} {'LCA (rounded mean)':>19} {'LCA (majority)':>15}"
    print(head + ("   MS mean / max / min" if ms is not None else ""))
    for r in table["groups"]:
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        line = (f"{r['group']:>5} {r['size']:>7} {r['neurons_scored']:>7} {r['left_out_near_dead']:>9.1%} "
                f"{fmt(r['lca_depth_mean_rounded']):>19} {fmt(r['lca_depth_majority']):>15}")
        if ms is not None:
            line += f"   {fmt(r['ms_mean'])} / {fmt(r['ms_max'])} / {fmt(r['ms_min'])}"
        print(line)
    print(f"wrote {out}/hierarchy_{args.k}.json")
    return 0
