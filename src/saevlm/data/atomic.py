"""Writing files so that nothing half-written is ever left behind, and one writer per output.

Every file saevlm writes goes through here: the bytes go to a temporary file in the SAME
directory (so the final rename never crosses file systems), are flushed and fsync'ed, then
``os.replace`` puts them in place atomically. If anything fails on the way (disk full, read-only
file system, an interrupt) the temporary file is removed and the error is raised as a
:class:`~saevlm.errors.UserError` naming the file, so the command ends with one line and the
previous version of the file, if any, is untouched.

:class:`OutputLock` gives one process at a time the right to write an output directory
(``fcntl.flock`` on ``<dir>/.saevlm.lock``: the kernel releases it when the process dies, so a
crashed writer never leaves a stale lock).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from saevlm.errors import UserError

LOCK_NAME = ".saevlm.lock"


def describe_os_error(err: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OSError: the file, and what went wrong in words a user can act on."""
    where = str(path or err.filename or "?")
    hint = {errno.ENOSPC: "the disk is full; free space or choose another output directory",
            errno.EDQUOT: "the disk quota is exceeded; free space or choose another output directory",
            errno.EROFS: "the file system is read-only; choose another output directory",
            errno.EACCES: "permission denied; choose a directory you can write",
            errno.EPERM: "permission denied; choose a directory you can write"}.get(err.errno)
    return f"{where}: {hint or err.strerror or err}"


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is
    removed and the error re-raised as a UserError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise UserError(f"cannot write {describe_os_error(err, path)}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_write(tmp: Path, write: Callable) -> None:
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, or (on any failure) what it held before."""
    with _atomic_target(Path(path)) as tmp:
        _fsync_write(tmp, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / inf float replaced by None: JSON has no such numbers (Python's
    ``NaN`` token is not valid JSON and breaks other readers), so an undefined value is ``null``."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0:  # a NumPy scalar
        return finite_json(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically; NaN / inf are written as null (:func:`finite_json`)."""
    atomic_write_bytes(path, (json.dumps(finite_json(obj), indent=1, sort_keys=False, allow_nan=False)
                              + "\n").encode())


class _ChecksumWriter:
    """A write-only file wrapper that counts and CRC-32s the bytes going through it (numpy then
    writes in 16 MiB chunks instead of ``tofile``: the same bytes, checksummed on the way)."""

    def __init__(self, f):
        self.f, self.crc, self.size = f, 0, 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        return self.f.write(view)

    def flush(self) -> None:
        self.f.flush()


def file_checksum(path: str | os.PathLike, block: int = 1 << 24) -> dict:
    """``{"bytes": size, "crc32": 8 hex digits}`` of a file's bytes, read in 16 MiB blocks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"bytes": size, "crc32": f"{crc:08x}"}


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file's bytes, read in blocks (what hub manifests and model cards record)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def atomic_save_npy(path: str | os.PathLike, array) -> dict:
    """``numpy.save`` atomically (no pickles); returns the file's :func:`file_checksum`, computed
    while writing (no second read)."""
    import numpy as np

    out: dict = {}

    def write(f) -> None:
        w = _ChecksumWriter(f)
        np.save(w, array, allow_pickle=False)
        out.update({"bytes": w.size, "crc32": f"{w.crc:08x}"})

    with _atomic_target(Path(path)) as tmp:
        _fsync_write(tmp, write)
    return out


def atomic_save_npz(path: str | os.PathLike, **arrays) -> None:
    import numpy as np

    with _atomic_target(Path(path)) as tmp:
        _fsync_write(tmp, lambda f: np.savez(f, **arrays))


class _KeepWriteError:
    """A file wrapper that remembers the first OSError its ``write`` raised: ``torch.save`` turns
    it into a RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically; a write that fails (a full disk) is a UserError naming the file."""
    import torch

    def write(f) -> None:
        w = _KeepWriteError(f)
        try:
            torch.save(obj, w)
        except RuntimeError as err:
            if w.error is not None:
                raise w.error from None
            raise OSError(errno.EIO, f"torch.save failed ({str(err).splitlines()[0][:160]})") from None

    with _atomic_target(Path(path)) as tmp:
        _fsync_write(tmp, write)


def remove_orphaned_temps(path: Path) -> None:
    """Remove ``.<name>.tmp-<pid>`` files beside ``path`` left by a process that no longer runs (a
    SIGKILLed report or visualize cannot clean up after itself; the next writer of the file does)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_quietly(tmp)
        except OSError:
            pass  # alive, another user's


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    """``fig.savefig`` atomically (the format from ``path``'s suffix)."""
    path = Path(path)
    remove_orphaned_temps(path)
    with _atomic_target(path) as tmp:
        _fsync_write(tmp, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", **kwargs))


def ensure_writable_dir(path: str | os.PathLike, field: str) -> Path:
    """Create ``path`` if needed and prove it writable BEFORE any work, so a read-only or full
    output is reported at once rather than after hours of computing."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".saevlm-write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
    except OSError as err:
        _remove_quietly(path / f".saevlm-write-test-{os.getpid()}")  # a full disk leaves it empty
        raise UserError(f"{field} {path}: cannot write there ({describe_os_error(err, path)})", field=field) from None
    return path


class OutputLock:
    """Exclusive right to write one output directory, for the life of the process (or until
    :meth:`release`). A second writer stops at once with a message naming the holder, or with
    ``wait=True`` waits for it. Re-entrant within one process (two writer objects of the same
    command on one directory share the lock), exclusive between processes."""

    _held: dict[str, list] = {}  # resolved lock path -> [fd, holders] in this process

    def __init__(self, directory: str | os.PathLike, field: str, wait: bool = False, name: str = LOCK_NAME):
        import fcntl

        self.directory = Path(directory)
        self.path = self.directory / name
        ensure_writable_dir(self.directory, field)
        self._key: str | None = str(self.path.resolve())
        if self._key in OutputLock._held:
            OutputLock._held[self._key][1] += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            if not wait:
                os.close(fd)
                self._key = None
                raise UserError(f"{field} {self.directory}: another saevlm process is writing there "
                                f"({holder}); wait for it to finish, or use another output directory", field=field) from None
            print(f"waiting for {holder} to finish writing {self.directory} ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        OutputLock._held[self._key] = [fd, 1]

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
        except (OSError, json.JSONDecodeError):
            return "another process"

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in OutputLock._held:
            return
        entry = OutputLock._held[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del OutputLock._held[key]
            os.close(entry[0])  # closing the descriptor releases the flock

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def check_not_own_input(out: str | os.PathLike | None, out_field: str,
                        inputs: list[tuple[str, str | os.PathLike | None]]) -> None:
    """A command never writes over (or, with ``--overwrite``, deletes) its own input: refuse an
    output folder that IS an input. Checked before any work, whatever ``--overwrite`` says, and
    the message suggests no destructive field. (An output holding an input folder is fine: a
    store's writer only ever replaces the files directly inside its own folder.)"""
    if out is None:
        return
    o = Path(out).expanduser().resolve()
    for field, path in inputs:
        if path is None or str(path).startswith("hf:"):
            continue
        if Path(path).expanduser().resolve() == o:
            raise UserError(f"{out_field} {out}: it is the {field} input itself; a command never writes over its "
                            f"own input, so choose another {out_field}", field=out_field, mentions=(field, out_field))


def check_distinct_inputs(inputs: list[tuple[str, str | os.PathLike | None]]) -> None:
    """Two inputs that must be different stores are not the same folder."""
    seen: dict[Path, str] = {}
    for field, path in inputs:
        if path is None:
            continue
        p = Path(path).expanduser().resolve()
        if p in seen:
            raise UserError(f"{field} {path}: the same folder as {seen[p]}; these must be different stores",
                            field=field, mentions=(seen[p],))
        seen[p] = field
