"""Collecting a run directory's results for ``saevlm report`` (and any other view of a run):
every result file the commands write, found by scanning, read once, checked for staleness
against the stores it came from, and returned as records. Rendering lives in
:mod:`saevlm.report.render`; nothing here formats a table.

Each result is read into its typed record (:mod:`saevlm.data.artifacts`), whose file names are
named there too. Problems (unfinished runs, missing or damaged files, stale results) go to
:class:`Notes`; ``damaged`` ones make ``saevlm report`` exit non-zero after writing the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from saevlm.data import artifacts as A
from saevlm.data.artifacts import EvalResult, MSSummary, Record, ResultError, TrainRun
from saevlm.data.manifest import ManifestError, Provenance, display_name
from saevlm.errors import UserError


@dataclass
class Notes:
    """Warnings found while collecting (shown at the top of the report and printed)."""

    warnings: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    def warn(self, text: str, damaged: bool = False) -> None:
        """``damaged``: a result file is missing or unreadable, so the command fails (after
        writing the report) instead of passing silently."""
        if text not in self.warnings:
            self.warnings.append(text)
        if damaged and text not in self.damaged:
            self.damaged.append(text)


@dataclass
class MSRecord:
    """One ``ms_<embedder>/ms.json``: raw neurons of an activation store or SAE latents of codes."""

    kind: str  # "sae" or "raw"
    model: str
    layer: object  # int or "last"
    arch: str | None
    expansion: int | None
    k: int | None
    summary: MSSummary
    source: Path
    store: Path
    embeddings_model: str | None = None
    group_sizes: tuple[int, ...] | None = None


@dataclass
class TrainedSAE:
    """One SAE of a training run (``run.json`` + ``trainer_i/eval.json``); ``evaluation`` is None
    while it has no final weights."""

    arch: str
    layer: object
    expansion: int
    model: str | None
    evaluation: EvalResult | None
    source: Path


@dataclass
class ResultFile:
    """A metric's JSON result (hierarchy, steering, FMS, uniqueness, agreement, names) as its record."""

    path: Path
    record: Record


@dataclass
class RunResults:
    """Everything ``saevlm report`` shows about one run directory."""

    run_dir: Path
    ms: list[MSRecord]
    training: list[TrainedSAE]
    training_runs: int
    hierarchy: list[ResultFile]
    steering: list[ResultFile]
    baselines: list[ResultFile]
    fms: list[ResultFile]
    uniqueness: list[ResultFile]
    agreement: list[ResultFile]
    names: list[ResultFile]
    notes: Notes
    stability: list[ResultFile] = field(default_factory=list)  # stability.json (seed-SAEs matched)
    unscored: list[Path] = field(default_factory=list)  # code stores with no MS yet


def layer_of(prov: Provenance):
    """The layer column of a table: the block index, or "last" for the projection."""
    point = prov.hook.attachment_point
    if point == "post_mlp_residual" and prov.hook.layer is not None:
        return int(prov.hook.layer)
    return "last" if point in (None, "post_projection") else str(point)


def _provenance(manifest: dict | None, where: Path, notes: Notes | None) -> Provenance | None:
    """The provenance of a raw manifest, or None (with a warning) when it is damaged."""
    try:
        return Provenance.of_manifest(manifest)
    except ManifestError as e:
        if notes is not None:
            notes.warn(f"{where}: damaged provenance ({e}), left out", damaged=True)
        return None


def read_json(path: Path, notes: Notes | None = None):
    """A result file, or None (with a warning) when it is damaged."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        if notes is not None:
            notes.warn(f"{path}: unreadable ({type(e).__name__}), left out", damaged=True)
        return None
    if not isinstance(data, dict):
        if notes is not None:
            notes.warn(f"{path}: not a result object, left out", damaged=True)
        return None
    return data


def read_record(path: Path, kind: type, notes: Notes | None = None):
    """A result file as its record (:mod:`saevlm.data.artifacts`), or None (with a warning) when
    it is damaged."""
    data = read_json(path, notes)
    if data is None:
        return None
    try:
        return kind.from_json(data, path)
    except ResultError as e:
        if notes is not None:
            notes.warn(f"{e}, left out", damaged=True)
        return None


def finished_at(store: Path) -> str | None:
    """When the store in the folder ``store`` was finished (None: no store, or a damaged manifest)."""
    from saevlm.data.open import store_manifest

    try:
        return store_manifest(store / A.MANIFEST).finished if (store / A.MANIFEST).is_file() else None
    except UserError:
        return None


def collect_ms(run_dir: Path, notes: Notes | None = None) -> list[MSRecord]:
    """Every ``ms*/ms.json`` under ``run_dir`` whose store is still there and whose scores exist."""
    out = []
    for ms_json in sorted(run_dir.rglob(f"{A.MS_PREFIX}*/{A.MS_JSON}")):  # ms_<embedder>/ (or the older ms/)
        summary = read_record(ms_json, MSSummary, notes)
        found = _scored_store(ms_json, summary, notes) if summary is not None else None
        if found is None:
            continue
        store, manifest = found
        if notes is not None:
            _warn_if_ms_stale(notes, ms_json, summary, store)
        prov = _provenance(manifest, store / A.MANIFEST, notes)
        if prov is not None:
            out.append(_ms_record(prov, summary, ms_json, store, notes))
    return out


def _scored_store(ms_json: Path, summary: MSSummary, notes: Notes | None) -> tuple[Path, dict] | None:
    """(the store an ms.json scored, its manifest), when it and the scores are still there: the
    store holding the ms folder first (in a copied or moved run the recorded path still names the
    original, which is not the store these scores now sit beside)."""
    recorded = Path(summary.activations_dir or ms_json.parent.parent)
    store = ms_json.parent.parent if (ms_json.parent.parent / A.MANIFEST).is_file() else recorded
    manifest = read_json(store / A.MANIFEST, notes) if (store / A.MANIFEST).is_file() else None
    if manifest is None:
        if notes is not None:
            notes.warn(f"{ms_json}: the store it scored ({recorded}) is gone; left out")
        return None
    if not (ms_json.parent / A.MS_SCORES).is_file():
        if notes is not None:
            notes.warn(f"{ms_json}: its {A.MS_SCORES} is missing (the MS run did not finish or the file was "
                       f"removed); left out, rerun saevlm ms", damaged=True)
        return None
    return store, manifest


def _warn_if_ms_stale(notes: Notes, ms_json: Path, summary: MSSummary, store: Path) -> None:
    """Scores of an older version of their store are reported, with a warning."""
    from saevlm.data.open import open_any_store
    from saevlm.data.stamps import stale_reason
    try:
        reason = stale_reason(summary.activations_source, open_any_store(store, "store"))
    except UserError:
        reason = None
    if reason:
        notes.warn(f"{ms_json}: stale, {reason}; rerun saevlm ms")


def _ms_record(prov: Provenance, summary: MSSummary, ms_json: Path, store: Path, notes: Notes | None) -> MSRecord:
    """An MS result as a row of the report: an SAE's codes (with its width) or raw neurons."""
    sae = prov.sae
    if notes is not None and sae is not None and sae.path:
        _check_codes_fresh(notes, store, Path(sae.path))
    model = prov.model.label
    emb_model = summary.embeddings_model
    emb_model = display_name(emb_model) if isinstance(emb_model, str) else emb_model
    if sae is not None and sae.dict_size and sae.activation_dim:
        expansion = int(round(sae.dict_size / sae.activation_dim))
        return MSRecord("sae", model, layer_of(prov), sae.arch, expansion, sae.k, summary,
                        ms_json, store, emb_model, sae.group_sizes)
    return MSRecord("raw", model, layer_of(prov), None, None, None, summary, ms_json, store, emb_model)


def _check_codes_fresh(notes: Notes, store: Path, sae_path: Path) -> None:
    """Codes encoded before their SAE checkpoint last changed are stale (the SAE was retrained)."""
    import datetime as dt

    ckpt = sae_path / A.AE_PT if sae_path.is_dir() else sae_path
    finished = finished_at(store)
    if not ckpt.is_file() or not finished:
        return
    written = dt.datetime.fromtimestamp(ckpt.stat().st_mtime, dt.timezone.utc)
    if written > dt.datetime.fromisoformat(finished) + dt.timedelta(seconds=2):
        notes.warn(f"{store}: stale codes, encoded at {finished} with {ckpt}, which changed at "
                 f"{written.isoformat(timespec='seconds')}; re-encode, then rerun ms")


def collect_training(run_dir: Path, notes: Notes) -> tuple[list[TrainedSAE], int]:
    """Every SAE of every ``run.json`` (unfinished ones included, flagged); and the run count."""
    runs = sorted(run_dir.rglob(A.RUN_JSON))
    out = []
    for run_json in runs:
        run = read_record(run_json, TrainRun, notes)
        if run is None:
            continue
        prov = _provenance({"provenance": run.activations_provenance}, run_json, notes) or Provenance()
        if not run.complete:
            notes.warn(f"{run_json}: training unfinished (killed or still running); its SAEs have no final "
                       f"weights, rerun the same train command to resume")
        try:
            trainers = run.trainers
        except ResultError as e:
            notes.warn(f"{run_json}: {e}, left out", damaged=True)
            continue
        out += [_trained_sae(run_json, run, t, prov, notes) for t in trainers]
    return out, len(runs)


def _trained_sae(run_json: Path, run: TrainRun, t, prov: Provenance, notes: Notes) -> TrainedSAE:
    """One SAE of a run, with its evaluation (a finished SAE without one is warned about)."""
    ev_f = run_json.parent / t.dir / A.EVAL_JSON
    ev = read_record(ev_f, EvalResult, notes) if ev_f.is_file() else None
    if ev is None and run.complete:
        notes.warn(f"{ev_f}: missing evaluation of a finished SAE")
    return TrainedSAE(t.arch, layer_of(prov), int(t.expansion_factor), prov.model.name, ev,
                      ev_f if ev is not None else run_json)


def _results(run_dir: Path, pattern: str, kind: type, notes: Notes) -> list[ResultFile]:
    """The result files matching ``pattern`` that are results of ``kind`` (others are not, e.g.
    another command's summary.json), as records."""
    out = []
    for f in sorted(run_dir.rglob(pattern)):
        data = read_json(f, notes)
        if data is None or not kind.matches(data):
            continue
        try:
            record = kind.from_json(data, f)
        except ResultError as e:
            notes.warn(f"{e}, left out", damaged=True)
            continue
        out.append(ResultFile(f, record))
        _warn_if_stale(f, getattr(record, "source", None), notes)
    return out


def _warn_if_stale(f: Path, source: A.SourceStamp | None, notes: Notes | None) -> None:
    """A result that records ``source`` (the stamp of the store it came from) but whose store, the
    folder holding it (or its parent, for fms/), was re-written since: a warning naming both."""
    from saevlm.data.open import open_any_store
    from saevlm.data.stamps import stale_reason

    if notes is None or not isinstance(source, A.SourceStamp):
        return
    for d in (f.parent, f.parent.parent):
        if (d / A.MANIFEST).is_file():
            try:
                reason = stale_reason(source, open_any_store(d, "store", allow_top_images=True))
            except UserError:
                return
            if reason:
                notes.warn(f"{f}: stale, {reason}; rerun the command that wrote it")
            return


def collect_fms(run_dir: Path, notes: Notes) -> list[ResultFile]:
    out = _results(run_dir, Path(A.FMS_JSON).name, A.FMSResult, notes)
    for r in out:
        rec: A.FMSResult = r.record
        store = r.path.parent.parent if (r.path.parent.parent / A.MANIFEST).is_file() else \
            Path(rec.activations_dir or r.path.parent.parent)
        finished = finished_at(store)
        if finished is not None and rec.codes_finished and rec.source is None and rec.codes_finished != finished:
            notes.warn(f"{r.path}: stale, computed before {store} was rewritten; rerun saevlm fms")
        if rec.ms_source and not Path(rec.ms_source).is_file():
            notes.warn(f"{r.path}: the MS it records ({rec.ms_source}) is gone")
    return out


def collect_steering(run_dir: Path, notes: Notes) -> list[ResultFile]:
    """``steering_score.json`` (and ``summary.json`` of older saevlm versions, recognised by
    their ``steered`` key)."""
    found = _results(run_dir, A.STEERING_SCORE, A.SteeringScore, notes) + \
        _results(run_dir, A.STEERING_SUMMARY_OLD, A.SteeringScore, notes)
    return sorted(found, key=lambda r: str(r.path))


def collect_unscored(run_dir: Path) -> list[Path]:
    """Complete SAE code stores with no ``ms*/ms.json`` beside them (listed, never dropped)."""
    from saevlm.data.codes import CODES_FORMAT
    from saevlm.data.open import store_manifest

    out = []
    for m in sorted(run_dir.rglob(A.MANIFEST)):
        if A.EXPLORER_CACHE in m.parts:
            continue
        try:
            head = store_manifest(m)
        except UserError:
            continue
        if head.format == CODES_FORMAT and head.complete \
                and not any(m.parent.glob(f"{A.MS_PREFIX}*/{A.MS_JSON}")):
            out.append(m.parent)
    return out


def collect_run(run_dir: Path) -> RunResults:
    """Read every result under ``run_dir``."""
    notes = Notes()
    ms = collect_ms(run_dir, notes)
    _results(run_dir, "top_images_*.json", A.TopImagesStamp, notes)  # only for their staleness warnings
    training, n_runs = collect_training(run_dir, notes)
    return RunResults(
        run_dir=run_dir, ms=ms, training=training, training_runs=n_runs,
        hierarchy=_results(run_dir, "hierarchy_*.json", A.HierarchyResult, notes),
        steering=collect_steering(run_dir, notes),
        baselines=_results(run_dir, A.SIMILARITY_BASELINE, A.SimilarityBaseline, notes),
        fms=collect_fms(run_dir, notes),
        uniqueness=_results(run_dir, "uniqueness_*.json", A.UniquenessResult, notes),
        agreement=_results(run_dir, A.AGREEMENT_GLOB, A.AgreementResult, notes),
        names=[r for r in _results(run_dir, A.NAMES, A.NamesResult, notes)
               if r.record.format == A.NamesResult.FORMAT],
        notes=notes, unscored=collect_unscored(run_dir),
        stability=[r for r in _results(run_dir, A.STABILITY, A.StabilityResult, notes)
                   if r.record.format == A.StabilityResult.FORMAT])
