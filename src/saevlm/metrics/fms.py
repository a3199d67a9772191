"""FMS, the Feature Monosemanticity Score of Härle et al. 2025 (arXiv 2506.19382), beside MS.

A label-based score over the same codes. Per concept c (one-vs-rest, classes balanced by
sampling as many negatives as positives, a seeded 70/30 train/test split):

- capacity: acc_0, the test accuracy of a depth-1 Gini decision tree (a stump) on the best
  single latent (the tree's root);
- local disentanglement: remove the root latent and fit a new stump, p times; acc_p is the
  accuracy after removing p roots, FMS_local@p = 2 (acc_0 - acc_p), clipped to [0, 1];
- global disentanglement: with f_1..f_n the successive roots, acc_cum_i is the test accuracy of a
  depth-i Gini tree on f_1..f_i; A(n) = Σ_{i=1..n} (acc_cum_i - acc_0), FMS_global = 1 - A(n)/n;
- FMS@p = mean over concepts of acc_0 × (FMS_local@p + FMS_global) / 2.

The trees are a small CART written here (exhaustive Gini split search over sorted values),
tested against a brute-force split search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, OutputOption, opt
from saevlm.data import artifacts as A
from saevlm.errors import UserError


def _gini_best_splits(x_nf: np.ndarray, y_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: the lowest weighted Gini impurity of a split ``x <= t`` and its threshold
    (midpoint between consecutive distinct values; inf when the feature is constant)."""
    n, f = x_nf.shape
    order = np.argsort(x_nf, axis=0, kind="stable")
    xs = np.take_along_axis(x_nf, order, 0)
    ys = y_n[order].astype(np.float64)
    pos_left = np.cumsum(ys, 0)[:-1]  # split after row i: rows 0..i go left
    n_left = np.arange(1, n, dtype=np.float64)[:, None]
    n_right = n - n_left
    pos_total = ys.sum(0)
    pl = pos_left / n_left
    pr = (pos_total - pos_left) / n_right
    gini = (n_left * 2 * pl * (1 - pl) + n_right * 2 * pr * (1 - pr)) / n
    valid = xs[1:] > xs[:-1]
    gini = np.where(valid, gini, np.inf)
    best = gini.argmin(0) if n > 1 else np.zeros(f, dtype=int)
    best_gini = gini[best, np.arange(f)] if n > 1 else np.full(f, np.inf)
    thr = np.where(np.isfinite(best_gini), (xs[best, np.arange(f)] + xs[np.minimum(best + 1, n - 1), np.arange(f)]) / 2,
                   np.inf)
    return best_gini, thr


@dataclass
class Node:
    feature: int = -1
    threshold: float = 0.0
    left: "Node | None" = None
    right: "Node | None" = None
    label: bool = False

    def predict(self, x_nf: np.ndarray) -> np.ndarray:
        if self.left is None:
            return np.full(len(x_nf), self.label)
        go_left = x_nf[:, self.feature] <= self.threshold
        out = np.empty(len(x_nf), dtype=bool)
        out[go_left] = self.left.predict(x_nf[go_left])
        out[~go_left] = self.right.predict(x_nf[~go_left])
        return out


def fit_tree(x_nf: np.ndarray, y_n: np.ndarray, depth: int, features: np.ndarray | None = None) -> Node:
    """A Gini CART of at most ``depth`` levels on ``features`` (indices into x's columns)."""
    features = np.arange(x_nf.shape[1]) if features is None else np.asarray(features)
    majority = bool(y_n.mean() > 0.5) if len(y_n) else False
    if depth == 0 or len(y_n) < 2 or y_n.all() or not y_n.any():
        return Node(label=majority)
    gini, thr = _gini_best_splits(x_nf[:, features], y_n)
    j = int(np.argmin(gini))
    if not np.isfinite(gini[j]):
        return Node(label=majority)
    feat = int(features[j])
    go_left = x_nf[:, feat] <= thr[j]
    return Node(feat, float(thr[j]), fit_tree(x_nf[go_left], y_n[go_left], depth - 1, features),
                fit_tree(x_nf[~go_left], y_n[~go_left], depth - 1, features), majority)


def concept_fms(x_train, y_train, x_test, y_test, p: int = 1, n: int = 5) -> dict:
    """The FMS components of one concept (see module docstring)."""
    remaining = np.arange(x_train.shape[1])
    roots, accs = [], []
    for _ in range(max(p, n) + 1):
        if len(remaining) == 0:
            break
        stump = fit_tree(x_train, y_train, 1, remaining)
        if stump.left is None:  # no split possible on the remaining latents
            accs.append(float((stump.predict(x_test) == y_test).mean()))
            break
        roots.append(stump.feature)
        accs.append(float((stump.predict(x_test) == y_test).mean()))
        remaining = remaining[remaining != stump.feature]
    acc0 = accs[0]
    acc_p = accs[p] if len(accs) > p else 0.5
    local = float(np.clip(2 * (acc0 - acc_p), 0, 1))
    cum = []
    for i in range(1, n + 1):
        feats = np.asarray(roots[:i]) if roots else np.arange(x_train.shape[1])
        tree = fit_tree(x_train, y_train, i, feats)
        cum.append(float((tree.predict(x_test) == y_test).mean()))
    a_n = float(np.sum(np.asarray(cum) - acc0))
    glob = 1 - a_n / n
    return {"acc0": acc0, "root": int(roots[0]) if roots else -1, f"acc_{p}": acc_p, "local": local,
            "global": glob, "fms": acc0 * (local + glob) / 2, "acc_cum": cum}


def fms_scores(codes_nk: np.ndarray, labels_nc: np.ndarray, p: int = 1, n: int = 5, seed: int = 0,
               max_positives: int = 500, names: list[str] | None = None) -> dict:
    """FMS@p over concepts (columns of the boolean ``labels_nc``); balanced one-vs-rest."""
    rng = np.random.default_rng(seed)
    per = []
    for c in range(labels_nc.shape[1]):
        pos = np.flatnonzero(labels_nc[:, c])
        neg = np.flatnonzero(~labels_nc[:, c])
        if len(pos) < 4 or len(neg) < 4:
            continue
        pos = rng.permutation(pos)[:max_positives]
        neg = rng.permutation(neg)[:len(pos)]
        idx = rng.permutation(np.concatenate([pos, neg]))
        y = labels_nc[idx, c]
        cut = int(0.7 * len(idx))
        res = concept_fms(codes_nk[idx[:cut]], y[:cut], codes_nk[idx[cut:]], y[cut:], p, n)
        res["concept"] = names[c] if names else c
        res["positives"] = int(len(pos))
        per.append(res)
    if not per:
        raise UserError("FMS: no concept has at least 4 positive and 4 negative samples")
    return {"fms": float(np.mean([r["fms"] for r in per])), "p": p, "n": n,
            "mean_acc0": float(np.mean([r["acc0"] for r in per])),
            "mean_local": float(np.mean([r["local"] for r in per])),
            "mean_global": float(np.mean([r["global"] for r in per])),
            "concepts": len(per), "per_concept": per}


@dataclass(frozen=True, kw_only=True)
class FMSConfig(CommandConfig, OutputOption):
    """`saevlm fms`: Feature Monosemanticity Score (Härle et al. 2025), label-based."""

    COMMAND: ClassVar[str] = "fms"
    OUTPUT_DEFAULT: ClassVar[str] = '<activations_dir>/fms/, for fms.json'

    activations_dir: str = opt()
    """activation or code store (one row per image) with labels.npy"""
    concepts: str | None = opt(None)
    """a synthetic world's concepts_<split>.npz: score every concept (multi-label) instead of the class
    labels"""
    p: int = opt(1)
    """roots removed for FMS_local@p (default: %(default)s)"""
    n: int = opt(5)
    """tree depths for FMS_global (default: %(default)s)"""
    max_positives: int = opt(500)
    """positives sampled per concept (default: %(default)s)"""
    max_concepts: int | None = opt(None)
    """score only the first concepts"""
    seed: int = opt(0)
    """(default: %(default)s)"""
    ms_subdir: str | None = opt(None)
    """MS folder whose mean is recorded beside the FMS (default: the store's single ms*/)"""
    output_subdir: str | None = opt(None)
    """the output as a folder name inside the store"""


CONFIG = FMSConfig


def run(args: FMSConfig) -> int:
    from pathlib import Path

    from saevlm.data.atomic import ensure_writable_dir
    from saevlm.data.open import open_any_store
    from saevlm.data.stamps import source_stamp

    from saevlm.metrics.results import check_one_row_per_image, find_ms_dir

    store = open_any_store(args.activations_dir)
    check_one_row_per_image(store, "activations_dir")
    out = Path(args.output_dir) if args.output_dir else store.path / (args.output_subdir or "fms")
    ensure_writable_dir(out, "output_dir" if args.output_dir else "output_subdir")
    codes = store.read(0, store.num_rows)
    ids = store.image_ids()
    if args.concepts:
        from saevlm.data.concepts import load_concepts
        z = load_concepts(args.concepts)
        if len(z) <= ids.max():
            raise UserError(f"--concepts {args.concepts}: {len(z)} samples, the store has image {ids.max()}")
        labels_nc = z[ids] > 0
        names = None
    else:
        all_labels = store.labels()  # checksum, dtype, shape and range checked
        if all_labels is None:
            raise UserError(f"--activations_dir {store.path}: no labels.npy; FMS needs class labels")
        labels = all_labels[ids]
        class_list = store.classes()
        classes = class_list["classes"] if class_list is not None else None
        labels_nc = labels[:, None] == np.arange(labels.max() + 1)[None, :]
        names = classes
    if args.max_concepts:
        labels_nc = labels_nc[:, :args.max_concepts]
    result = fms_scores(codes, labels_nc, args.p, args.n, args.seed, args.max_positives, names)
    ms_dir = find_ms_dir(store.path, args.ms_subdir, "activations_dir", required=bool(args.ms_subdir))
    ms_mean = None
    if ms_dir is not None and (ms_dir / A.MS_JSON).is_file():
        ms_mean = A.MSSummary.from_file(ms_dir / A.MS_JSON).mean
    A.FMSResult.write_json(out / Path(A.FMS_JSON).name, {**result, "ms_mean": ms_mean,
                                         "ms_source": str(ms_dir / A.MS_JSON) if ms_dir else None,
                                         "activations_dir": str(store.path.resolve()),
                                         "codes_finished": store.manifest.finished,
                                         "source": source_stamp(store),
                                         "definition": "Härle et al. 2025, arXiv 2506.19382"})
    print(f"FMS@{args.p} = {result['fms']:.4f} over {result['concepts']} concepts "
          f"(acc0 {result['mean_acc0']:.3f}, local {result['mean_local']:.3f}, global {result['mean_global']:.3f})"
          + (f"; MS mean {ms_mean:.4f}" if ms_mean is not None else ""))
    print(f"wrote {out}/fms.json")
    return 0
