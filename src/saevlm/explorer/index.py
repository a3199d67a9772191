"""What the explorer shows, read lazily from a run directory: every SAE's latents (a code store or a
top-images store), their columns, and per-latent details. Nothing is computed until a page asks
for it; what is computed from codes (activation frequency and maximum) is cached under the cache
directory, keyed by the store's content hash, so a second start is instant.

The index follows the run while it is served: ``RunIndex.refresh`` (at most once a second) finds
stores added since, and replaces the view of any store whose files changed (re-encoded, new MS,
new names), so nothing computed from an earlier version is shown as current."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from saevlm.data import artifacts as A
from saevlm.errors import UserError
from saevlm.metrics.monosemanticity import MIN_ACTIVE_IMAGES

COLUMNS = ("id", "name", "ms", "fms", "freq", "max", "group", "depth")


TOP_K = 16  # the top images the pages show (saevlm top-images --k 16, the paper's grids)


COLUMNS_MAX_NNZ = 40_000_000  # stored values up to which per-latent columns are cached (480 MB)

DEFAULT_MIN_ACTIVE = MIN_ACTIVE_IMAGES  # the table's default filter, the report's rule for its best latents


@dataclass
class SAEView:
    """One SAE's latents: its store (codes or top images) and the results beside it."""

    path: Path  # the store directory
    slug: str
    run_dir: Path
    cache_dir: Path
    data_path: str | None = None  # explore --data_path: the dataset's folder when it moved
    images_note: str = ""  # why no images are shown, when they are not
    signature: tuple = ()  # the files this view was read from (see store_signature): a change makes a new view
    steering_files: tuple[Path, ...] = ()  # the run's steering_score.json files
    # one page computation at a time per SAE (its lazy columns are shared); other SAEs, static
    # files and cached pages are never held up by it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    page_cache: dict = field(default_factory=dict, repr=False, compare=False)  # e.g. the table data, gzipped
    # co-activation statistics computed in the background for the server (see related_now)
    background: threading.Thread | None = field(default=None, repr=False, compare=False)
    background_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    background_error: str = ""

    @cached_property
    def store(self):
        from saevlm.data.open import open_any_store
        return open_any_store(self.path, "run_dir", allow_top_images=True)

    @property
    def is_codes(self) -> bool:
        from saevlm.data.codes import CodeStore
        return isinstance(self.store, CodeStore)

    @property
    def num_latents(self) -> int:
        return int(self.store.dict_size)

    @property
    def title(self) -> str:
        sae = self.store.provenance.sae
        hook = self.store.provenance.hook
        where = {"post_projection": "projection", "post_mlp_residual": f"layer {hook.layer}"}.get(
            hook.attachment_point or "", hook.attachment_point or "?")
        arch = sae.arch if sae is not None else "?"
        return f"{arch}, {self.num_latents} latents, {self.store.provenance.model.label} {where}"

    @cached_property
    def group_sizes(self) -> list[int] | None:
        sae = self.store.provenance.sae
        return list(sae.group_sizes) if sae is not None and sae.group_sizes else None

    # -- freshness: decided in one place (explorer/freshness.py), never changed by a reader
    @cached_property
    def stale(self) -> dict[str, str]:
        """derived file (relative to the store) -> why it is not shown (computed from an earlier
        version of the store, damaged, or not readable), with the command that refreshes it."""
        from saevlm.explorer.freshness import stale_files

        return stale_files(self)

    def record(self, name: str, kind: type):
        """A result file of the store as its record (:mod:`saevlm.data.artifacts`), read once per
        view (names.json of 65,536 latents is 10 MB); a damaged one raises ``ResultError``."""
        cache = self.page_cache.setdefault("records", {})
        if name not in cache:
            try:
                cache[name] = kind.from_file(self.path / name)
            except A.ResultError as err:
                cache[name] = err
        if isinstance(cache[name], A.ResultError):
            raise cache[name]
        return cache[name]

    def _files_reason(self, json_path: Path, names: list[str]) -> str | None:
        from saevlm.explorer.freshness import files_reason

        return files_reason(self, json_path, names)

    def _fresh(self, name: str) -> bool:
        return name not in self.stale

    # -- columns
    @cached_property
    def top(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(top-16 image ids [K, 16], their values [K, 16]) when top-images ran (and are current)."""
        f = self.path / A.top_images_npy(TOP_K)
        if not f.is_file() or not self._fresh(A.top_images_json(TOP_K)) or not self._fresh(A.top_images_npy(TOP_K)):
            return None
        # readable and of this store's shape: checked with the rest of the freshness (stale_files)
        return np.load(f), np.load(self.path / A.top_images_values_npy(TOP_K))

    @cached_property
    def ms_dirs(self) -> list[Path]:
        """The folders of every current MS result, DINOv2 first (the paper's E)."""
        dirs = sorted((d for d in self.path.glob("ms*/") if (d / A.MS_SCORES).is_file()),
                      key=lambda d: ("dino" not in d.name.lower(), d.name))
        # stale, damaged, or for another width (stale_files): left out
        return [d for d in dirs if self._fresh(f"{d.name}/{A.MS_JSON}") and self._fresh(f"{d.name}/{A.MS_SCORES}")]

    @cached_property
    def ms_sets(self) -> list[tuple[str, str, np.ndarray]]:
        """Every current MS result of this store, one per embedder: (table key, embedder, scores).
        The first (DINOv2 first, the paper's E) is the key ``ms``, the others ``ms1``, ``ms2``, ..."""
        return [("ms" if not i else f"ms{i}", d.name[3:] if d.name.startswith("ms_") else d.name,
                 np.load(d / A.MS_SCORES)) for i, d in enumerate(self.ms_dirs)]

    @cached_property
    def ms(self) -> tuple[np.ndarray | None, str | None]:
        """The primary MS (see ms_sets), and its folder's embedder name."""
        if not self.ms_sets:
            return None, None
        _, label, scores = self.ms_sets[0]
        return scores, label

    @cached_property
    def ms_dir(self) -> Path | None:
        """The folder of the primary MS (see ms_sets)."""
        return self.ms_dirs[0] if self.ms_dirs else None

    @cached_property
    def ms_ci(self) -> np.ndarray | None:
        """[K, 2] 95 % intervals of the primary MS over images (ms --uncertainty), when written."""
        d = self.ms_dir
        if d is None:
            return None
        f = d / A.MS_CI95
        if not f.is_file() or self._files_reason(d / A.MS_JSON, [A.MS_CI95]):
            return None
        try:
            ci = np.load(f)
        except (OSError, ValueError):
            return None
        return ci if ci.shape == (self.num_latents, 2) else None

    @cached_property
    def ms_baseline(self) -> tuple[dict | None, str]:
        """(the MS of random image sets per set size under the primary MS's embedder, "") or (None,
        why): computed once per embeddings store (explorer/stats.py) and cached by its content hash."""
        d = self.ms_dir
        if d is None:
            return None, "no MS"
        try:
            embeddings = self.record(f"{d.name}/{A.MS_JSON}", A.MSSummary).inputs.embeddings
            path, sha = embeddings.path, embeddings.content_sha256
        except (A.ResultError, AttributeError):
            return None, f"{d.name}/{A.MS_JSON} names no embeddings"
        if not path or not Path(path).is_dir():
            return None, f"the embeddings it was computed with are not at {path!r}"
        from saevlm.data.store import ActivationStore
        from saevlm.explorer.stats import cached, ms_baseline

        try:
            store = ActivationStore(path)
        except UserError as err:
            return None, f"the embeddings at {path}: {err}"
        if sha and store.manifest.content_sha256 != sha:
            return None, f"the embeddings at {path} were re-written since the MS was computed"
        key = (sha or hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest())[:16]

        def compute():
            e = store.read(0, store.num_rows).astype(np.float32)
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            return ms_baseline(e)

        return cached(self.cache_dir / "baseline" / f"{key}-v1.npz", compute), ""

    @cached_property
    def names(self) -> A.NamesResult | None:
        """names.json when it is current (see ``stale``)."""
        if not (self.path / A.NAMES).is_file() or not self._fresh(A.NAMES):
            return None
        return self.record(A.NAMES, A.NamesResult)

    @cached_property
    def fms(self) -> np.ndarray | None:
        """Per latent: the FMS of the concept it detects best (it is that concept's root latent)."""
        if not (self.path / A.FMS_JSON).is_file() or not self._fresh(A.FMS_JSON):
            return None
        out = np.full(self.num_latents, np.nan)
        for c in self.record(A.FMS_JSON, A.FMSResult).per_concept:
            if 0 <= c.root < len(out):
                out[c.root] = np.fmax(out[c.root], float(c.fms))
        return out

    def _stats_key(self) -> str:
        from saevlm.data.open import store_manifest

        head = store_manifest(self.path / A.MANIFEST)
        ident = json.dumps([str(self.path.resolve()), head.content_sha256, head.finished])
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    @cached_property
    def cache_name(self) -> str:
        """This version of the store's folder name in the cache: a re-written store (other images
        under the same ids) never gets the thumbnails or overlays of the one before."""
        return f"{self.slug}-{self._stats_key()}"

    @cached_property
    def stats(self) -> dict[str, np.ndarray]:
        """Activation frequency (share of rows where the latent is non-zero) and maximum, from the
        codes in one pass (cached); from the top images when only those exist."""
        from saevlm.explorer.stats import basic_stats, cached

        top_values = None if self.is_codes or self.top is None else self.top[1]
        return cached(self.cache_dir / "stats" / f"{self.cache_name}-v3.npz",  # v3: + mean
                      lambda: basic_stats(self.store, self.num_latents, self.is_codes, top_values))

    @cached_property
    def related(self):
        """Co-activation neighbours, near-duplicates and (Matryoshka) parents / children of every
        latent (:mod:`saevlm.metrics.coactivation`), computed once per version of the store and cached."""
        from saevlm.metrics.coactivation import Related
        from saevlm.explorer.stats import cached, related_stats

        if not self.is_codes and self.top is None:
            return None
        groups = self.groups() if self.group_sizes else None
        arrays = cached(self._related_cache, lambda: related_stats(self.store, self.num_latents, self.is_codes,
                                                                   None if not self.is_codes or self.one_row_per_image
                                                                   else self.row_images,
                                                                   self.top, groups).to_arrays())
        return Related.from_arrays(arrays)

    @property
    def _related_cache(self) -> Path:
        return self.cache_dir / "related" / f"{self.cache_name}-v1.npz"

    def related_now(self, wait: bool = True):
        """(``related``, "") when it is at hand; with ``wait=False`` (the server) a first request
        starts computing it in a background thread and gets (None, why): a latent page never waits
        for a pass over all codes (8.7 s at 65,536 latents x 50,000 images, benchmarks/README.md)."""
        if wait or "related" in self.__dict__ or self._related_cache.is_file():
            return self.related, ""
        with self.background_lock:
            if self.background_error:
                return None, f"could not be computed: {self.background_error}"
            if self.background is None or not self.background.is_alive():
                def work():
                    try:  # lowest CPU priority (Linux: per thread): requests come first
                        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
                    except (AttributeError, OSError):
                        pass
                    try:
                        self.related  # noqa: B018 - computes and caches it
                    except Exception as err:  # noqa: BLE001 - said on the page
                        self.background_error = f"{type(err).__name__}: {err}"

                self.background = threading.Thread(target=work, name=f"related-{self.slug}", daemon=True)
                self.background.start()
        return None, "is being computed from the codes, once for this SAE; reload this page in a few seconds"

    @cached_property
    def one_row_per_image(self) -> bool:
        return bool(self.is_codes and len(np.unique(self.row_images)) == len(self.row_images))

    @cached_property
    def columns(self) -> dict[str, np.ndarray] | None:
        """Each latent's non-zero activations sorted with their rows (explorer/stats.py, cached): a
        latent page's histogram and quantile images, and an image's rank in a latent's distribution
        (one-row-per-image stores)."""
        from saevlm.explorer.stats import cached, latent_columns

        # token-level stores too, up to COLUMNS_MAX_NNZ stored values (12 bytes each); above it a
        # latent page reads its column with a pass over the codes
        if not self.is_codes or int(self.store.nnz) > COLUMNS_MAX_NNZ:
            return None
        return cached(self.cache_dir / "columns" / f"{self.cache_name}-v2.npz",
                      lambda: latent_columns(self.store, self.num_latents))

    def image_rows(self, image_id: int) -> np.ndarray:
        """The code rows of dataset image ``image_id`` (KeyError: not an image of this store)."""
        if not self.is_codes:
            raise KeyError(image_id)
        if "row_order" not in self.page_cache:  # once per view: rows by image, and their image ids
            order = np.argsort(self.row_images, kind="stable")
            self.page_cache["row_order"] = (order, self.row_images[order])
        order, sorted_ids = self.page_cache["row_order"]
        a, b = np.searchsorted(sorted_ids, image_id, side="left"), np.searchsorted(sorted_ids, image_id, side="right")
        if a == b:
            raise KeyError(image_id)
        return np.sort(order[a:b])

    def image_codes(self, image_id: int) -> np.ndarray:
        """Image ``image_id``'s codes [K]: its row, or each latent's maximum over its token rows."""
        rows = self.image_rows(image_id)
        out = np.zeros(self.num_latents, np.float32)
        starts = np.array([sh.row_start for sh in self.store.shards], dtype=np.int64)
        for r in rows.tolist():
            i = int(np.searchsorted(starts, r, side="right")) - 1
            chunk = self.store.shard_csr(i)
            local = r - chunk.start
            lo, hi = int(chunk.indptr[local]), int(chunk.indptr[local + 1])
            idx, vals = np.asarray(chunk.indices[lo:hi]), np.asarray(chunk.values[lo:hi], dtype=np.float32)
            out[idx] = np.maximum(out[idx], vals) if len(rows) > 1 else vals
        return out

    @cached_property
    def depth(self) -> np.ndarray | None:
        """Mean LCA depth of each latent's top-16 image pairs in the dataset's taxonomy."""
        if not self._fresh(A.CLASSES):  # damaged or unrecorded (stale_files): the table opens without it
            return None
        classes = self.classes
        if self.top is None or classes is None or not classes.taxonomy:
            return None
        from saevlm.metrics.lca import lca_depths, level_codes

        labels = self.labels
        if labels is None:
            return None
        depths = lca_depths(labels[self.top[0]], level_codes([list(t) for t in self.classes.taxonomy]))  # [K, pairs]
        # only pairs of images where the latent is active (> 0): padding images say nothing about it
        ids, values = self.top
        active = values > 0
        a, b = np.triu_indices(ids.shape[1], k=1)  # the pair order of lca_depths
        pair_ok = active[:, a] & active[:, b]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pair_ok.any(axis=1), (depths * pair_ok).sum(axis=1) / pair_ok.sum(axis=1), np.nan)

    @cached_property
    def top_labels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per latent, the majority class of its activating top images (-1: none) and its share of
        them (purity; NaN: none), from labels.npy: the label column, with or without names.json."""
        from saevlm.metrics.labels import label_purity

        labels = self.labels
        if self.top is None or labels is None:
            return None
        ids, values = self.top
        ok = (values > 0) & (ids >= 0) & (ids < len(labels))
        label_k, purity_k, _ = label_purity(np.asarray(labels)[np.where(ok, ids, 0)], ok)
        return label_k, purity_k

    def label_of(self, image_id: int) -> str:
        """Image ``image_id``'s class as people read it ("" without labels)."""
        labels, names = self.labels, self.class_names
        if labels is None or not 0 <= image_id < len(labels):
            return ""
        lab = int(labels[image_id])
        return names[lab] if 0 <= lab < len(names) else str(lab)

    def heatmap(self, base, a_hw: np.ndarray, j: int) -> bytes:
        """``base`` with latent ``j``'s activation per patch in red, full red at the latent's
        maximum over the store (so images are comparable)."""
        from saevlm.explorer.live import heatmap_jpeg

        return heatmap_jpeg(base, a_hw, float(self.stats["max"][j]) or float(a_hw.max()) or 1.0)

    def groups(self) -> np.ndarray:
        from saevlm.sae.archs import group_of_latents

        return group_of_latents(self.group_sizes, self.num_latents)

    def name_of(self, j: int) -> str:
        if self.names is None:
            return ""
        return self.names.latents[j].name

    def table(self) -> dict[str, Any]:
        """Every latent's row, column by column (JSON-ready; NaN -> None)."""
        K = self.num_latents
        ms, _ = self.ms
        stats = self.stats
        col = _json_column
        words, name_ids, label_id = _word_ids(self.names)
        return {"slug": self.slug, "title": self.title, "num_latents": K, "words": list(words),
                "columns": {"id": list(range(K)), "name_ids": name_ids, "label_id": label_id,
                            "ms": col(ms), **{key: col(s) for key, _, s in self.ms_sets[1:]},
                            "fms": col(self.fms), "freq": col(stats["freq"]),
                            "max": col(stats["max"]), "mean": col(stats["mean"]),
                            "active": [None if v < 0 else int(v) for v in np.asarray(stats["active"]).tolist()],
                            "group": self.groups().tolist() if self.group_sizes else None, "depth": col(self.depth),
                            "top_label": self._top_label_column(),
                            "top_purity": col(None if self.top_labels is None else self.top_labels[1])},
                "classes": self.class_names if self.top_labels is not None else [],
                "has": {"ms": ms is not None, "fms": self.fms is not None, "names": self.names is not None,
                        "depth": self.depth is not None, "groups": bool(self.group_sizes),
                        "freq": self.is_codes, "active": self.is_codes, "label": self.top_labels is not None},
                "num_images": int(self.store.num_rows), "default_min_active": DEFAULT_MIN_ACTIVE}

    def _top_label_column(self) -> list | None:
        """Each latent's top images' majority label (None where none; no column when the labels go
        beyond classes.json)."""
        if self.top_labels is None or len(self.class_names) <= int(self.top_labels[0].max(initial=-1)):
            return None
        return [None if v < 0 else int(v) for v in self.top_labels[0].tolist()]

    # -- per latent
    def column_values(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, values) where latent ``j`` is non-zero: a slice of ``columns`` (cached), or
        for token-level stores a pass over the codes."""
        if self.columns is not None:
            a, b = int(self.columns["indptr"][j]), int(self.columns["indptr"][j + 1])
            rows_s, vals_s = self.columns["rows"][a:b], self.columns["values"][a:b]
            order = np.argsort(rows_s, kind="stable")  # row order, as the pass over the codes gives
            return rows_s[order], vals_s[order]
        rows, vals = [], []
        for chunk in self.store.iter_csr(1 << 20):
            hit = np.flatnonzero(np.asarray(chunk.indices) == j)
            if len(hit):
                rows.append(chunk.start + np.searchsorted(np.asarray(chunk.indptr), hit, side="right") - 1)
                vals.append(np.asarray(chunk.values)[hit])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(rows), np.concatenate(vals)

    def quantile_images(self, rows: np.ndarray, vals: np.ndarray, quantiles=(0.75, 0.5, 0.25), per: int = 4
                        ) -> list[tuple[float, list[tuple[int, float]]]]:
        """Images near lower quantiles of the latent's non-zero activations: (q, [(image id, value)])."""
        if not len(vals):
            return []
        row_image = self.row_images
        order = np.argsort(vals, kind="stable")
        out = []
        for q in quantiles:
            centre = int(q * (len(order) - 1))
            pick = order[max(0, centre - per // 2): max(0, centre - per // 2) + per]
            out.append((q, [(int(row_image[rows[i]]), float(vals[i])) for i in pick]))
        return out

    @cached_property
    def row_images(self) -> np.ndarray:
        """The image id of every row of the codes."""
        return self.store.row_index()[:, 0]

    @cached_property
    def decoder(self) -> np.ndarray | None:
        """Unit decoder directions [K, d] of the SAE (None when its checkpoint is not found), read
        from the weights alone (no dictionary_learning, no transformers: the first latent page
        stays fast)."""
        sae = self.store.provenance.sae
        if sae is None or not sae.path or not Path(sae.path).exists():
            return None
        from saevlm.sae.checkpoint import decoder_rows

        try:
            w = decoder_rows(sae.path)
        except Exception:  # noqa: BLE001 - a moved or damaged checkpoint: the page says so
            return None
        if w.shape[0] != self.num_latents:
            return None
        return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)

    def nearest(self, j: int, n: int = 8) -> list[tuple[int, float]] | None:
        if self.decoder is None:
            return None
        cos = self.decoder @ self.decoder[j]
        cos[j] = -np.inf
        best = np.argsort(-cos, kind="stable")[:n]
        return [(int(b), float(cos[b])) for b in best]

    @cached_property
    def _steering_results(self) -> list[tuple[Path, dict, str | None]]:
        """(file, summary, why it is not shown or None) of every steering result made with this
        store's SAE (by path)."""
        sae = self.store.provenance.sae
        if sae is None or not sae.path:
            return []
        mine = Path(sae.path).resolve()
        out = []
        for f in self.steering_files:
            try:
                s = A.SteeringScore.from_file(f)
            except A.ResultError:
                continue
            if not s.sae or Path(s.sae).resolve() not in (mine, mine.parent):
                continue
            out.append((f, s, self._steering_problem(s)))
        return out

    @property
    def steering(self) -> list[dict]:
        """Current steering results of this SAE: per-neuron scores and answers. A result made with
        other weights under the same path (its recorded size and CRC-32 differ) or for an SAE of
        another width is left out and listed in ``stale``."""
        return [{"summary": s, "dir": f.parent} for f, s, why in self._steering_results if why is None]

    def _steering_problem(self, summary: A.SteeringScore) -> str | None:
        recorded = summary.sae_weights
        if isinstance(recorded, dict) and self.sae_weights is not None and recorded != self.sae_weights:
            return (f"made with other SAE weights ({recorded.get('bytes')} bytes, CRC-32 {recorded.get('crc32')}; the "
                    f"checkpoint now has {self.sae_weights['bytes']} bytes, CRC-32 {self.sae_weights['crc32']})")
        size = summary.sae_dict_size
        if isinstance(size, int) and size != self.num_latents:
            return f"made with an SAE of {size} latents, this store has {self.num_latents}"
        return None

    @cached_property
    def sae_weights(self) -> dict | None:
        """Size and CRC-32 of the SAE's weights file now (what steering-score records)."""
        sae = self.store.provenance.sae
        if sae is None or not sae.path:
            return None
        from saevlm.data.atomic import file_checksum
        from saevlm.sae.checkpoint import resolve_checkpoint

        try:
            weights, _ = resolve_checkpoint(sae.path)
            return file_checksum(weights)
        except Exception:  # noqa: BLE001 - a missing checkpoint: nothing to compare
            return None

    def steering_for(self, j: int) -> list[dict]:
        import csv

        out = []
        for r in self.steering:
            score, answers = None, []
            sc = r["dir"] / A.STEERING_SCORES_CSV
            if sc.is_file():
                for row in csv.DictReader(sc.open()):
                    if int(row["neuron"]) == j:
                        score = float(row["score"])
            lab = r["dir"] / A.STEERING_LABELS_CSV
            if lab.is_file():
                answers = [row for row in csv.DictReader(lab.open()) if int(row["neuron"]) == j]
            if score is not None or answers:
                out.append({"summary": r["summary"], "score": score, "answers": answers[:12],
                            "source": str(r["dir"].relative_to(self.run_dir))})
        return out

    @cached_property
    def images(self):
        """The store's dataset (for thumbnails), or None (synthetic, moved away, or other pictures):
        then ``images_note`` says why. Every image read is checked against the store's content hashes."""
        from saevlm.errors import UserError
        from saevlm.metrics.figures import open_store_images

        ds = self.store.provenance.dataset
        if ds.name in (None, "synthetic"):
            self.images_note = "no images to show: the store's dataset is synthetic"
            return None
        recorded = str(ds.root or "")
        try:
            if self.data_path is not None:  # given explicitly: it wins, and is checked like any other
                return open_store_images(self.store, self.data_path, "data_path")
            if recorded.startswith("hf:") or (recorded and Path(recorded).exists()):
                return open_store_images(self.store, None, "the recorded dataset")
        except UserError as err:
            self.images_note = f"no images to show: {err}"
            return None
        self.images_note = (f"no images to show: the dataset is no longer at {recorded}, where it was extracted "
                            f"from; pass explore --data_path <its new folder>")
        return None

    @cached_property
    def live_model(self):
        """(:class:`saevlm.explorer.live.LiveModel`, "") for images uploaded to the server (any
        token selection), else (None, why)."""
        from saevlm.explorer.live import load_live_model

        return load_live_model(self.store.provenance, True, patches=False)

    @cached_property
    def overlay_model(self):
        """(:class:`saevlm.explorer.live.LiveModel`, "") when per-patch overlays can be drawn, else (None, why)."""
        from saevlm.explorer.live import PER_IMAGE

        prov = self.store.provenance
        tokens = prov.tokens.selection
        if tokens in (None, *PER_IMAGE) or prov.hook.attachment_point != "post_mlp_residual":
            return None, (f"Not applicable: this SAE reads one vector per image ({tokens}), so there is no "
                          f"per-patch activation.")
        if self.images is None:
            return None, "No overlay: the store's images are not available."
        model, why = self.live_model  # the same model serves overlays and uploads
        return model, why.replace("No live images", "No overlay")

    def overlay(self, j: int, image_id: int, side: int = 112) -> bytes:
        """JPEG of image ``image_id`` with latent ``j``'s activation on each patch token in red
        (scaled by the latent's maximum activation, so images are comparable)."""
        import io

        from PIL import Image

        model, _ = self.overlay_model
        if model is None:
            raise KeyError(image_id)
        with Image.open(io.BytesIO(self.images.read_bytes(image_id))) as im:
            base, codes = model.patch_codes(im, side)
        return self.heatmap(base, codes[..., j], j)

    @cached_property
    def classes(self) -> A.Classes | None:
        """classes.json (a damaged one, or one the manifest did not record, raises ``ResultError``:
        the page says so)."""
        if not (self.path / A.CLASSES).is_file():
            return None
        if not self._fresh(A.CLASSES):
            raise A.ResultError(self.stale[A.CLASSES])
        try:
            self.store.dataset_files.file(A.CLASSES)  # the checksum the store's manifest recorded
        except UserError as err:
            raise A.ResultError(str(err)) from None
        return self.record(A.CLASSES, A.Classes)

    @cached_property
    def class_names(self) -> list[str]:
        """A label per class: the class name, for iNat the species ("Araneus diadematus"), not the folder."""
        return self.classes.display_names() if self.classes is not None else []

    @cached_property
    def labels(self) -> np.ndarray | None:
        """labels.npy, checked against the manifest and classes.json (damaged: listed in ``stale``,
        no labels shown)."""
        if not self._fresh(A.LABELS) or not self._fresh(A.CLASSES):  # damaged (stale_files)
            return None
        return self.store.labels()


def _json_column(a) -> list | None:
    """A table column as JSON: rounded to 5 decimals, NaN and inf as None."""
    if a is None:
        return None
    a = np.round(np.asarray(a, dtype=np.float64), 5)
    out = a.tolist()
    for i in np.flatnonzero(~np.isfinite(a)).tolist():
        out[i] = None
    return out


def _word_ids(names) -> tuple[dict[str, int], list | None, list | None]:
    """(word list, each latent's name ids, each latent's label id): names and labels as ids into
    one word list (a vocabulary repeats: 65,536 latents share a few thousand words); the script
    rebuilds the name column and searches all three names and the top images' majority label."""
    words: dict[str, int] = {}
    if names is None:
        return words, None, None
    recs = names.latents
    name_ids = [[words.setdefault(w, len(words)) for w, _ in r.names] for r in recs]
    label_id = [words.setdefault(str(r.label), len(words)) if r.names and r.label is not None else None
                for r in recs]
    return words, name_ids, label_id
