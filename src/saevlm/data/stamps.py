"""Derived results tied to the store version they describe: the ``source`` stamp a result
records (data/artifacts.SourceStamp), whether it is stale, and whether the .npy files beside a
result's JSON are the ones it recorded. Read by every metric, the report and the explorer."""

from __future__ import annotations

from saevlm.data import artifacts as A


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
