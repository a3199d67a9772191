"""Which result files of a store the explorer shows: every file computed from an earlier version
of the store, damaged, or not readable as what it claims to be is named here, once per view of the
store, with why and the command that refreshes it. Readers (the columns and pages of
:class:`~saevlm.explorer.index.SAEView`) only ask whether a file is fresh; none of them changes
the verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saevlm.data import artifacts as A
from saevlm.data.topimages import TopImagesStore, top_images_files
from saevlm.errors import UserError
from saevlm.data.stamps import recorded_files, result_files_reason, store_schema

TOP_K = 16  # the top images the pages show


def files_reason(view, json_path: Path, names: list[str]) -> str | None:
    """Why the .npy files beside a result JSON are not the ones it recorded (see
    metrics.results.files_reason); results of older stores without checksums pass."""
    return result_files_reason(json_path.parent, recorded_files(json_path), names, view.store)


def names_problem(view) -> str | None:
    """Why names.json cannot be shown beside this store's latents (None: it can)."""
    try:
        names = view.record(A.NAMES, A.NamesResult)
    except A.ResultError as err:
        return str(err)
    if len(names.latents) != view.num_latents:
        return f"names for {len(names.latents)} latents, the store has {view.num_latents}"
    if not names.named_where_active:
        return ("named from all top images, including ones where the latent is 0 (an older saevlm); names and "
                "purity now use only activating images")
    return None


def _array_problem(path: Path, shape_ok) -> str | None:
    try:
        a = np.load(path)
    except (OSError, ValueError, EOFError) as err:  # not an .npy array (damaged, or pickled data)
        return f"cannot be read as an array ({err})"
    return shape_ok(a)


def stale_files(view) -> dict[str, str]:
    """derived file (relative to the store) -> why it is not shown, with the refreshing command."""
    out: dict[str, str] = {}
    rel = view.path
    _stamped_results(view, out)
    _top_images_arrays(view, out)
    _ms_folders(view, out)
    for f, _, why in view._steering_results:
        if why:
            out[f.relative_to(view.run_dir).as_posix()] = (f"{why}; refresh: saevlm steering-score --sae_path "
                                                           f"{view.store.provenance.sae.path} ...")
    if A.NAMES not in out and (view.path / A.NAMES).is_file():
        reason = names_problem(view)
        if reason:
            out[A.NAMES] = f"{reason}; refresh: saevlm name --codes_dir {rel} ..."
    _dataset_files(view, out)
    return out


def _stamped_results(view, out: dict[str, str]) -> None:
    """The results that record their source (SourceStamp): stale when the store was re-written."""
    from saevlm.data.stamps import stale_reason

    rel = view.path
    checks = [(A.top_images_json(TOP_K), A.TopImagesStamp, f"saevlm top-images --activations_dir {rel}"),
              (A.NAMES, A.NamesResult, f"saevlm name --codes_dir {rel} ..."),
              (A.FMS_JSON, A.FMSResult, f"saevlm fms --activations_dir {rel}"),
              (A.hierarchy_json(TOP_K), A.HierarchyResult, f"saevlm hierarchy --activations_dir {rel}")]
    for name, kind, refresh in checks:
        if not (view.path / name).is_file():
            continue
        try:
            reason = stale_reason(view.record(name, kind).source, view.store)
        except A.ResultError as err:
            reason = str(err)
        if reason is None and kind is A.TopImagesStamp:
            reason = files_reason(view, view.path / name, top_images_files(TOP_K))
        if reason:
            out[name] = f"{reason}; refresh: {refresh}"


def _top_images_arrays(view, out: dict[str, str]) -> None:
    """top_images_<k>.npy without its JSON stamp (a current store), or of the wrong shape."""
    rel, store, K = view.path, view.store, view.num_latents
    top_npy = A.top_images_npy(TOP_K)
    if not (view.path / top_npy).is_file():
        return
    if not (view.path / A.top_images_json(TOP_K)).is_file() and store_schema(store) >= 2 \
            and not isinstance(store, TopImagesStore):
        out[top_npy] = (f"no {A.top_images_json(TOP_K)} beside it (which store and files it is); refresh: saevlm "
                        f"top-images --activations_dir {rel}")
    if top_npy in out or A.top_images_json(TOP_K) in out:
        return
    values_npy = view.path / A.top_images_values_npy(TOP_K)

    def top_shape(top):
        values = np.load(values_npy)
        if top.ndim != 2 or top.shape != values.shape or len(top) != K:
            return f"top images of shape {top.shape} (values {values.shape}), the store has {K} latents"
        return None

    reason = _array_problem(view.path / top_npy, lambda a: _array_problem(values_npy, lambda v: top_shape(a)))
    if reason:
        out[top_npy] = f"{reason}; refresh: saevlm top-images --activations_dir {rel}"


def _ms_folders(view, out: dict[str, str]) -> None:
    """Each ms_<embedder>/: stale, its files not the recorded ones, or scores of the wrong shape."""
    from saevlm.data.stamps import stale_reason

    from saevlm.metrics.results import source_of_ms

    rel, K = view.path, view.num_latents
    for d in sorted(view.path.glob(f"{A.MS_PREFIX}*/")):
        if not (d / A.MS_SCORES).is_file():
            continue
        reason = stale_reason(source_of_ms(d), view.store) or files_reason(view, d / A.MS_JSON, [A.MS_SCORES])
        if reason:
            out[f"{d.name}/{A.MS_JSON}"] = f"{reason}; refresh: saevlm ms --activations_dir {rel} --overwrite ..."
            continue
        reason = _array_problem(d / A.MS_SCORES, lambda a: None if a.ndim == 1 and len(a) == K else
                                f"{a.shape} scores for {K} latents")
        if reason:
            out[f"{d.name}/{A.MS_SCORES}"] = f"{reason}; refresh: saevlm ms --activations_dir {rel} --overwrite ..."


def _dataset_files(view, out: dict[str, str]) -> None:
    """The dataset's files beside the store, checked against the manifest before any page reads them."""
    if (view.path / A.CLASSES).is_file():
        try:
            view.store.dataset_files.file(A.CLASSES)
            view.record(A.CLASSES, A.Classes)
        except (UserError, A.ResultError) as err:
            out[A.CLASSES] = f"{err}; the class names and the hierarchy depth column are left out"
    if A.CLASSES not in out:
        try:
            view.store.labels()
        except UserError as err:
            out[A.LABELS] = f"{err}; no labels are shown"
