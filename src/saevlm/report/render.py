"""Rendering a run's results as report.md and report.html (figures inline): what ``saevlm report``
writes and the explorer's run page shows.

This module renders; :mod:`saevlm.report.collect` finds and reads the results. Everything is
found by scanning the run directory for the files the commands write:
``ms/ms.json`` beside activation stores (raw neurons) and code stores (SAE latents, whose
provenance names the SAE), ``run.json`` / ``eval.json`` of training runs, ``hierarchy_*.json``,
steering ``steering_score.json``, ``similarity_baseline.json`` and ``agreement.json``. Every number is
followed by a reference to the file it came from (the "Sources" list), and the paper's value is
shown beside ours wherever the configuration matches (arXiv 2504.02821).
"""

from __future__ import annotations

import base64
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saevlm.data import artifacts as A
from saevlm.errors import UserError
from saevlm.metrics.monosemanticity import MIN_ACTIVE_IMAGES
from saevlm import paper
from saevlm.sae.archs import ARCH_SPECS
from saevlm.report.collect import MSRecord, Notes, ResultFile, RunResults, TrainedSAE, collect_run

# how tables name each architecture (its archs.ArchSpec label); an unknown name as it is
ARCH_NAMES = {name: spec.label for name, spec in ARCH_SPECS.items()}


@dataclass
class Report:
    run_dir: Path
    sources: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    notes: Notes = field(default_factory=Notes)

    def warn(self, text: str, damaged: bool = False) -> None:
        """A problem with the results (unfinished, missing, stale): shown at the top of the report
        and printed (see :class:`~saevlm.report.collect.Notes`)."""
        self.notes.warn(text, damaged)

    @property
    def warnings(self) -> list[str]:
        return self.notes.warnings

    @property
    def damaged(self) -> list[str]:
        return self.notes.damaged

    def cite(self, path: Path) -> str:
        rel = str(Path(path).resolve().relative_to(self.run_dir.resolve())) \
            if Path(path).resolve().is_relative_to(self.run_dir.resolve()) else str(path)
        if rel not in self.sources:
            self.sources.append(rel)
        return f"[{self.sources.index(rel) + 1}]"

    def heading(self, text: str, level: int = 2) -> None:
        self.md += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "---|" * len(header))
        self.md += ["| " + " | ".join(r) + " |" for r in rows]
        self.md.append("")
        th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        self.html.append(f"<table><tr>{th}</tr>{trs}</table>")

    def figure(self, png: Path, caption: str) -> None:
        rel = Path(png).resolve().relative_to(self.run_dir.resolve()) \
            if Path(png).resolve().is_relative_to(self.run_dir.resolve()) else png
        self.md += [f"![{caption}]({rel})", ""]
        data = base64.b64encode(Path(png).read_bytes()).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" style="max-width:640px">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(v, digits=2):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _best(s):
    return s.top10[0][1] if s.top10 else None


def _worst(s):
    return s.bottom10[0][1] if s.bottom10 else None


def _ms_rows(rep: Report, arch: str, raw: dict, sae: dict, layers: list, exps: list, matches_paper: bool
             ) -> tuple[list, list, list, list]:
    """(best, best active, mean, worst) rows of one architecture's MS tables: a row per layer, the raw
    neurons then one column per expansion factor; the paper's value beside ours where it matches."""
    best_rows, active_rows, mean_rows, worst_rows = [], [], [], []
    for layer in layers:
        rr = raw.get(layer)
        b = [str(layer), _cell(rep, rr, _best, paper.NO_SAE_BEST if matches_paper and rr else None)]
        a = [str(layer), "–"]  # raw neurons take a value on every image: no active-images rule
        m = [str(layer), _cell(rep, rr, None)]
        w = [str(layer), _cell(rep, rr, _worst)]
        for e in exps:
            r = sae.get((layer, e))
            compared = matches_paper and r is not None and r.k == 20
            ref = paper.paper_value(paper.BEST_MS, arch, layer, e) if compared else None
            mean_ref = paper.paper_value({arch: {"last": paper.MEAN_MS_LAST.get(arch)}}, arch, layer, e) \
                if compared and arch in paper.MEAN_MS_LAST else None
            b.append(_cell(rep, r, _best, ref))
            a.append(_cell(rep, r, _best_active))
            m.append(_cell(rep, r, None, mean_ref))
            w.append(_cell(rep, r, _worst))
        best_rows.append(b)
        active_rows.append(a)
        mean_rows.append(m)
        worst_rows.append(w)
    return best_rows, active_rows, mean_rows, worst_rows


MEAN_TEXT = ("Mean MS over scored latents with its 95 % interval over images [low, high] (the delete-one jackknife "
             "of `saevlm ms`; ± std over latents where no interval was computed); 'rare': scored latents active on "
             "fewer than 16 images, whose MS rests on few image pairs; 'wide': latents whose own 95 % interval is "
             "wider than 0.2. The mean is the authors' (over every scored latent)")


def _arch_ms_tables(rep: Report, arch: str, recs: list[MSRecord], raw: dict, layers: list, exps: list,
                    matches_paper: bool) -> None:
    sae = {(r.layer, r.expansion): r for r in recs if r.kind == "sae" and r.arch == arch}
    header = ["layer", "No SAE"] + [f"x{e}" for e in exps]
    best_rows, active_rows, mean_rows, worst_rows = _ms_rows(rep, arch, raw, sae, layers, exps, matches_paper)
    rep.para("Neurons with a score, of all neurons (dead: never varies on these images, or "
             "varies on one image only; their MS is undefined and left out of every mean):")
    rep.table(header, _count_rows(rep, raw, sae, layers, exps))
    for warning in _dead_warnings(rep, [raw.get(layer) for layer in layers] + list(sae.values())):
        rep.para(warning)
    rep.para(f"Best latent MS among latents active (> 0) on at least {MIN_ACTIVE_IMAGES} images, the "
             f"rule of the explorer's table (a latent active on fewer images has an MS resting on "
             f"few image pairs; '–' where no latent qualifies or, for raw neurons, the rule does "
             f"not apply):")
    rep.table(header, active_rows)
    rep.para("Best MS over all scored neurons, the paper's definition (ours, paper in parentheses):"
             if matches_paper else "Best MS over all scored neurons (the paper's definition):")
    rep.table(header, best_rows)
    rep.para(MEAN_TEXT + (" (paper's last-layer means in parentheses):" if matches_paper else ":"))
    rep.table(header, mean_rows)
    paired_differences(rep, raw, sae, layers, exps, arch)
    rep.para("Worst neuron MS:")
    rep.table(header, worst_rows)


def _count_rows(rep: Report, raw: dict, sae: dict, layers: list, exps: list) -> list[list[str]]:
    return [[str(layer), _count_cell(rep, raw.get(layer))] + [_count_cell(rep, sae.get((layer, e))) for e in exps]
            for layer in layers]


def ms_tables(rep: Report, records: list[MSRecord]) -> None:
    if not records:
        return
    rep.heading("Monosemanticity Score")
    rep.para("Best / mean ± std / worst MS over neurons with a score (dead neurons left out), per layer "
             "and expansion factor, as in the paper's Tables 1a and A2. 'paper' is arXiv 2504.02821 "
             "(CLIP ViT-L/14-336, DINOv2 embeddings, K = 20) where our configuration matches it.")
    by_model: dict = {}
    for r in records:
        by_model.setdefault((r.model, r.embeddings_model), []).append(r)
    for (model, emb), recs in by_model.items():
        _model_ms_tables(rep, model, emb, recs)


def _table_axes(recs: list[MSRecord]) -> tuple[dict, list[MSRecord], list, list]:
    """(raw-neuron results by layer, the SAE results, the layers (numbers, then names), the
    expansion factors) of one model's MS results."""
    raw = {r.layer: r for r in recs if r.kind == "raw"}
    saes = [r for r in recs if r.kind == "sae"]
    layers = sorted({r.layer for r in recs}, key=lambda x: (isinstance(x, str), x))
    return raw, saes, layers, sorted({r.expansion for r in saes})


def _model_ms_tables(rep: Report, model, emb, recs: list[MSRecord]) -> None:
    """The MS tables of one model under one embedder: one set per SAE architecture."""
    raw, saes, layers, exps = _table_axes(recs)
    matches_paper = paper.MODEL in str(model) and "dino" in str(emb).lower()
    for arch in sorted({r.arch for r in saes}):
        rep.heading(f"{ARCH_NAMES.get(arch, arch)}: {model}, embeddings {emb}", 3)
        _arch_ms_tables(rep, arch, recs, raw, layers, exps, matches_paper)
    for note in sorted({r.summary.embedder_note for r in recs if r.summary.embedder_note}):
        rep.para(f"Note on the embedder E ({emb}): {note}.")


def _deltas(rec: MSRecord | None) -> np.ndarray | None:
    """The per-image jackknife changes of a result's mean MS (image_deltas.npy), when recorded."""
    if rec is None or rec.summary.uncertainty is None or not rec.summary.uncertainty.mean_ci95:
        return None
    f = Path(rec.source).parent / A.MS_IMAGE_DELTAS
    try:
        return np.load(f)
    except (OSError, ValueError):
        return None


def _same_images(a: MSRecord, b: MSRecord) -> bool:
    """Scored on the same images in the same order, with the same embeddings."""
    ia, ib = a.summary.inputs, b.summary.inputs
    try:
        return (ia.activations.image_ids_sha256 == ib.activations.image_ids_sha256 is not None
                and ia.embeddings.content_sha256 == ib.embeddings.content_sha256 is not None)
    except AttributeError:  # an older ms.json without inputs
        return False


def paired_difference(a: MSRecord, b: MSRecord) -> tuple[float, float, float] | None:
    """(mean MS of a - mean MS of b, 95 % low, high): paired over images, the same image left out of
    both (the jackknife of the difference); None unless both were scored on the same images with
    intervals."""
    da, db = _deltas(a), _deltas(b)
    if da is None or db is None or len(da) != len(db) or not _same_images(a, b):
        return None
    from saevlm.metrics.monosemanticity import jackknife_interval

    diff = float(a.summary.mean - b.summary.mean)
    se = jackknife_interval(da - db)
    return diff, diff - 1.96 * se, diff + 1.96 * se


def paired_differences(rep: Report, raw: dict, sae: dict, layers: list, exps: list, arch: str) -> None:
    """Which differences of the table hold: each expansion factor against the next smaller one,
    and each SAE against the raw neurons of its layer, paired over the same images."""
    rows = []
    for layer in layers:
        pairs = [(sae.get((layer, b)), sae.get((layer, a)), f"x{b} - x{a}") for a, b in zip(exps, exps[1:])]
        pairs += [(sae.get((layer, e)), raw.get(layer), f"x{e} - no SAE") for e in exps]
        rows += [row for ra, rb, label in pairs if (row := _difference_row(rep, layer, label, ra, rb))]
    if rows:
        rep.para(f"Differences of mean MS ({ARCH_NAMES.get(arch, arch)}), paired over the same images (95 % "
                 f"interval: the delete-one jackknife of the difference); 'holds' where the interval excludes 0. "
                 f"Over images only: another training seed can move a mean further, which these intervals do not include.")
        rep.table(["layer", "difference", "mean MS difference [95 %]", "holds", "sources"], rows)


def _difference_row(rep: Report, layer, label: str, ra: MSRecord | None, rb: MSRecord | None) -> list[str] | None:
    """A row of the paired-differences table, when both results are there and comparable."""
    d = paired_difference(ra, rb) if ra is not None and rb is not None else None
    if d is None:
        return None
    return [str(layer), label, f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]", "yes" if d[1] > 0 or d[2] < 0 else "no",
            f"{rep.cite(ra.source)} {rep.cite(rb.source)}"]


DEAD_WARNING_FRACTION = 0.5  # above it the report warns that its MS rows rest on few latents


def _rel(rep: Report, path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(rep.run_dir)) if path.is_relative_to(rep.run_dir) else str(path)


def _best_active(s: A.MSSummary) -> float | None:
    best = s.top10_active_on_16_or_more
    return best[0][1] if best else None


def _dead_warnings(rep: Report, records: list[MSRecord | None]) -> list[str]:
    """One warning per MS result whose neurons are mostly dead (no defined MS on these images)."""
    out = []
    for r in records:
        s = r.summary if r is not None else None
        if s is None or not s.total or s.dead is None or s.dead / s.total <= DEAD_WARNING_FRACTION:
            continue
        out.append(f"Warning: {s.dead} of {s.total} neurons ({s.dead / s.total:.0%}) of {_rel(rep, r.store)} are dead "
                   f"on these {s.num_images if s.num_images is not None else '?'} images; its MS rows rest on the "
                   f"{s.total - s.dead} others. More images (or a longer training) make fewer dead latents.")
    return out


def _cell(rep: Report, rec: MSRecord | None, pick, ref=None) -> str:
    if rec is None:
        return "–"
    s = rec.summary
    if pick is None:
        rare = s.scored_active_on_fewer_than_16
        u = s.uncertainty
        lo_hi = u.mean_ci95 if u is not None else None
        # the interval over images (ms --uncertainty) says how sure the mean is; the std over
        # latents says how much latents differ
        head = (f"{_fmt(s.mean, 3)} [{_fmt(lo_hi[0], 3)}, {_fmt(lo_hi[1], 3)}]" if lo_hi
                else f"{_fmt(s.mean)} ± {_fmt(s.std)}")
        text = f"{head} (n={s.scored_count}/{s.total}" + (f"; {rare} rare" if rare is not None else "") + \
            (f"; {u.wide_intervals} wide" if lo_hi and u.wide_intervals is not None else "") + ")"
    else:
        text = _fmt(pick(s))
    if ref is not None:
        text += f" ({ref:.2f})"
    return f"{text} {rep.cite(rec.source)}"


def _count_cell(rep: Report, rec: MSRecord | None) -> str:
    if rec is None:
        return "–"
    s = rec.summary
    total, dead = s.total, s.dead
    text = f"{total - dead}/{total}" if total is not None and dead is not None else "?"
    if s.dead_constant is not None:
        text += f" (dead {s.dead_constant} + {s.dead_one_image} one-image)"
    elif dead:
        text += f" (dead {dead})"
    return f"{text} {rep.cite(rec.source)}"


def training_tables(rep: Report, saes: list[TrainedSAE]) -> None:
    rows = []
    for t in saes:
        name = ARCH_NAMES.get(t.arch, t.arch)
        ev = t.evaluation
        if ev is None:
            rows.append([name, str(t.layer), f"x{t.expansion}", "unfinished", "–", "–", "–", "–", rep.cite(t.source)])
            continue
        ref = paper.paper_value({"x": {"last": paper.R2_LAST.get(t.arch, ())}}, "x", t.layer,
                                t.expansion) if paper.R2_LAST.get(t.arch) else None
        ref_s = f" ({ref:.1f})" if ref is not None and paper.MODEL in str(t.model) else ""
        authors = f"{100 * ev.r2_authors:.1f}{ref_s}" if ev.r2_authors is not None else "–"
        pooled = f"{100 * ev.r2:.1f}" if ev.r2 is not None else "undefined (constant activations)"
        rows.append([name, str(t.layer), f"x{t.expansion}", authors, pooled, f"{ev.l0:.1f}",
                     f"{ev.dead_fraction:.3f}", f"{ev.dense_fraction:.3f}", rep.cite(t.source)])
    if rows:
        rep.heading("Reconstruction and sparsity")
        rep.para("R² (%, fraction of variance explained) two ways: as the authors log it (per validation batch "
                 "of --batch_size rows, 1 - Σ var(x - x̂) / Σ var(x), mean over batches, with the threshold; "
                 "the paper's value in parentheses for the last layer of CLIP ViT-L/14-336), and saevlm's "
                 "pooled over all validation rows (1 - SSE / SST). L0 at inference, dead and dense latent "
                 "fractions, on the validation store.")
        rep.table(["SAE", "layer", "expansion", "R² authors (%)", "R² pooled (%)", "L0", "dead", "dense",
                   "source"], rows)


def hierarchy_tables(rep: Report, results: list[ResultFile]) -> None:
    if not results:
        return
    rep.heading("Matryoshka hierarchy")
    # the paper's depths belong beside a tree like iNat's (7 levels) cut into its 5 groups only
    inat_like = any(r.record.taxonomy_depth == 7 and len(r.record.groups) == len(paper.HIERARCHY_INAT)
                    for r in results)
    rep.para("Mean lowest-common-ancestor depth of the 120 pairs of each neuron's top-16 images, per "
             "Matryoshka group (near-dead neurons left out)." + (
                 f" Paper (iNat, 7 levels, 5 groups): {' / '.join(map(str, paper.HIERARCHY_INAT))}." if inat_like
                 else " (The paper's iNat depths are not shown: this taxonomy or grouping is another.)"))
    for r in results:
        _hierarchy_table(rep, r)


def _hierarchy_table(rep: Report, r: ResultFile) -> None:
    """One hierarchy result's table per group, and a warning for groups of few live latents."""
    rows = [[str(g.group), str(g.size), str(_group_used(g)), f"{g.left_out_near_dead:.0%}",
             _fmt(g.lca_depth_mean_rounded), _fmt(g.lca_depth_majority),
             _fmt(g.ms_mean), rep.cite(r.path)] for g in r.record.groups]
    rep.para(f"{r.path.parent.relative_to(rep.run_dir)}:")
    rep.table(["group", "size", "latents used", "left out", "LCA depth (rounded mean)", "LCA depth (majority)",
               "MS mean", "source"], rows)
    small = [f"{g.group} ({_group_used(g)})" for g in r.record.groups if _group_used(g) < SMALL_GROUP]
    if small:
        rep.para(f"Warning: group{'s' if len(small) > 1 else ''} {', '.join(small)} rest on fewer than "
                 f"{SMALL_GROUP} latents (latents used in parentheses); their depths and MS means are "
                 f"noisy. A larger dictionary or more images give these groups more live latents.")


SMALL_GROUP = 20  # a hierarchy group mean over fewer latents is warned as noisy


def _group_used(g: A.HierarchyGroup) -> int:
    """Latents of a group the hierarchy means rest on (not left out as near-dead)."""
    if g.neurons_scored is not None:
        return g.neurons_scored
    return round(g.size * (1 - g.left_out_near_dead))


def steering_tables(rep: Report, scores: list[ResultFile], baselines: list[ResultFile]) -> None:
    rows = []
    for r in scores:
        s = r.record
        rows.append([str(r.path.parent.relative_to(rep.run_dir)), ("steered" if s.steered else "unsteered")
                     + (f" ({s.protocol} protocol)" if s.protocol is not None else ""),
                     str(s.neurons), str(s.images), f"{s.mean:.3f} ± {s.std:.3f}", rep.cite(r.path)])
    for r in baselines:
        b, where = r.record, str(r.path.parent.relative_to(rep.run_dir))
        rows.append([where, "bound: true class names", "–", str(b.images),
                     f"{b.true_class_names['mean']:.3f}", rep.cite(r.path)])
        rows.append([where, "bound: shuffled names", "–", str(b.images),
                     f"{b.shuffled_class_names['mean']:.3f}", rep.cite(r.path)])
    if rows:
        rep.heading("Steering LLaVA")
        rep.para("Paper (Table 3): steered " + paper.STEERING["steered_white"] + " (white image), "
                 + paper.STEERING["steered_imagenet"] + " (ImageNet); unsteered "
                 + paper.STEERING["unsteered_white"] + " / " + paper.STEERING["unsteered_imagenet"]
                 + "; bounds " + paper.STEERING["bound_true_names"] + " / " + paper.STEERING["bound_random_pairs"] + ".")
        rep.table(["run", "setting", "neurons", "images", "score", "source"], rows)


def fms_tables(rep: Report, results: list[ResultFile]) -> None:
    rows = [[str(r.path.parent.relative_to(rep.run_dir)), f"{r.record.fms:.3f}", f"{r.record.mean_acc0:.3f}",
             f"{r.record.mean_local:.3f}", f"{r.record.mean_global:.3f}", str(r.record.concepts),
             _fmt(r.record.ms_mean, 3), rep.cite(r.path)] for r in results]
    if rows:
        rep.heading("Feature Monosemanticity Score (label-based)")
        rep.para("FMS@p (Härle et al. 2025): accuracy of the best single latent as a concept detector "
                 "(acc0), local (gain of the next latents) and global terms, mean over concepts with "
                 "enough examples. MS mean beside it for comparison.")
        rep.table(["codes", "FMS", "acc0", "local", "global", "concepts", "MS mean", "source"], rows)


def uniqueness_tables(rep: Report, results: list[ResultFile]) -> None:
    rows = []
    header_t: list = []
    for r in results:
        u, above = r.record, r.record.pairs_above
        rows.append([str(r.path.parent.relative_to(rep.run_dir)), str(u.k),
                     f"{u.neurons} (+{u.left_out_near_dead} near-dead left out)", f"{u.pairs:,}"]
                    + [f"{above[t]:,}" for t in sorted(above)] + [rep.cite(r.path)])
        header_t = sorted(above)
    if rows:
        rep.heading("Uniqueness of top images")
        rep.para("Pairs of neurons whose top-k image sets overlap (Jaccard index J above each threshold); "
                 "fewer pairs = more distinct neurons.")
        rep.table(["store", "k", "neurons", "pairs"] + [f"J > {t}" for t in header_t] + ["source"], rows)


def agreement_tables(rep: Report, results: list[ResultFile]) -> None:
    for r in results:
        a = r.record
        rep.heading("Agreement with the user study")
        bins = next(iter(a.metrics.values()))["bins"]
        header = ["metric"] + [b["bin"] for b in bins] + ["bin mean", "weighted", "source"]
        rows = [["paper MS (DINOv2)"] + [f"{v:.2f}" for v in paper.AGREEMENT_DINO]
                + [f"{paper.AGREEMENT_DINO_MEAN:.3f}", "–", ""]]
        for name, m in a.metrics.items():
            rows.append([name] + [f"{b['agreement']:.2f} (n={b['pairs']})" if b["agreement"] is not None else "–"
                                  for b in m["bins"]] + [_fmt(m["mean_over_bins"], 3), _fmt(m["pair_weighted"], 3),
                                                         rep.cite(r.path)])
        rep.table(header, rows)


def names_tables(rep: Report, results: list[ResultFile]) -> None:
    """The latents CLIP names most confidently (``saevlm name``), per code store."""
    for r in results:
        n = r.record
        named = [x for x in n.latents if x.names]
        if not named:
            continue
        rep.heading(f"Latent names: {r.path.parent.relative_to(rep.run_dir)}", 3)
        best = _names_intro(rep, n, named)
        rep.table(["latent", "name", "similarity", "margin", "2nd", "detection", "top-image label", "purity", "source"],
                  _name_rows(rep, r, best))


def _names_intro(rep: Report, n, named: list) -> list:
    """Say how the names were made; the 10 names to list (best detected, or largest margin)."""
    where = "where they are active " if n.named_where_active else ""
    score_note = _detection_note(named)
    if n.explainer in ("mllm", "given"):
        by = f"written by {n.mllm_model} from a grid of their top-{n.k} images {where}" if n.explainer == "mllm" \
            else f"given in {Path(n.names_file or '').name}"
        rep.para(f"{len(named)} of {len(n.latents)} latents named, {by}; similarity: the cosine of the name's CLIP "
                 f"text with the mean CLIP embedding of those images.{score_note} The 10 best detected:")
        return sorted(named, key=lambda x: -(x.detection if x.detection is not None else -1))[:10]
    rep.para(f"{len(named)} of {len(n.latents)} latents named from {n.vocab_size} words "
             f"({n.vocab_source}; '{n.template}'), by the cosine of the mean CLIP embedding of their "
             f"top-{n.k} images {where}with each word.{score_note} The 10 with the largest margin over the "
             f"second word:")
    return sorted(named, key=lambda x: -(x.margin or 0))[:10]


def _detection_note(named: list) -> str:
    """The median detection score of the scored names, and that of random other names."""
    scored = [x for x in named if x.detection is not None]
    if not scored:
        return ""
    baselines = [x.detection_baseline for x in scored if x.detection_baseline is not None] or [np.nan]
    return (f" Detection score (AUROC of the name's text on held-out activating vs random silent images): "
            f"median {np.median([x.detection for x in scored]):.3f} over {len(scored)} scored names, a "
            f"random other name's {np.median(baselines):.3f}.")


def _name_rows(rep: Report, r: ResultFile, best: list) -> list[list[str]]:
    return [[str(x.id), x.names[0][0], f"{x.names[0][1]:.3f}", _fmt(x.margin, 3),
             x.names[1][0] if len(x.names) > 1 else "–", _fmt(x.detection, 3),
             str("–" if x.label is None else x.label), _fmt(x.purity), rep.cite(r.path)] for x in best]


def stability_tables(rep: Report, results: list[ResultFile]) -> None:
    """Seed stability (``saevlm stability``): latents matched across seeds, and the seed spread of
    the mean MS, the number to set beside the differences between SAEs above."""
    for r in results:
        s = r.record
        seeds = ["?" if x.seed is None else str(x.seed) for x in s.saes]
        rep.heading("Seed stability", 3)
        text = (f"{len(s.saes)} SAEs of {s.dict_size:,} latents (seeds {', '.join(seeds)}), matched one to one by "
                f"decoder cosine (an assignment over each latent's {s.candidates} nearest partners); a pair counts "
                f"as the same latent at cosine >= {s.threshold:g}.")
        if s.mean_ms_seed_std is not None:
            text += (f" Mean MS per seed: {', '.join(f'{m:.3f}' for m in s.mean_ms or ())}; seed spread (std) "
                     f"**{s.mean_ms_seed_std:.3f}**: a difference between SAEs smaller than about twice this may be "
                     f"seed noise, whatever its interval over images.")
        rep.para(text)
        rep.table(["pair", "matched", "median cosine", "co-activation agrees", "MS r (matched)", "source"],
                  [[f"{p.a} vs {p.b}", _fmt(None if p.matched_share is None else 100 * p.matched_share, 1) + " %",
                    _fmt(p.median_cosine, 3),
                    "–" if p.coactivation_agreement is None else f"{100 * p.coactivation_agreement:.1f} %",
                    _fmt(p.ms_pearson, 3), rep.cite(r.path)] for p in s.pairs])


def result_tables(rep: Report, results: RunResults) -> None:
    """Every table of a run's results, in the report's order: what ``saevlm report`` writes and
    the explorer's run page shows (one rendering for both)."""
    run_dir = rep.run_dir
    ms_tables(rep, results.ms)
    if results.unscored:
        if not results.ms:
            rep.heading("Monosemanticity Score")
        rep.para("No MS yet (run `saevlm ms --activations_dir <store> --embeddings_path <embeddings>`): " +
                 ", ".join(f"`{p.relative_to(run_dir) if p.is_relative_to(run_dir) else p}`" for p in results.unscored))
    training_tables(rep, results.training)
    stability_tables(rep, results.stability)
    fms_tables(rep, results.fms)
    uniqueness_tables(rep, results.uniqueness)
    hierarchy_tables(rep, results.hierarchy)
    steering_tables(rep, results.steering, results.baselines)
    agreement_tables(rep, results.agreement)
    names_tables(rep, results.names)


def figures(rep: Report, records: list[MSRecord], out_dir: Path, grids: bool) -> None:
    sae_recs = [r for r in records if r.kind == "sae"]
    if not sae_recs:
        return
    rep.heading("Figures")
    raw = {(r.model, r.layer, r.embeddings_model): r for r in records if r.kind == "raw"}
    fig_dir = out_dir / "report_figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(sae_recs):
        sae_scores = _histogram(rep, r, raw.get((r.model, r.layer, r.embeddings_model)), fig_dir / f"ms_hist_{i:02d}.png")
        if sae_scores is not None and grids and (r.store / "top_images_16.npy").is_file():
            _best_neuron_grids(rep, r, sae_scores, fig_dir, i)


def _histogram(rep: Report, r: MSRecord, rr: MSRecord | None, png: Path) -> np.ndarray | None:
    """The MS histogram of an SAE against its layer's raw neurons; the SAE's scores (None when unreadable)."""
    from saevlm.metrics.figures import save_histogram

    sae_scores = _load_scores(rep, r)
    if sae_scores is None:
        return None
    save_histogram(sae_scores, _load_scores(rep, rr) if rr else None, png)
    rep.figure(png, f"MS histogram: {ARCH_NAMES.get(r.arch, r.arch)} x{r.expansion}, layer {r.layer}, "
                    f"{r.model} (against raw neurons) {rep.cite(r.source)}")
    return sae_scores


def _best_neuron_grids(rep: Report, r: MSRecord, sae_scores: np.ndarray, fig_dir: Path, i: int) -> None:
    """The top-16 grid of the best-MS neuron of each Matryoshka group (of the SAE, when not grouped)."""
    from saevlm.metrics.figures import open_store_images, save_grid

    try:
        images = open_store_images(_open(r.store))
    except UserError:
        return  # synthetic stores have no images
    top = np.load(r.store / "top_images_16.npy")
    values = np.load(r.store / "top_images_16_values.npy")
    groups = list(r.group_sizes or [len(top)])
    bounds = np.concatenate([[0], np.cumsum(groups)])
    for g in range(len(groups)):
        sl = np.arange(bounds[g], bounds[g + 1])
        s = np.nan_to_num(sae_scores[sl], nan=-np.inf)
        if not np.isfinite(s).any():
            continue  # every latent of the group is dead
        best = int(sl[np.argmax(s)])
        png = fig_dir / f"grid_{i:02d}_g{g}_n{best}.png"
        save_grid(images, top[best], values[best], f"neuron {best} | MS {sae_scores[best]:.3f} | group {g}", png)
        rep.figure(png, f"Best neuron of group {g}: {ARCH_NAMES.get(r.arch, r.arch)} x{r.expansion}, layer {r.layer}")


def _load_scores(rep: Report, rec: MSRecord):
    try:
        return np.load(rec.source.parent / A.MS_SCORES)
    except (OSError, ValueError) as e:
        rep.warn(f"{rec.source.parent / 'scores.npy'}: unreadable ({type(e).__name__}); figure left out",
                 damaged=True)
        return None


def _open(store: Path):
    from saevlm.data.open import open_any_store
    return open_any_store(store)


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
       "font-size:13px;text-align:right}th{background:#f3f3f3}figure{display:inline-block;margin:8px}"
       "figcaption{font-size:12px;color:#555}")


def _insert_warnings(rep: Report, at: tuple[int, int]) -> None:
    """The report's warnings as a block at ``at`` (after the title), and on stderr."""
    md_w = ["**Warnings** (these results are incomplete or out of date):", ""] + \
        [f"- {w}" for w in rep.warnings] + [""]
    html_w = ["<div style='border:2px solid #c00;padding:6px'><b>Warnings</b> (these results are "
              "incomplete or out of date):<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in rep.warnings)
              + "</ul></div>"]
    rep.md[at[0]:at[0]] = md_w
    rep.html[at[1]:at[1]] = html_w
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)


def build_report(run_dir: str | Path, output_dir: str | Path | None = None, grids: bool = True,
                 title: str = "saevlm report") -> tuple[Path, Path, list[str]]:
    """Write report.md and report.html; returns their paths and the list of damaged or missing
    result files (each also a warning inside the report)."""
    from saevlm.data.atomic import atomic_write_bytes, ensure_writable_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--run_dir {run_dir}: no such directory")
    out = ensure_writable_dir(Path(output_dir) if output_dir else run_dir,
                              "output_dir" if output_dir else "run_dir")
    results: RunResults = collect_run(run_dir)
    if not results.ms and not results.training_runs and not results.notes.warnings:
        raise UserError(f"--run_dir {run_dir}: found no results (no ms*/ms.json, no run.json); run the "
                        f"experiment first")
    rep = Report(run_dir, notes=results.notes)
    rep.heading(title, 1)
    title_len = (len(rep.md), len(rep.html))
    result_tables(rep, results)
    figures(rep, results.ms, out, grids)
    if rep.warnings:  # at the top, so nobody reads a table without them
        _insert_warnings(rep, title_len)
    rep.heading("Sources")
    rep.md += [f"{i + 1}. `{s}`" for i, s in enumerate(rep.sources)] + [""]
    rep.html.append("<ol>" + "".join(f"<li><code>{html.escape(s)}</code></li>" for s in rep.sources) + "</ol>")
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_bytes(md_path, "\n".join(rep.md).encode())
    atomic_write_bytes(html_path, (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                   f"</title><style>{CSS}</style></head><body>" + "\n".join(rep.html)
                                   + "</body></html>").encode())
    return md_path, html_path, rep.damaged
