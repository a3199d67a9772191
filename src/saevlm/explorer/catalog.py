"""The catalog of a run: every SAE store under the run folder (code stores and top-images stores)
and the run's steering results, found by a scan and kept in step with the folder while it is
served (:meth:`RunIndex.refresh`). Each store is one :class:`~saevlm.explorer.index.SAEView`;
a store whose files changed gets a new view, so nothing computed from an earlier version is shown
as current."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from saevlm.data import artifacts as A
from saevlm.explorer.index import SAEView


def _slug(rel: Path) -> str:
    return "--".join(rel.parts) or "store"


def default_cache_dir(run_dir: Path, log=None) -> Path:
    """``<run_dir>/.explorer_cache``, or, when the run folder is read-only, a per-user folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``, ``saevlm/explorer/<hash of the run path>``), said once."""
    import os
    import sys

    own = run_dir / ".explorer_cache"
    if os.access(run_dir, os.W_OK) and (not own.exists() or os.access(own, os.W_OK)):
        return own
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    other = base / "saevlm" / "explorer" / hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    print(f"note: {run_dir} is read-only; the explorer caches thumbnails and statistics in {other} "
          f"(--cache_dir to choose)", file=sys.stderr)
    return other


def _stat_entries(folder: Path) -> list[tuple[str, int, int]]:
    out = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file():
                    st = e.stat()
                    out.append((e.name, st.st_mtime_ns, st.st_size))
    except OSError:
        pass
    return sorted(out)


def store_signature(store_dir: Path) -> tuple:
    """What a view of ``store_dir`` was read from: name, mtime and size of the store's own files
    and of its MS and FMS folders. Any re-write (encode --overwrite, a new MS, new names) changes it."""
    parts = [("", tuple(_stat_entries(store_dir)))]
    try:
        subdirs = sorted(d for d in store_dir.iterdir() if d.is_dir() and (d.name.startswith("ms") or d.name == "fms"))
    except OSError:
        subdirs = []
    parts += [(d.name, tuple(_stat_entries(d))) for d in subdirs]
    return tuple(parts)


class RunIndex:
    """Every SAE store under a run directory (found once, opened when first asked for), kept in
    step with the folder by :meth:`refresh`."""

    REFRESH_S = 1.0  # a served run is re-scanned at most this often

    def __init__(self, run_dir: str | Path, cache_dir: str | Path | None = None, data_path: str | None = None):
        from saevlm.errors import UserError

        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise UserError(f"--run_dir {self.run_dir}: no such directory")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.run_dir)
        self.data_path = data_path
        self.saes: dict[str, SAEView] = {}
        self.signature: tuple = ()  # of the whole run: every view's, the result files' (the run page's key)
        self._refresh_lock = threading.Lock()
        self._scanned_at = 0.0
        self.refresh(force=True)
        if not self.saes:
            raise UserError(f"--run_dir {self.run_dir}: holds no SAE codes (saevlm encode, or extract "
                            f"--sae_path); nothing to explore")

    def _scan(self) -> tuple[list[Path], list[Path], list[tuple[str, int, int]]]:
        """(complete SAE store folders, steering_score.json files, (result file, mtime, size)) under
        the run, skipping hidden folders (the explorer's own cache among them)."""
        stores, steering, results = [], [], []
        for root, dirs, files in os.walk(self.run_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(root)
            found = self._result_files(here, files)
            results += found
            steering += [self.run_dir / f for f, _, _ in found if Path(f).name == A.STEERING_SCORE]
            if A.MANIFEST in files and _is_complete_sae_store(here):
                stores.append(here)
        return sorted(stores), sorted(steering), sorted(results)

    def _result_files(self, here: Path, files: list[str]) -> list[tuple[str, int, int]]:
        """(path in the run, mtime, size) of the JSON and CSV files in one folder (a file that
        vanished meanwhile is left out)."""
        out = []
        for name in files:
            if not name.endswith((".json", ".csv")):
                continue
            try:
                st = (here / name).stat()
            except OSError:
                continue
            out.append((str((here / name).relative_to(self.run_dir)), st.st_mtime_ns, st.st_size))
        return out

    def refresh(self, force: bool = False) -> bool:
        """Find stores added or changed since the last scan (at most once per ``REFRESH_S``
        unless forced); a changed store gets a new view. Returns whether anything changed."""
        now = time.monotonic()
        if not force and now - self._scanned_at < self.REFRESH_S:
            return False
        with self._refresh_lock:
            if not force and time.monotonic() - self._scanned_at < self.REFRESH_S:
                return False
            stores, steering, results = self._scan()
            steering_sig = tuple((str(f), *_stat_key(f)) for f in steering)
            views = {_slug(d.relative_to(self.run_dir)): self._view(d, steering_sig, steering) for d in stores}
            signature = (tuple((slug, v.signature) for slug, v in views.items()), tuple(results))
            changed = signature != self.signature
            self.saes, self.signature = views, signature  # one assignment each: readers see old or new
            self._scanned_at = time.monotonic()
            return changed

    def _view(self, d: Path, steering_sig: tuple, steering: list[Path]) -> SAEView:
        """The store's view: the current one while neither the store nor the steering results changed."""
        slug = _slug(d.relative_to(self.run_dir))
        sig = (store_signature(d), steering_sig)
        old = self.saes.get(slug)
        if old is not None and old.signature == sig and old.path == d:
            return old
        return SAEView(d, slug, self.run_dir, self.cache_dir, self.data_path, signature=sig,
                       steering_files=tuple(steering))

    def get(self, slug: str) -> SAEView | None:
        return self.saes.get(slug)


def _is_complete_sae_store(folder: Path) -> bool:
    """A complete code store or top-images store (what the explorer shows) with a readable manifest."""
    from saevlm.data.codes import CODES_FORMAT
    from saevlm.data.open import store_manifest
    from saevlm.data.topimages import TOP_IMAGES_FORMAT
    from saevlm.errors import UserError

    try:
        head = store_manifest(folder / A.MANIFEST)
    except UserError:
        return False
    return head.format in (CODES_FORMAT, TOP_IMAGES_FORMAT) and head.complete


def _stat_key(f: Path) -> tuple[int, int]:
    try:
        st = f.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0
