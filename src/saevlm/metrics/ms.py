"""``saevlm ms``: the Monosemanticity Score of every neuron (arXiv 2504.02821, Eq. 5-9), exactly,
in one streaming pass; the math is in :mod:`saevlm.metrics.monosemanticity`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from saevlm.commandline import CommandConfig, DeviceOption, OutputOption, ProgressOption, opt
from saevlm.data import artifacts as A
from saevlm.metrics.monosemanticity import (  # noqa: F401 (re-exported)
    MIN_ACTIVE_IMAGES,
    MSAccumulator,
    best_active,
    summarize,
)
from saevlm.metrics.results import check_one_row_per_image, embedder_slug  # noqa: F401


# ----------------------------------------------------------------------------- command
@dataclass(frozen=True, kw_only=True)
class MSConfig(CommandConfig, DeviceOption, ProgressOption, OutputOption):
    """`saevlm ms`: Monosemanticity Score of every neuron (exact, one streaming pass)."""

    COMMAND: ClassVar[str] = "ms"
    OUTPUT_DEFAULT: ClassVar[str] = "<activations_dir>/ms_<embedder>/, e.g. ms_dinov2-base/, for scores.npy, ms.json and metric_stats.txt, so that scores from another embedder are added, not replaced; the store's own files are never touched"

    activations_dir: str = opt()
    """an activation store (raw neurons) or a code store (SAE latents), one row per image"""
    embeddings_path: str = opt()
    """the embedding store of the same images (saevlm embed: DINOv2 / CLIP)"""
    output_subdir: str | None = opt(None)
    """the same, as a folder name inside --activations_dir (the authors' scripts)"""
    overwrite: bool = opt(False)
    """replace results in the output folder that were computed from other inputs"""
    allow_nonfinite: bool = opt(False)
    """score stores holding NaN / inf (refused by default; scores then may be NaN)"""
    chunk_rows: int = opt(8192)
    """images per streamed chunk; bounds memory (default: %(default)s)"""
    uncertainty: bool = opt(True, action="optional")
    """a second pass for each neuron's standard error and 95 % interval over resampling of the images
    (the delete-one jackknife, exact through the closed form; scores_se.npy, scores_ci95.npy,
    image_deltas.npy; --no-uncertainty skips it)"""


CONFIG = MSConfig


def _embedder_note(acts, emb) -> str | None:
    """What a reader of the MS should know about E: an activation store used as E (allowed: MonoLoss
    scores with the SAE's own input), or E computed by the very encoder whose activations are scored
    (which narrows the gap between raw neurons and SAE latents: the paper's E is another model)."""
    from saevlm.models.base import POST_PROJECTION

    kind = emb.manifest.kind
    notes = []
    hook = emb.provenance.hook
    if kind == "activations" and hook is not None and hook.attachment_point == POST_PROJECTION:
        notes.append("E is the pooled-output store of saevlm extract (the vectors saevlm embed writes)")
    elif kind not in (None, "embeddings"):
        notes.append(f"E is a {kind} store (not written by saevlm embed), used as the embedder")
    if emb.provenance.compatible_with(acts.provenance, aspects=("model",)) is None:
        notes.append(f"E comes from the same encoder as the scored activations ({acts.provenance.model.label}); "
                     f"the paper embeds with another model (DINOv2 ViT-B), and a shared encoder narrows the gap "
                     f"between raw neurons and SAE latents")
    return "; ".join(notes) or None


def ms_inputs(acts, emb) -> dict:
    """What an MS result was computed from: results from other inputs are never replaced silently."""
    from saevlm.data.artifacts import SourceStamp

    return {"activations": SourceStamp.of(acts).as_json(SourceStamp.MS_INPUT_KEYS),
            "embeddings": SourceStamp.of(emb).as_json(SourceStamp.MS_INPUT_KEYS)}


def _same_inputs(old: dict | None, new: dict) -> bool:
    """The same stores, wherever they now lie (a copied or moved run keeps its results)."""
    import json

    def strip(inputs, keys=None):
        return {k: {kk: vv for kk, vv in v.items() if kk != "path" and (keys is None or kk in keys.get(k, ()))}
                for k, v in (inputs or {}).items()}
    if old is None:
        return False
    new = json.loads(json.dumps(new))
    # keys an older saevlm did not record (write_id) are compared only where both sides have them
    both = {k: set(v) & set((old.get(k) or {})) for k, v in new.items()} if isinstance(old, dict) else {}
    return strip(old, both) == strip(new, both) and set(old) == set(new)


def check_embeddings_have_norm(emb, e, start: int) -> None:
    """Every embedding must have a non-zero norm (the cosine similarity of Eq. 5 divides by it):
    refuse an all-zero row of the chunk ``e`` (rows ``start`` ...), naming the image. Checked on
    the chunks the MS reads anyway; nothing is written before the end, so nothing is lost."""
    import numpy as np

    from saevlm.errors import UserError

    zero = np.flatnonzero(~np.any(e != 0, axis=1))
    if len(zero):
        row = start + int(zero[0])
        image = int(emb.image_ids()[row])
        raise UserError(f"--embeddings_path {emb.path}: the embedding of image {image} (row {row}) is all zeros "
                        f"({len(zero)} such rows in this chunk); its cosine similarity is undefined, so the "
                        f"MS cannot use it. Re-embed the dataset, or check that image")


def _open_inputs(args: MSConfig):
    """The activations (or codes) and embeddings, checked to be one row per image, of the same
    images, and at least two of them."""
    from saevlm.data.atomic import check_distinct_inputs
    from saevlm.data.open import open_any_store
    from saevlm.data.store import ActivationStore, check_same_images
    from saevlm.errors import UserError

    if args.chunk_rows < 1:
        raise UserError(f"--chunk_rows {args.chunk_rows}: expected a positive integer")
    if args.output_dir and args.output_subdir:
        raise UserError("--output_dir and --output_subdir: give one (the folder, or its name inside the store)")
    acts = open_any_store(args.activations_dir, "activations_dir", allow_nonfinite=args.allow_nonfinite)
    check_distinct_inputs([("activations_dir", args.activations_dir), ("embeddings_path", args.embeddings_path)])
    emb = ActivationStore(args.embeddings_path, field="embeddings_path", allow_nonfinite=args.allow_nonfinite)
    check_one_row_per_image(acts, "activations_dir")
    check_one_row_per_image(emb, "embeddings_path")
    check_same_images(acts, emb, what="--activations_dir / --embeddings_path")
    if acts.num_rows < 2:
        raise UserError(f"--activations_dir {acts.path}: the MS needs at least 2 images")
    return acts, emb


def _check_earlier_results(out, flag: str, inputs: dict, overwrite: bool) -> None:
    """An output folder holding MS results of other inputs is replaced only with --overwrite."""
    import json

    from saevlm.errors import UserError

    old_f = out / A.MS_JSON
    if not old_f.is_file() or overwrite:
        return
    try:
        old = json.loads(old_f.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    old_inputs = old.get("inputs") if isinstance(old, dict) else None
    if not _same_inputs(old_inputs, inputs):
        what = "other inputs" if old_inputs else "inputs it does not record (an older saevlm)"
        raise UserError(f"{flag} {out}: holds MS results computed from {what} "
                        f"({(old_inputs or {}).get('activations', {}).get('path', old.get('activations_dir', '?'))} "
                        f"with {(old_inputs or {}).get('embeddings', {}).get('path', old.get('embeddings_path', '?'))}); "
                        f"pass --overwrite to replace them, or choose another --output_dir")


def _one_pass(sink, acts, emb, args: MSConfig, desc: str, check_norms: bool) -> None:
    """Every chunk of the activations (CSR for codes) with its embeddings, into ``sink`` (the MS
    accumulator, or the jackknife's second pass: the same chunks in the same order)."""
    from tqdm import tqdm

    from saevlm.data.codes import CodeStore

    sparse = isinstance(acts, CodeStore)
    with tqdm(total=acts.num_rows, unit="img", disable=args.no_progress, desc=desc,
              dynamic_ncols=True, file=sys.stderr) as bar:
        for chunk in acts.iter_csr(args.chunk_rows) if sparse else acts.iter_chunks(args.chunk_rows):
            start, rows = (chunk.start, chunk.num_rows) if sparse else (chunk[0], len(chunk[1]))
            e = emb.read(start, start + rows)
            if check_norms:
                check_embeddings_have_norm(emb, e, start)
            if sparse:
                sink.add_csr(chunk.indptr, chunk.indices, chunk.values, e)
            else:
                sink.add_dense(chunk[1], e)
            bar.update(rows)


def _uncertainty(out, unc: dict, scores_k, summary: dict, files: dict) -> dict:
    """ms.json's ``uncertainty`` from the jackknife; its arrays are saved beside (into ``files``)."""
    import numpy as np

    from saevlm.data.atomic import atomic_save_npy
    from saevlm.metrics.monosemanticity import jackknife_interval

    se = unc["se"]
    scored = ~np.isnan(scores_k)
    width = unc["ci95"][:, 1] - unc["ci95"][:, 0]
    mean_se = jackknife_interval(unc["image_deltas"])
    for name, arr in ((A.MS_SE, se), (A.MS_CI95, unc["ci95"]), (A.MS_IMAGE_DELTAS, unc["image_deltas"])):
        files[name] = atomic_save_npy(out / name, arr)
    return {
        "method": "delete-one jackknife over images, exact through the closed form (shift and scale held fixed)",
        "median_se": float(np.median(se[scored & np.isfinite(se)])) if (scored & np.isfinite(se)).any() else None,
        "wide_intervals": int((scored & ~(width <= 0.2)).sum()),
        "undefined_without_one_image": int((scored & np.isinf(se)).sum()),
        "mean_se": mean_se, "mean_ci95": [summary["mean"] - 1.96 * mean_se, summary["mean"] + 1.96 * mean_se],
    }


def run(args: MSConfig) -> int:
    import time
    from pathlib import Path

    from saevlm.data.atomic import OutputLock, atomic_save_npy, atomic_write_text
    from saevlm.data.codes import CodeStore
    from saevlm.device import resolve_device

    t0 = time.time()
    device = resolve_device(args.device)
    acts, emb = _open_inputs(args)
    embedder_note = _embedder_note(acts, emb)
    if embedder_note:
        print(f"note: --embeddings_path {emb.path}: {embedder_note}", file=sys.stderr)
    if args.output_dir:
        out, flag = Path(args.output_dir), "--output_dir"
    else:
        out = acts.path / (args.output_subdir or f"ms_{embedder_slug(emb)}")
        flag = "--output_subdir" if args.output_subdir else "--output_dir (default)"
    # Before any work: the output must be writable, ours alone, and not hold other inputs' results.
    lock = OutputLock(out, flag)
    inputs = ms_inputs(acts, emb)
    _check_earlier_results(out, flag, inputs, args.overwrite)
    sparse = isinstance(acts, CodeStore)
    acc = MSAccumulator(acts.num_neurons, emb.dim, device)
    _one_pass(acc, acts, emb, args, "MS", check_norms=True)
    scores_k = acc.scores()
    summary = summarize(scores_k)
    unc = None
    if args.uncertainty:  # the second pass: the same chunks, in the same order
        jk = acc.jackknife()
        _one_pass(jk, acts, emb, args, "MS intervals", check_norms=False)
        unc = jk.result()
    rare, best_active_k = None, None
    if sparse:  # scored latents active on fewer than 16 images: their MS rests on few pairs
        import numpy as np
        active = acc.nnz.cpu().numpy()
        rare = int(((active < MIN_ACTIVE_IMAGES) & ~np.isnan(scores_k)).sum())
        best_active_k = best_active(scores_k, active)
    record = {**summary, "scored": int(summary["total"] - summary["dead"]), "scored_active_on_fewer_than_16": rare,
              "top10_active_on_16_or_more": best_active_k, "embedder_note": embedder_note,
              "dead_constant": acc.dead_constant, "dead_one_image": acc.dead_one_image,
              "num_images": acts.num_rows, "kind": "sae latents" if sparse else "raw neurons",
              "activations_dir": str(acts.path.resolve()), "embeddings_path": str(emb.path.resolve()),
              "embeddings_model": emb.provenance.model.name,
              "sae": acts.provenance.sae.to_json() if acts.provenance.sae is not None else None,
              "hook": acts.provenance.hook.to_json(), "model": acts.provenance.model.name, "inputs": inputs,
              "definition": "arXiv 2504.02821 Eq. 5-9: per-neuron min-max, pairs n<m, NaN = dead; std unbiased"}
    lines = [f"MS over {acts.num_rows} images, embeddings {record['embeddings_model']}",
             f"mean {summary['mean']:.4f} +- {summary['std']:.4f} over {record['scored']} scored neurons "
             f"of {summary['total']}",
             f"dead {summary['dead']} of {summary['total']} ({acc.dead_constant} never vary, "
             f"{acc.dead_one_image} vary on one image only)",
             "top10 " + " ".join(f"{i}:{s:.4f}" for i, s in summary["top10"]),
             "bottom10 " + " ".join(f"{i}:{s:.4f}" for i, s in summary["bottom10"])]
    # scores.npy first and ms.json last: ms.json marks a complete result
    record["files"] = {A.MS_SCORES: atomic_save_npy(out / A.MS_SCORES, scores_k)}  # checked by readers
    if unc is not None:
        record["uncertainty"] = u = _uncertainty(out, unc, scores_k, summary, record["files"])
        lines.insert(2, f"mean over images: {summary['mean']:.4f} [{u['mean_ci95'][0]:.4f}, {u['mean_ci95'][1]:.4f}] "
                        f"(95 %, jackknife over images); {u['wide_intervals']} scored neurons with a 95 % interval "
                        f"wider than 0.2")
    atomic_write_text(out / A.MS_STATS, "\n".join(lines) + "\n")
    A.MSSummary.write_json(out / A.MS_JSON, record)
    lock.release()
    print("\n".join(lines))
    extra = ", scores_se.npy, scores_ci95.npy, image_deltas.npy" if unc is not None else ""
    print(f"wrote {out}/scores.npy{extra}, ms.json, metric_stats.txt ({time.time() - t0:.1f} s)")
    return 0
