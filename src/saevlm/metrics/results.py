"""Where metric results live and how commands find them: MS folders per embedder
(``<store>/ms_<embedder>/``), scores checked against the store they score, and the one-row-per-image
rule of image-level metrics."""

from __future__ import annotations

from saevlm.data import artifacts as A


def embedder_slug(emb_store) -> str:
    """A folder-safe name of the embedding model: ``dinov2-base``, ``clip-vit-base-patch32``."""
    import re

    name = str(emb_store.provenance.model.name or "embeddings")
    name = name.rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "embeddings"


def find_ms_dir(store_path, ms_subdir: str | None, field: str, required: bool = False):
    """The folder holding a store's MS results: ``<store>/<ms_subdir>`` when named, else the single
    ``ms*/`` folder with a scores.npy (several: an error naming them, or None when not required)."""
    from pathlib import Path

    from saevlm.errors import UserError

    store_path = Path(store_path)
    if ms_subdir:
        d = Path(ms_subdir) if Path(ms_subdir).is_absolute() else store_path / ms_subdir
        if required and not (d / A.MS_SCORES).is_file():
            raise UserError(f"ms_subdir {ms_subdir}: no scores.npy in {d}; run saevlm ms first", field="ms_subdir")
        return d if (d / A.MS_SCORES).is_file() else None
    found = sorted(d for d in store_path.glob("ms*") if (d / A.MS_SCORES).is_file())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(d.name for d in found)
        if required:
            raise UserError(f"{field} {store_path}: holds MS results for several embedders ({names}); "
                            f"choose one with --ms_subdir", field=field)
        print(f"note: {field} {store_path}: MS results for several embedders ({names}); pass --ms_subdir "
              f"to use one", file=__import__("sys").stderr)
        return None
    if required:
        raise UserError(f"{field} {store_path}: no MS results (ms*/scores.npy); run saevlm ms first", field=field)
    return None


def load_ms_scores(ms_dir, num_neurons: int, field: str, store=None):
    """scores.npy of an MS folder, checked against the number of neurons it should score (and,
    with ``store``, refused when computed from an earlier version of that store)."""
    import numpy as np

    from saevlm.errors import UserError

    f = ms_dir / A.MS_SCORES
    if store is not None:
        refresh = f"saevlm ms --activations_dir {store.path} --embeddings_path ... --overwrite"
        if not (ms_dir / A.MS_JSON).is_file() and store_schema(store) >= 2:
            raise UserError(f"{field} {ms_dir}: no {A.MS_JSON} beside {A.MS_SCORES} (it records what the scores "
                            f"were computed from); refresh it with `{refresh}`", field=field)
        check_fresh(source_of_ms(ms_dir), store, str(ms_dir / A.MS_JSON), refresh)
        check_result_files(ms_dir, ms_dir / A.MS_JSON, [A.MS_SCORES], store, refresh)
    try:
        scores = np.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{field} {f}: unreadable ({e}); rerun saevlm ms", field=field) from None
    if scores.ndim != 1 or len(scores) != num_neurons:
        raise UserError(f"{field} {f}: {scores.shape} scores, expected one per neuron ({num_neurons}); "
                        f"it belongs to another store, rerun saevlm ms", field=field)
    return scores


def check_one_row_per_image(store, field: str) -> None:
    from saevlm.errors import UserError

    n_img = int(store.manifest.num_images if store.manifest.num_images is not None else store.num_rows)
    if store.num_rows != n_img:
        raise UserError(f"{field} {store.path}: {store.num_rows} rows for {n_img} images (token "
                        f"selection {store.provenance.tokens.selection!r}); this metric needs one row per image "
                        f"(extract with --cls_only or --mean_pool)", field=field)


# -- derived results tied to the store they describe ------------------------------------------
# Every derived result (top images, MS, FMS, names, hierarchy, uniqueness) records which version
# of which store it was computed from: one record, data/artifacts.SourceStamp.


def source_stamp(store) -> dict:
    """The ``source`` a derived result writes for ``store`` (SourceStamp's keys, None included)."""
    return A.SourceStamp.of(store).as_json()


def stale_reason(recorded: A.SourceStamp | dict | None, store) -> str | None:
    """Why a result stamped ``recorded`` does not describe ``store`` now (None: it does, or it is
    an older result without a stamp, whose shapes the readers still check)."""
    if isinstance(recorded, dict):
        recorded = A.SourceStamp.from_json(recorded, "source")
    if not isinstance(recorded, A.SourceStamp):
        return None
    return recorded.stale_reason(A.SourceStamp.of(store))


def source_of_ms(ms_dir) -> A.SourceStamp | None:
    """The activations' stamp an MS folder recorded (ms.json ``inputs.activations``)."""
    import json

    try:
        data = json.loads((ms_dir / A.MS_JSON).read_text())
    except (OSError, ValueError):
        return None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    acts = inputs.get("activations") if isinstance(inputs, dict) else None
    try:
        return A.SourceStamp.from_json(acts, "ms.json inputs.activations") if isinstance(acts, dict) else None
    except A.ResultError:
        return None


def check_fresh(recorded: A.SourceStamp | dict | None, store, what: str, refresh: str) -> None:
    """Refuse a stale derived result, naming the file and the command that refreshes it."""
    from saevlm.errors import UserError

    reason = stale_reason(recorded, store)
    if reason is not None:
        raise UserError(f"{what}: stale, {reason}; refresh it with `{refresh}`")


# -- the .npy files a result's JSON stamps ------------------------------------------------------
# An MS folder's scores.npy and a store's top_images_<k>*.npy sit beside the JSON that records their
# source; the JSON also records their sizes and CRC-32s (``files``), so an .npy copied in from
# another SAE's folder (with the JSON left as it was) is recognised.

def files_reason(directory, recorded: dict | None, names) -> str | None:
    """Why the files ``names`` in ``directory`` are not the ones a result's JSON recorded
    (``recorded``: file name -> {"bytes", "crc32"}), or None when they are."""
    from pathlib import Path

    from saevlm.data.atomic import file_checksum

    if not isinstance(recorded, dict):
        return "its JSON records no checksums of its .npy files"
    for name in names:
        f = Path(directory) / name
        want = recorded.get(name)
        if not f.is_file():
            continue  # a missing file is named by its reader
        if not isinstance(want, dict):
            return f"{name} is not among the files its JSON recorded"
        got = file_checksum(f)
        if got["bytes"] != want.get("bytes") or got["crc32"] != want.get("crc32"):
            return (f"{name} is not the file its JSON recorded ({got['bytes']} bytes, CRC-32 {got['crc32']}; "
                    f"recorded {want.get('bytes')} bytes, CRC-32 {want.get('crc32')}): copied in from another "
                    f"result or replaced")
    return None


def store_schema(store) -> int:
    """The schema version of a store's manifest."""
    v = store.manifest.schema_version
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def recorded_files(json_path) -> dict | None:
    """The ``files`` checksums a result JSON recorded (None: none, or unreadable)."""
    import json

    try:
        data = json.loads(open(json_path).read())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else None


def result_files_reason(directory, recorded: dict | None, names, store) -> str | None:
    """:func:`files_reason`, except that results of stores older than schema version 2 that
    recorded no checksums pass (an older saevlm wrote none); newer ones must have them."""
    from saevlm.data.manifest import SEALED_SINCE

    if recorded is None and store_schema(store) < SEALED_SINCE:
        return None
    return files_reason(directory, recorded, names)


def check_result_files(directory, json_path, names, store, refresh: str) -> None:
    """Refuse .npy result files that are not the ones their JSON recorded (see above)."""
    from saevlm.errors import UserError

    reason = result_files_reason(directory, recorded_files(json_path), names, store)
    if reason is not None:
        raise UserError(f"{json_path}: {reason}; refresh it with `{refresh}`")
