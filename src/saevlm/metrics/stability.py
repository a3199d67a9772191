"""``saevlm stability``: do SAEs trained with different seeds learn the same latents?

For every pair of SAEs (``train --seed 0 1 2`` trains them in one data pass), latents are matched
one to one by a minimum-cost assignment (the Hungarian problem) on

- decoder cosine: cost ``1 - cos(d_a, d_b)`` of the unit decoder directions, and
- co-activation (with ``--codes_dir``, the codes of each SAE on the same images): cost
  ``1 - Jaccard`` of the sets of images where each latent is active.

A full assignment over 65,536 x 65,536 latents is out of reach (the dense cost matrix alone is
32 GiB), so each latent keeps its ``--candidates`` best partners of the other SAE and the assignment
is solved exactly on that sparse graph (scipy's LAPJVsp, ``min_weight_full_bipartite_matching``);
with ``--candidates`` at least the dictionary size it is the dense Hungarian solution (tested
against ``scipy.optimize.linear_sum_assignment``). Pairs no candidate list links are matched last,
to each other in order, and count as unmatched for the threshold.

Reported per pair: the share of latents matched at decoder cosine >= ``--threshold`` (0.7 by
default, the value Paulo and Belrose used for seed comparisons), the median matched cosine, the
agreement of the two matchings, and with ``--scores`` (each SAE's MS scores.npy) the Pearson and
Spearman correlation of MS over matched pairs and the seed spread of the SAEs' mean MS (the std
over seeds, to set beside the differences between SAEs in ``saevlm report``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, opt
from saevlm.data import artifacts as A
from saevlm.errors import UserError

STABILITY_FORMAT = "saevlm-stability"


@dataclass(frozen=True, kw_only=True)
class StabilityConfig(CommandConfig):
    """`saevlm stability`: match the latents of SAEs trained with different seeds."""

    COMMAND: ClassVar[str] = "stability"

    sae_path: list[str] = opt()
    """two or more SAEs of the same width trained on the same activations (e.g. train --seed 0 1 2)"""
    codes_dir: list[str] | None = opt(None)
    """the code store of each SAE (saevlm encode) on the same images, in --sae_path order: adds the
    co-activation matching"""
    scores: list[str] | None = opt(None)
    """each SAE's MS scores.npy (saevlm ms), in --sae_path order: MS of matched pairs and the seed spread"""
    threshold: float = opt(0.7)
    """decoder cosine at which a matched pair counts as the same latent (default: %(default)s)"""
    candidates: int = opt(16)
    """partners per latent the assignment chooses among (default: %(default)s; >= dict size: exact)"""
    output: str | None = opt(None)
    """where the JSON goes (default: stability.json beside the first SAE)"""


CONFIG = StabilityConfig


# ---------------------------------------------------------------------------- matching
def top_partners(a_kd: np.ndarray, b_kd: np.ndarray, c: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices [K, c], similarities [K, c]) of each row of ``a_kd``'s ``c`` most similar rows of
    ``b_kd`` by dot product (unit rows: cosine), blockwise."""
    import torch

    a, b = torch.from_numpy(np.ascontiguousarray(a_kd, np.float32)), torch.from_numpy(np.ascontiguousarray(b_kd, np.float32))
    c = min(c, b.shape[0])
    idx, sim = np.empty((a.shape[0], c), np.int64), np.empty((a.shape[0], c), np.float32)
    for s in range(0, a.shape[0], chunk):
        top = (a[s:s + chunk] @ b.T).topk(c, dim=1)
        idx[s:s + chunk], sim[s:s + chunk] = top.indices.numpy(), top.values.numpy()
    return idx, sim


def assign(idx_kc: np.ndarray, sim_kc: np.ndarray, num_b: int) -> np.ndarray:
    """The one-to-one matching of rows to columns maximising the summed similarity over the
    candidate graph (row i may take column idx_kc[i, j]); rows the graph cannot place are matched
    to the columns left over, in order, and marked -1 in the result (match[i] = column or -1)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    K, c = idx_kc.shape
    rows = np.repeat(np.arange(K), c)
    # cost 1 - sim + 1 > 0 (a stored zero would read as a missing edge); a dummy edge per row to a
    # dummy column per row at a cost above any real one, so a full matching always exists
    cost = (2.0 - sim_kc.reshape(-1).astype(np.float64))
    graph = sp.csr_matrix((np.concatenate([cost, np.full(K, 10.0)]),
                           (np.concatenate([rows, np.arange(K)]),
                            np.concatenate([idx_kc.reshape(-1), num_b + np.arange(K)]))),
                          shape=(K, num_b + K))
    graph.sum_duplicates()
    match = np.full(K, -1, dtype=np.int64)
    if K:
        rows_m, cols_m = min_weight_full_bipartite_matching(graph)  # every row is placed (the dummies)
        match[rows_m] = cols_m
    return np.where(match < num_b, match, -1)


def jaccard_partners(act_a, act_b, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, Jaccard) of each latent of A's ``c`` best co-activating latents of B, from the
    images x latents activity matrices (scipy CSR, ones where active)."""
    inter = (act_a.T @ act_b).tocsr()  # latents_a x latents_b: images where both are active
    na = np.asarray(act_a.sum(axis=0)).ravel()
    nb = np.asarray(act_b.sum(axis=0)).ravel()
    K = act_a.shape[1]
    idx, sim = np.zeros((K, c), np.int64), np.zeros((K, c), np.float32)
    for i in range(K):
        lo, hi = inter.indptr[i], inter.indptr[i + 1]
        cols, both = inter.indices[lo:hi], inter.data[lo:hi].astype(np.float64)
        jac = both / (na[i] + nb[cols] - both)
        top = np.argsort(-jac, kind="stable")[:c]
        idx[i, :len(top)], sim[i, :len(top)] = cols[top], jac[top]
        idx[i, len(top):] = cols[top[0]] if len(top) else 0  # padding: a repeat of an edge, merged away
        sim[i, len(top):] = sim[i, 0] if len(top) else -1.0
    return idx, sim


@dataclass
class PairResult:
    a: int
    b: int
    match: np.ndarray  # A's latent i <-> B's latent match[i] (-1: no candidate placed it)
    cosine: np.ndarray  # decoder cosine of each matched pair (nan where unmatched)
    coact_match: np.ndarray | None = None


def _unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def match_pair(dec_a: np.ndarray, dec_b: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """(match, cosine of each matched pair) by decoder cosine."""
    a, b = _unit_rows(dec_a), _unit_rows(dec_b)
    idx, sim = top_partners(a, b, candidates)
    match = assign(idx, sim, len(b))
    cos = np.full(len(a), np.nan)
    ok = match >= 0
    cos[ok] = np.einsum("kd,kd->k", a[ok], b[match[ok]])
    return match, cos


# ---------------------------------------------------------------------------- the command
def _seed_of(config: dict) -> int | None:
    trainer = config.get("trainer") if isinstance(config, dict) else None
    seed = trainer.get("seed") if isinstance(trainer, dict) else None
    return int(seed) if isinstance(seed, int) else None


def _check_flags(args: StabilityConfig) -> None:
    paths = list(args.sae_path)
    if len(paths) < 2:
        raise UserError(f"sae_path: {len(paths)} SAE given; stability compares two or more", field="sae_path")
    for field, given in (("codes_dir", args.codes_dir), ("scores", args.scores)):
        if given is not None and len(given) != len(paths):
            raise UserError(f"{field}: {len(given)} given for {len(paths)} SAEs (one per --sae_path, in order)",
                            field=field, mentions=("sae_path",))
    if not 0 < args.threshold <= 1:
        raise UserError(f"threshold {args.threshold}: expected a cosine in (0, 1]", field="threshold")
    if args.candidates < 1:
        raise UserError(f"candidates {args.candidates}: expected a positive integer", field="candidates")


def _load_comparable(paths: list[str]) -> list:
    """The SAEs, refused unless they have one width and were trained on the same images."""
    from saevlm.sae.checkpoint import load_sae

    saes = [load_sae(p) for p in paths]
    first = saes[0]
    for p, sae in zip(paths[1:], saes[1:]):
        if (sae.dict_size, sae.activation_dim) != (first.dict_size, first.activation_dim):
            raise UserError(f"sae_path {p}: {sae.dict_size} latents over {sae.activation_dim} dims, but {paths[0]} "
                            f"has {first.dict_size} over {first.activation_dim}; stability compares SAEs of one width",
                            field="sae_path")
        ours, theirs = sae.config.get("saevlm", {}), first.config.get("saevlm", {})
        a, b = ours.get("image_ids_sha256"), theirs.get("image_ids_sha256")
        if a and b and a != b:
            raise UserError(f"sae_path {p}: trained on other images than {paths[0]} (image_ids_sha256 {a[:12]} vs "
                            f"{b[:12]}); stability compares seeds on the same data", field="sae_path")
    return saes


def _pair_record(i: int, j: int, decoders, activity, scores, args: StabilityConfig, dict_size: int) -> dict:
    """SAE i against SAE j: the decoder matching, and where given, co-activation and MS agreement."""
    match, cos = match_pair(decoders[i], decoders[j], args.candidates)
    rec: dict = {"a": i, "b": j, "matched_share": float(np.mean(np.nan_to_num(cos, nan=-1) >= args.threshold)),
                 "median_cosine": float(np.nanmedian(cos)) if np.isfinite(cos).any() else None,
                 "unplaced": int((match < 0).sum())}
    if activity is not None:
        idx, sim = jaccard_partners(activity[i], activity[j], args.candidates)
        co = assign(idx, sim, dict_size)
        rec["coactivation_agreement"] = float(np.mean((co == match) & (match >= 0)))
    if scores is not None:
        ok = (match >= 0) & np.isfinite(scores[i]) & np.isfinite(scores[j][np.maximum(match, 0)])
        x, y = scores[i][ok], scores[j][match[ok]]
        rec["ms_pearson"] = float(np.corrcoef(x, y)[0, 1]) if ok.sum() > 2 else None
        rec["ms_spearman"] = (float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]) if ok.sum() > 2 else None)
        rec["ms_pairs"] = int(ok.sum())
    return rec


def _pair_line(rec: dict, threshold: float) -> str:
    line = (f"SAE {rec['a']} vs {rec['b']}: {100 * rec['matched_share']:.1f} % of latents matched at decoder "
            f"cosine >= {threshold:g} (median {rec['median_cosine']:.3f})")
    if "coactivation_agreement" in rec:
        line += f"; co-activation matching agrees on {100 * rec['coactivation_agreement']:.1f} %"
    if rec.get("ms_pearson") is not None:
        line += f"; MS of matched pairs: r = {rec['ms_pearson']:.3f}"
    return line


def run(args: StabilityConfig) -> int:
    from saevlm.sae.checkpoint import decoder_rows

    _check_flags(args)
    paths = list(args.sae_path)
    saes = _load_comparable(paths)
    first = saes[0]
    decoders = [decoder_rows(p) for p in paths]
    activity = _activities(args.codes_dir, first.dict_size) if args.codes_dir else None
    scores = [_scores(p, first.dict_size) for p in args.scores] if args.scores else None
    pairs = [_pair_record(i, j, decoders, activity, scores, args, first.dict_size)
             for i in range(len(paths)) for j in range(i + 1, len(paths))]
    out: dict = {"format": STABILITY_FORMAT, "saes": [{"path": str(Path(p).resolve()), "seed": _seed_of(s.config)}
                                                     for p, s in zip(paths, saes)],
                 "dict_size": first.dict_size, "threshold": args.threshold, "candidates": args.candidates,
                 "pairs": pairs}
    if scores is not None:
        means = [float(np.nanmean(s)) for s in scores]
        out["mean_ms"] = means
        out["mean_ms_seed_std"] = float(np.std(means, ddof=1))
    target = Path(args.output) if args.output else Path(paths[0]).resolve().parent / A.STABILITY
    if target.suffix != ".json" and target.is_dir():
        target = target / A.STABILITY
    A.StabilityResult.write_json(target, out)
    for rec in pairs:
        print(_pair_line(rec, args.threshold))
    if scores is not None:
        print(f"mean MS per SAE: {', '.join(f'{m:.4f}' for m in out['mean_ms'])} (seed std "
              f"{out['mean_ms_seed_std']:.4f})")
    print(f"wrote {target}", file=sys.stderr)
    return 0


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def _activities(dirs: list[str], dict_size: int):
    from saevlm.data.codes import CodeStore
    from saevlm.metrics.coactivation import activity_matrix

    out, ids0 = [], None
    for d in dirs:
        store = CodeStore(d, field="codes_dir")
        if store.dict_size != dict_size:
            raise UserError(f"codes_dir {d}: {store.dict_size} latents, the SAEs {dict_size}", field="codes_dir")
        ids = store.image_ids()
        if ids0 is None:
            ids0 = ids
        elif not np.array_equal(ids, ids0):
            raise UserError(f"codes_dir {d}: codes of other images than {dirs[0]}; encode the same images",
                            field="codes_dir")
        row_image = np.searchsorted(ids, store.row_index()[:, 0]) if store.num_rows != len(ids) else None
        out.append(activity_matrix(store.iter_csr(), dict_size, row_image).astype(np.float64))
    n = max(m.shape[0] for m in out)
    return [m if m.shape[0] == n else _pad_rows(m, n) for m in out]


def _pad_rows(m, n: int):
    import scipy.sparse as sp
    return sp.vstack([m, sp.csr_matrix((n - m.shape[0], m.shape[1]))]).tocsr()


def _scores(path: str, dict_size: int) -> np.ndarray:
    try:
        s = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"scores {path}: not a readable .npy ({e})", field="scores") from None
    if s.shape != (dict_size,):
        raise UserError(f"scores {path}: shape {s.shape}, expected ({dict_size},) (one MS per latent)", field="scores")
    return s.astype(np.float64)
