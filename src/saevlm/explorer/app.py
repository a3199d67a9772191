"""The explorer's pages, rendered on demand (the server) or all at once (``--static``).

Web parts: Jinja2 renders the HTML (autoescaped templates; it comes with torch, so nothing new is
installed) and the standard library's ``ThreadingHTTPServer`` serves it (a local, read-only app
needs no framework). The latent table is sorted, filtered and paged in the browser by a small
script over one JSON array per SAE, so it works the same without a server."""

from __future__ import annotations

import html
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from saevlm.errors import UserError
from saevlm.explorer.catalog import RunIndex
from saevlm.explorer.index import DEFAULT_MIN_ACTIVE, SAEView
from saevlm.explorer.templates import SCRIPT, STYLE, TEMPLATES
from saevlm.sae.archs import group_bounds

TABLE_COLUMNS = (("id", "latent"), ("name", "name"), ("label", "top-image label"), ("ms", "MS"),
                 ("active", "active images"), ("fms", "FMS"), ("freq", "frequency"), ("mean", "mean act."), ("max", "max act."),
                 ("group", "group"), ("depth", "depth"))
DEFINITIONS = {
    "id": "the latent's index in the SAE (its encoder column and decoder row)",
    "name": "names.json (saevlm name): the words nearest to the mean embedding of its activating top images",
    "label": "the most common class among its activating top images, and its share of them (purity)",
    "ms": "Monosemanticity Score (arXiv 2504.02821, Eq. 3): the activation-weighted mean pairwise similarity of "
          "the images it fires on under the embedder E (1: all alike); an MS over few images rests on few pairs",
    "active": "the images it is non-zero on",
    "fms": "FMS (saevlm fms): how well it alone detects the concept it detects best (it is that concept's root)",
    "freq": "the share of code rows (images, or tokens of token-level codes) where it is non-zero",
    "max": "its largest activation over the store",
    "mean": "its mean activation over the rows where it is non-zero",
    "group": "Matryoshka group, 0 = the coarsest (the first latents alone must reconstruct the input)",
    "depth": "hierarchy depth: taxonomy levels its top images share pairwise, averaged (0 = none, the maximum "
             "= the same class)",
}
# a name is flagged weak when its first word barely beats the second (cosine margin) or when its
# top images are mostly of other classes than the majority (purity): it may name a mixture
WEAK_MARGIN = 0.01
WEAK_PURITY = 0.5
# ... or when its text picks the latent's held-out images no better than a random other name does:
# within WEAK_DETECTION of that baseline, or within two standard errors of it (sampled images)
WEAK_DETECTION = 0.1
THUMB_PX = 112
LARGE_PX = 448  # a top image clicked to enlarge


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def histogram_svg(values: np.ndarray, bins: int = 30, width: int = 480, height: int = 120, xlabel: str = "",
                  css_class: str = "hist") -> str:
    """An inline SVG histogram of ``values`` (no plotting library on the request path)."""
    counts, edges = np.histogram(values, bins=bins)
    top = max(int(counts.max()), 1)
    bw = width / bins
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{height - 18 - (height - 24) * c / top:.1f}" width="{bw - 1:.1f}" '
                   f'height="{(height - 24) * c / top:.1f}" fill="#2563eb"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: '
                   f'{c}</title></rect>' for i, c in enumerate(counts))
    axis = (f'<text x="0" y="{height - 4}" font-size="11">{edges[0]:.3g}</text>'
            f'<text x="{width / 2}" y="{height - 4}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{edges[-1]:.3g}</text>')
    return f'<svg class="{css_class}" width="{width}" height="{height}" role="img">{bars}{axis}</svg>'


def gzip_bytes(body: bytes, level: int = 6) -> bytes:
    import gzip

    return gzip.compress(body, compresslevel=level, mtime=0)


class Explorer:
    """Pages of one run directory."""

    def __init__(self, run_dir: str | Path, cache_dir: str | Path | None = None, log: Callable = print,
                 data_path: str | None = None):
        import jinja2

        self.index = RunIndex(run_dir, cache_dir, data_path)
        self._top_sets: dict[str, set[int]] = {}
        self._linked: dict[str, set[int]] = {}  # other images rendered pages link (quantile images)
        self._overlay_pairs: dict[str, set[tuple[int, int]]] = {}  # (latent, image) overlays image pages link
        self.env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True)
        self.run_name = self.index.run_dir.resolve().name
        self.log = log
        self._run_page: tuple[tuple, str] | None = None
        self.serving = False  # set by the server: slow statistics are computed in the background

    def _render(self, name: str, levels: int, **context) -> str:
        return self.env.get_template(name).render(root="../" * levels, run_name=self.run_name, fmt=_fmt,
                                                  **context)

    def links_image(self, slug: str, image_id: int, latent: int | None = None) -> bool:
        """Whether a page links this image (of latent ``latent``, or of any latent): the server
        makes thumbnails and overlays only for those, so a request cannot make it do other work."""
        view = self.sae(slug)
        if latent is not None and (latent, image_id) in self._overlay_pairs.get(slug, set()):
            return True  # an image page's heatmap
        if latent is None and view.is_codes:
            try:  # every image of the store has a page, with its picture
                view.image_rows(image_id)
                return True
            except KeyError:
                pass
        if view.top is not None:
            if latent is not None:
                return self._in_top_images(view, image_id, latent)
            if image_id in self._top_set(slug, view):
                return True
        return latent is None and image_id in self._linked.get(slug, set())

    @staticmethod
    def _in_top_images(view: SAEView, image_id: int, latent: int) -> bool:
        """Whether the image is one of the latent's top images where it is active."""
        ids, values = view.top
        return 0 <= latent < len(ids) and image_id in set(ids[latent][values[latent] > 0].tolist())

    def _top_set(self, slug: str, view: SAEView) -> set[int]:
        """Every image that is a top image (active) of some latent, worked out once per SAE."""
        if slug not in self._top_sets:
            ids, values = view.top
            self._top_sets[slug] = set(ids[values > 0].tolist())
        return self._top_sets[slug]

    def sae_or_none(self, slug: str) -> SAEView | None:
        return self.index.get(slug)

    def sae(self, slug: str) -> SAEView:
        view = self.index.get(slug)
        if view is None:
            raise KeyError(slug)
        return view

    # -- the run
    def run_page_cached(self) -> str:
        """The run page, made again only when a file of the run changed (the report's tables
        read every result file: re-parsing them per view took over a second on a large run)."""
        key = self.index.signature
        cached = self._run_page
        if cached is not None and cached[0] == key:
            return cached[1]
        page = self.run_page()
        self._run_page = (key, page)
        return page

    def run_page(self, linked: Callable[[str, int], bool] | None = None) -> str:
        rows = []
        for slug, view in self.index.saes.items():
            ms, _ = view.ms
            best = []
            if ms is not None:
                # the table's default rule: latents active on enough images to have an MS worth ranking
                order = ranked_latents(view)
                best = [(int(j), float(ms[j])) for j in order[:10] if np.isfinite(ms[j])
                        and (linked is None or linked(slug, int(j)))]
            rows.append({"slug": slug, "title": view.title, "rel": str(view.path.relative_to(self.index.run_dir)),
                         "num_latents": view.num_latents,
                         "ms_mean": _fmt(float(np.nanmean(ms))) if ms is not None and np.isfinite(ms).any() else "–",
                         "named": view.names is not None, "best": best,
                         "rule": f"active on \u2265 {DEFAULT_MIN_ACTIVE} images" if view.is_codes else ""})
        return self._render("run", 0, saes=rows, report=self._report_html())

    def _report_html(self) -> str:
        """The report's tables (saevlm report's rendering of the same results)."""
        from saevlm.report import render as build
        from saevlm.report.collect import collect_run

        try:
            results = collect_run(self.index.run_dir)
            rep = build.Report(self.index.run_dir, notes=results.notes)
            build.result_tables(rep, results)  # the report's own rendering of the same records
        except Exception as err:  # noqa: BLE001 - the explorer still opens without the tables
            return f"<p class='note'>report tables unavailable: {type(err).__name__}: {err}</p>"
        sources = "".join(f"<li><code>{html.escape(x)}</code></li>" for x in rep.sources)
        return "\n".join(rep.html) + (f"<h3>Sources</h3><ol>{sources}</ol>" if sources else "")

    # -- a latent table
    def latents_js(self, slug: str, subset: np.ndarray | None = None) -> str:
        data = self.sae(slug).table()
        if subset is not None:
            keep = [int(j) for j in subset]
            data["columns"] = {k: (None if v is None else [v[j] for j in keep]) for k, v in data["columns"].items()}
        return "window.SAEVLM_LATENTS = " + json.dumps(data, separators=(",", ":")) + ";\n"

    def latents_js_gz(self, slug: str) -> tuple[bytes, bytes]:
        """(the table data, the same gzip-compressed), made once per version of the SAE's files."""
        view = self.sae(slug)
        if "latents" not in view.page_cache:
            body = self.latents_js(slug).encode()
            view.page_cache["latents"] = (body, gzip_bytes(body, level=1))  # 8x faster than 6, 15 % larger
        return view.page_cache["latents"]

    def frequency_histogram(self, view: SAEView) -> str | None:
        """The SAE-wide histogram of log10 activation frequency of the latents that ever fire."""
        if not view.is_codes:
            return None
        freq = np.asarray(view.stats["freq"], dtype=np.float64)
        alive = freq[freq > 0]
        if not len(alive):
            return None
        return histogram_svg(np.log10(alive), bins=40, width=640, xlabel="log10 activation frequency",
                             css_class="freqhist")

    def density_plot(self, view: SAEView, bins: tuple[int, int] = (40, 24), width: int = 640, height: int = 260
                     ) -> str | None:
        """An SVG of the latents by log10 activation frequency (x) and log10 mean activation (y);
        each cell is a link that filters the table to its latents (saev's notebook has this plot)."""
        if not view.is_codes:
            return None
        freq = np.asarray(view.stats["freq"], dtype=np.float64)
        mean = np.asarray(view.stats["mean"], dtype=np.float64)
        ok = (freq > 0) & np.isfinite(mean) & (mean > 0)
        if ok.sum() < 2:
            return None
        x, y = np.log10(freq[ok]), np.log10(mean[ok])
        xe = np.linspace(x.min(), x.max() + 1e-9, bins[0] + 1)
        ye = np.linspace(y.min(), y.max() + 1e-9, bins[1] + 1)
        counts, _, _ = np.histogram2d(x, y, bins=(xe, ye))
        pad_l, pad_b = 40, 30
        cw, ch = (width - pad_l) / bins[0], (height - pad_b) / bins[1]
        top = np.log1p(counts.max())
        cells = []
        for i, k in zip(*np.nonzero(counts)):
            c = int(counts[i, k])
            q = (f"f_lo={10 ** xe[i]:.4g}&f_hi={10 ** xe[i + 1]:.4g}&a_lo={10 ** ye[k]:.4g}&a_hi={10 ** ye[k + 1]:.4g}"
                 f"&min_active=0")
            cells.append(f'<a href="#{q}" class="cell"><rect x="{pad_l + i * cw:.1f}" '
                         f'y="{height - pad_b - (k + 1) * ch:.1f}" width="{cw:.1f}" height="{ch:.1f}" '
                         f'fill="#2563eb" fill-opacity="{0.15 + 0.85 * np.log1p(c) / top:.2f}"><title>{c} latents: '
                         f'frequency {10 ** xe[i]:.3g}–{10 ** xe[i + 1]:.3g}, mean activation {10 ** ye[k]:.3g}–'
                         f'{10 ** ye[k + 1]:.3g} (click to list them)</title></rect></a>')
        axes = (f'<text x="{pad_l}" y="{height - 8}" font-size="11">{xe[0]:.2f}</text>'
                f'<text x="{(width + pad_l) / 2}" y="{height - 8}" font-size="11" text-anchor="middle">log10 activation '
                f'frequency</text><text x="{width}" y="{height - 8}" font-size="11" text-anchor="end">{xe[-1]:.2f}</text>'
                f'<text x="0" y="{height - pad_b}" font-size="11">{ye[0]:.2f}</text><text x="0" y="12" font-size="11">'
                f'{ye[-1]:.2f}</text><text x="12" y="{(height - pad_b) / 2}" font-size="11" transform="rotate(-90 12 '
                f'{(height - pad_b) / 2})" text-anchor="middle">log10 mean act.</text>')
        return (f'<svg class="density" width="{width}" height="{height}" role="img" aria-label="latents by activation '
                f'frequency and mean activation">{"".join(cells)}{axes}</svg>')

    def table_page(self, slug: str, subset_note: str = "", linked: Callable[[int], bool] | None = None) -> str:
        view = self.sae(slug)
        groups = list(range(len(view.group_sizes))) if view.group_sizes else []
        columns, definitions = _table_columns(view)
        freq_hist = self.frequency_histogram(view)
        dead = int((np.asarray(view.stats["freq"]) == 0).sum()) if freq_hist is not None else 0
        dups, tree = self._duplicates_and_tree(view, linked)
        return self._render("table", 2, sae=view, rel=str(view.path.relative_to(self.index.run_dir)),
                            columns=columns, groups=groups, subset=subset_note, freq_hist=freq_hist, dead=dead,
                            num_images=int(view.store.num_rows), dups=dups, tree=tree, definitions=definitions,
                            density=self.density_plot(view))

    def _duplicates_and_tree(self, view: SAEView, linked: Callable[[int], bool] | None) -> tuple[dict | None, Any]:
        """The near-duplicate clusters' summary and (Matryoshka) the hierarchy tree, once the
        co-activation statistics are there."""
        rel, _ = view.related_now(wait=not self.serving)
        if rel is None:
            return None, None
        from saevlm.metrics.coactivation import DUPLICATE_JACCARD

        sizes = rel.cluster_sizes()
        dups = {"clusters": int(len(sizes)), "latents": int(sizes.sum()), "largest": int(sizes.max(initial=0)),
                "threshold": DUPLICATE_JACCARD, "basis": rel.basis}
        tree = hierarchy_tree(view, rel, linked) if view.group_sizes and rel.children_kc is not None else None
        return dups, tree

    # -- a latent
    def latent_page(self, slug: str, j: int, linked: Callable[[int], bool] | None = None,
                    neighbours: tuple[int | None, int | None] | None = None) -> str:
        """``linked``: which latents have pages (a static export); ``neighbours``: the previous and
        next of those, when the caller knows them (else found by scanning ids with ``linked``)."""
        view = self.sae(slug)
        if not 0 <= j < view.num_latents:
            raise KeyError(j)
        ms, _ = view.ms
        top, thumbs, missing = self._top_images_context(slug, view, j)
        prev_j, next_j = neighbours if neighbours is not None else self._neighbours(view, j, linked)
        ctx = dict(sae=view, j=j, rel=str(view.path.relative_to(self.index.run_dir)),
                   prev_j=prev_j, next_j=next_j, num_images=int(view.store.num_rows),
                   k_top=0 if view.top is None else int(view.top[0].shape[1]),
                   top=top, thumbs=thumbs, missing=missing, image_pages=view.is_codes,
                   thumb_note=view.images_note or "no images to show", **_latent_numbers(view, j))
        ctx.update(self._names_context(view, j), depth_n=len(top))
        ctx.update(self._histogram_context(slug, view, j))
        ctx.update(self._nearest_context(view, j, linked))
        ctx.update(self._related_context(view, j, linked, wait=not self.serving))
        ctx.update(self._calibration_context(view, j, ms))
        ctx["steering"] = view.steering_for(j)
        model, why = view.overlay_model
        ctx["overlay"] = model is not None and bool(top)
        ctx["overlay_note"] = why or (f"Latent {j}'s activation on each patch token of its top images (red: "
                                      f"up to its maximum activation), from the vision model and the SAE.")
        return self._render("latent", 3, **ctx)

    def _top_images_context(self, slug: str, view: SAEView, j: int) -> tuple[list, bool, int]:
        """(rank, image, value, label, missing) of the latent's top images where it is active, whether
        thumbnails can be shown, and how many image files are gone."""
        top = _active_top_images(view, j)
        thumbs = view.images is not None
        # files removed from the dataset folder since the server started: placeholders, said on the page
        missing = self.missing_images(slug, [i for _, i, _, _ in top]) if thumbs else set()
        if thumbs and top:
            thumbs = _pictures_are_the_stores(view, [i for _, i, _, _ in top if i not in missing])
        return [(r, i, v, lab, i in missing) for r, i, v, lab in top], thumbs, len(missing)

    @staticmethod
    def _neighbours(view: SAEView, j: int, linked: Callable[[int], bool] | None) -> tuple[int | None, int | None]:
        """The previous and next live latent (in a static export, the neighbouring exported ones);
        dead latents are skipped (the table's order replaces these in the browser, see the script)."""
        ids = range(view.num_latents)
        alive = np.asarray(view.stats["active"]) != 0

        def ok(k: int) -> bool:
            return bool(alive[k]) and (linked is None or linked(k))

        prev_j = next((k for k in reversed(ids[:j]) if ok(k)), None) if j > 0 else None
        return prev_j, next((k for k in ids[j + 1:] if ok(k)), None)

    @staticmethod
    def _names_context(view: SAEView, j: int) -> dict:
        """The latent's names, where they come from, and why they may be weak."""
        from saevlm.data.artifacts import LatentName

        named = view.names.latents[j] if view.names is not None else LatentName()
        return dict(names_source=_names_source(view.names), names=list(named.names), margin=named.margin,
                    purity=named.purity, entropy=named.entropy_bits, label=named.label, names_n=named.n_active,
                    weak=_weak_reasons(named) if named.names else [],
                    detection=named.detection, detection_baseline=named.detection_baseline,
                    detection_n=named.detection_n)

    def _histogram_context(self, slug: str, view: SAEView, j: int) -> dict:
        """The histogram of the latent's non-zero activations and images at its quantiles (codes only)."""
        if not view.is_codes:
            return dict(hist=None, quantiles=[], hist_note="only top images were stored (extract --top_k); the "
                                                           "histogram needs codes (saevlm encode)")
        rows, vals = view.column_values(j)
        nz = vals[vals != 0]
        quantiles = view.quantile_images(rows[vals != 0], nz) if len(nz) > 4 else []
        self._linked.setdefault(slug, set()).update(int(img) for _, imgs in quantiles for img, _ in imgs)
        return dict(hist=histogram_svg(nz) if len(nz) else None, nonzero=len(nz), rows=view.store.num_rows,
                    hist_note="never active on these images", quantiles=quantiles)

    @staticmethod
    def _nearest_context(view: SAEView, j: int, linked: Callable[[int], bool] | None) -> dict:
        """The latents with the nearest decoder directions (dead ones marked)."""
        nearest = view.nearest(j)
        alive = np.asarray(view.stats["active"]) != 0 if view.is_codes else None

        def dead(k: int) -> bool:
            return alive is not None and not bool(alive[k])

        return {"nearest": [(k, c, view.name_of(k), linked is None or linked(k), dead(k)) for k, c in nearest]
                if nearest else None,
                "nearest_note": "the SAE checkpoint recorded in the codes' provenance was not found"}

    @staticmethod
    def _related_context(view: SAEView, j: int, linked: Callable[[int], bool] | None, wait: bool = True) -> dict:
        """Co-activation neighbours, near-duplicates, and a Matryoshka latent's place in its hierarchy."""
        from saevlm.metrics.coactivation import DUPLICATE_JACCARD

        rel, why = view.related_now(wait)
        if rel is None:
            return {"related": None, "related_note": why or "needs codes or top images (saevlm top-images)"}
        groups = view.groups() if view.group_sizes else None

        def entry(k: int, value: float, extra) -> dict:
            return {"id": k, "name": view.name_of(k), "value": value, "extra": extra,
                    "linked": linked is None or linked(k), "group": None if groups is None else int(groups[k])}

        out = {"related": [entry(int(k), float(jv), int(sh)) for k, jv, sh in
                           zip(rel.ids_kn[j], rel.jaccard_kn[j], rel.shared_kn[j]) if k >= 0],
               "related_basis": rel.basis, "related_active": int(rel.active_k[j]), "dup_jaccard": DUPLICATE_JACCARD,
               "cluster": rel.cluster_of(j)}
        if groups is not None and rel.parents_kp is not None:
            out.update(_hierarchy_context(view, rel, j, int(groups[j]), entry))
        return out

    @staticmethod
    def _calibration_context(view: SAEView, j: int, ms) -> dict:
        """Where this latent's MS stands within the SAE (percentile over latents with an MS, and
        over those active on at least the table's default number of images)."""
        if ms is None or not np.isfinite(ms[j]):
            return {"ms_pct": None}
        finite = ms[np.isfinite(ms)]
        out = {"ms_pct": float((finite <= ms[j]).mean() * 100), "ms_n": int(len(finite)), "ms_pct_active": None,
               "min_active": DEFAULT_MIN_ACTIVE,
               "ms_ci": None if view.ms_ci is None else [float(x) for x in view.ms_ci[j]]}
        active = np.asarray(view.stats["active"])
        ok = np.isfinite(ms) & (active >= DEFAULT_MIN_ACTIVE)
        if view.is_codes and ok.any() and active[j] >= DEFAULT_MIN_ACTIVE:
            out["ms_pct_active"] = float((ms[ok] <= ms[j]).mean() * 100)
            out["ms_n_active"] = int(ok.sum())
        out.update(_chance_context(view, j, ms, active))
        return out

    # -- an image: which latents fire on it
    IMAGE_LATENTS = 12  # the most active latents an image page lists

    def missing_images(self, slug: str, image_ids) -> set[int]:
        """Images of the store whose file is gone from the dataset folder since the server started
        (and whose thumbnail was never cached): the page shows a placeholder and says so."""
        view = self.sae(slug)
        images = view.images
        if images is None or not hasattr(images, "path"):
            return set()
        gone = set()
        for i in image_ids:
            if (self.index.cache_dir / "thumbs" / view.cache_name / f"{int(i)}.jpg").is_file():
                continue
            try:
                if not images.path(int(i)).is_file():
                    gone.add(int(i))
            except (IndexError, OSError, AttributeError):
                gone.add(int(i))
        return gone

    def image_entries(self, view: SAEView, codes_k: np.ndarray, linked: Callable[[int], bool] | None = None,
                      exclude: int | None = None, image_linked: Callable[[int], bool] | None = None) -> list[dict]:
        """The most active latents of one image: name, MS, activation, the image's rank among the
        latent's non-zero activations (dataset images of one-row-per-image stores), its top images."""
        from saevlm.explorer.stats import rank_in_column

        ms, _ = view.ms
        order = np.argsort(-codes_k, kind="stable")[:self.IMAGE_LATENTS]
        out = []
        for j in order.tolist():
            v = float(codes_k[j])
            if v <= 0:
                break
            rank = rank_in_column(view.columns, j, v) if view.columns is not None and view.one_row_per_image else None
            tops = [i for i in _active_top_ids(view, j) if i != exclude][:4]
            out.append({"id": j, "name": view.name_of(j), "value": v, "rank": rank,
                        "ms": _optional(ms, j), "linked": linked is None or linked(j),
                        "tops": [(i, image_linked is None or image_linked(i)) for i in tops]})
        return out

    def image_page(self, slug: str, image_id: int, linked: Callable[[int], bool] | None = None,
                   image_linked: Callable[[int], bool] | None = None,
                   overlay_ok: Callable[[int, int], bool] | None = None) -> str:
        """Dataset image ``image_id``: its most active latents in this SAE (KeyError: not an image
        of the store). A static export passes which latents and images have pages, and which
        (latent, image) overlays it wrote."""
        view = self.sae(slug)
        codes = view.image_codes(image_id)
        label = view.label_of(image_id)
        entries = self.image_entries(view, codes, linked, exclude=image_id, image_linked=image_linked)
        overlay = view.overlay_model[0] is not None
        for e in entries:
            self._overlay_pairs.setdefault(slug, set()).add((e["id"], image_id))
            self._linked.setdefault(slug, set()).update(i for i, _ in e["tops"])
            e["overlay"] = overlay and (overlay_ok is None or overlay_ok(e["id"], image_id))
        thumbs = view.images is not None
        return self._render("image", 3, sae=view, image_id=image_id, label=label, entries=entries, thumbs=thumbs,
                            overlay=overlay, thumb_note=view.images_note, live=self.serving,
                            live_note=self._live_note(view), uploaded=None, heatmaps={}, problem=None,
                            one_row=view.one_row_per_image)

    def live_form_page(self, slug: str) -> str:
        """The upload form alone (GET of the live URL)."""
        view = self.sae(slug)
        return self._render("image", 2, sae=view, image_id=None, label="", entries=[], thumbs=False, overlay=False,
                            thumb_note="", live=self.serving, live_note=self._live_note(view), uploaded=None,
                            heatmaps={}, problem=None, one_row=view.one_row_per_image)

    def _live_note(self, view: SAEView) -> str:
        if not self.serving:
            return "a static export: run saevlm explore on the run to try your own image"
        return ""

    def live_page(self, slug: str, data: bytes, filename: str = "") -> tuple[int, str]:
        """(HTTP status, page) for an uploaded image: the run's model at the SAE's hook, the SAE,
        the latents that fire, heatmaps for token-level SAEs. Bad images get a 4xx and one line."""
        import base64

        from saevlm.explorer.live import UploadError, open_upload

        view = self.sae(slug)

        def page(status: int, problem: str | None, **ctx) -> tuple[int, str]:
            base = dict(sae=view, image_id=None, label=filename, entries=[], thumbs=view.images is not None,
                        overlay=False, thumb_note=view.images_note, live=True, live_note="", uploaded=None,
                        heatmaps={}, problem=problem, one_row=view.one_row_per_image)
            base.update(ctx)
            return status, self._render("image", 2, **base)

        try:
            image, notes = open_upload(data)
        except UploadError as err:
            return page(err.status, str(err))
        model, why = view.live_model
        if model is None:
            return page(503, why)
        with image:
            shown, codes, patches = model.image_codes(image, LARGE_PX // 2)
        entries = self.image_entries(view, codes)
        heatmaps = {}
        if patches is not None:
            for e in entries:
                jpeg = view.heatmap(shown, patches[..., e["id"]], e["id"])
                heatmaps[e["id"]] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        buf = io.BytesIO()
        shown.save(buf, format="JPEG", quality=85)
        for e in entries:
            self._linked.setdefault(slug, set()).update(i for i, _ in e["tops"])
        return page(200, None, entries=entries, heatmaps=heatmaps, notes=notes,
                    uploaded="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())

    def overlay(self, slug: str, j: int, image_id: int) -> bytes:
        """The per-patch overlay of latent ``j`` on image ``image_id`` (cached)."""
        view = self.sae(slug)
        cache = self.index.cache_dir / "overlays" / view.cache_name / str(j) / f"{image_id}.jpg"
        if cache.is_file():
            return cache.read_bytes()
        data = view.overlay(j, image_id, THUMB_PX)
        from saevlm.data.atomic import atomic_write_bytes

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, data)
        return data

    def thumbnail(self, slug: str, image_id: int) -> bytes:
        """A JPEG thumbnail of dataset image ``image_id`` (made on first request, then cached)."""
        return self._image_jpeg(slug, image_id, THUMB_PX, "thumbs")

    def cached_image(self, slug: str, image_id: int, kind: str) -> bytes | None:
        """A thumbnail (``thumbs``) or enlarged image (``large``) made before, or None."""
        f = self.index.cache_dir / kind / self.sae(slug).cache_name / f"{image_id}.jpg"
        return f.read_bytes() if f.is_file() else None

    def _image_jpeg(self, slug: str, image_id: int, side: int, kind: str) -> bytes:
        view = self.sae(slug)
        cache = self.index.cache_dir / kind / view.cache_name / f"{image_id}.jpg"
        if cache.is_file():
            return cache.read_bytes()
        if view.images is None:
            raise KeyError(image_id)
        from PIL import Image

        from saevlm.data.atomic import atomic_write_bytes
        from saevlm.errors import UserError

        try:
            data = view.images.read_bytes(image_id)
        except UserError as err:  # other pictures under the same names: never shown as this store's
            view.images_note = f"no images to show: {err}"
            raise KeyError(image_id) from None
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            crop = min(im.size)
            left, top = (im.width - crop) // 2, (im.height - crop) // 2
            im = im.crop((left, top, left + crop, top + crop)).resize((side, side))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, buf.getvalue())
        return buf.getvalue()

    def large_image(self, slug: str, image_id: int) -> bytes:
        """A top image at LARGE_PX (clicked to enlarge): made on first request, then cached."""
        return self._image_jpeg(slug, image_id, LARGE_PX, "large")

    # -- static export
    EXPORT_MARK = ".saevlm-explorer-export"

    def export(self, out: str | Path, latents: str = "top:500", progress: bool = True) -> Path:
        """Write every page for the chosen latents of every SAE as the folder ``out`` (no server
        needed). The pages are written into a temporary folder beside it, which then replaces
        ``out`` in one rename: no stale page of an earlier export is left, and an interrupted
        export leaves the earlier one intact. ``out`` must not be (or hold) the run folder, and an
        existing ``out`` must be an earlier export (so nothing else is ever replaced)."""
        import os
        import shutil

        final = Path(out).expanduser()
        self._check_export_target(out, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            self._export_into(tmp, latents, progress)
            (tmp / self.EXPORT_MARK).write_text("written by saevlm explore --static; replaced as a whole\n")
            _replace_folder(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _check_export_target(self, out: str | Path, final: Path) -> None:
        """The export folder is not (and does not hold) the run, and is new, empty or an earlier export."""
        from saevlm.errors import UserError

        run = self.index.run_dir.resolve()
        target = final.resolve()
        if target == run or target in run.parents:
            raise UserError(f"--static {out}: it is (or holds) the run folder {self.index.run_dir}; choose a "
                            f"folder of its own (e.g. {self.index.run_dir}/explorer)")
        if final.exists() and (not final.is_dir() or (any(final.iterdir())
                                                      and not (final / self.EXPORT_MARK).is_file())):
            raise UserError(f"--static {out}: exists and is not an earlier explorer export; choose a new or empty "
                            f"folder (it would be replaced)")

    def _export_into(self, out: Path, latents: str, progress: bool) -> Path:
        from saevlm.data.atomic import ensure_writable_dir

        chosen, skipped = self._chosen_for_export(latents)
        out = ensure_writable_dir(Path(out), "static")
        _write_text(out / "static" / "explorer.js", SCRIPT)
        _write_text(out / "static" / "style.css", STYLE)
        kept = {slug: set(subset.tolist()) for slug, subset in chosen.items()}
        _write_text(out / "index.html", self.run_page(lambda s, j: j in kept[s]))
        for slug, subset in chosen.items():
            view = self.index.saes[slug]
            note = f"{len(subset)} of {view.num_latents} latents exported ({latents})" + (
                f"; not in this SAE: {', '.join(map(str, skipped[slug][:5]))}" if slug in skipped else "")
            self._export_sae(out / "sae" / slug, slug, subset, kept[slug], note, progress)
        return out

    def _export_sae(self, d: Path, slug: str, subset: np.ndarray, keep: set[int], note: str, progress: bool) -> None:
        """One SAE's table, latent pages, thumbnails, image pages and overlays."""
        view = self.index.saes[slug]
        _write_text(d / "index.html", self.table_page(slug, note, linked=lambda k: k in keep))
        _write_text(d / "latents.js", self.latents_js(slug, subset))
        images = self._export_latent_pages(d, slug, subset, keep, progress)
        if view.images is not None:
            self._export_images(d, slug, images, subset)
        if view.is_codes and view.top is not None:
            self._export_image_pages(d, slug, subset, keep, images, progress)
        if view.overlay_model[0] is not None and view.top is not None:
            for j in subset.tolist():
                (d / "overlay" / str(j)).mkdir(parents=True, exist_ok=True)
                for img in _active_top_ids(view, j):  # the images the page links
                    _write_bytes(d / "overlay" / str(j) / f"{img}.jpg", self.overlay(slug, j, img))

    def _chosen_for_export(self, latents: str) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
        """--latents for every SAE (checked before anything is written), and the asked ids each lacks."""
        chosen = {slug: choose_latents(view, latents) for slug, view in self.index.saes.items()}
        if not any(len(c) for c in chosen.values()):
            raise self._none_chosen(latents)
        if latents.startswith("top:") or latents == "all":
            return chosen, {}
        asked = latent_ids(latents)
        skipped = {slug: missing for slug, c in chosen.items() if (missing := sorted(set(asked) - set(c.tolist())))}
        for slug, missing in skipped.items():
            more = " ..." if len(missing) > 5 else ""
            self.log(f"note: --latents: {slug} has {self.index.saes[slug].num_latents} latents; "
                     f"skipped {', '.join(map(str, missing[:5]))}{more}")
        return chosen, skipped

    def _none_chosen(self, latents: str) -> UserError:
        sizes = ", ".join(f"{slug}: {v.num_latents}" for slug, v in self.index.saes.items())
        return UserError(f"--latents {latents}: no SAE of the run has these latents (latents per SAE: {sizes})")

    def _export_latent_pages(self, d: Path, slug: str, subset: np.ndarray, keep: set[int], progress: bool
                             ) -> set[int]:
        """One page per exported latent; returns the images their thumbnails show."""
        from tqdm import tqdm

        images: set[int] = set()
        ordered = sorted(keep)  # previous / next exported latent, without a scan per page
        neighbours_of = {k: (ordered[i - 1] if i else None, ordered[i + 1] if i + 1 < len(ordered) else None)
                         for i, k in enumerate(ordered)}
        for j in tqdm(subset.tolist(), desc=f"export {slug}", unit="latent", disable=not progress, file=sys.stderr):
            page = self.latent_page(slug, j, linked=lambda k: k in keep, neighbours=neighbours_of[j])
            _write_text(d / "latent" / f"{j}.html", page)
            images.update(int(x) for x in _thumb_ids(page))
        return images

    def _export_images(self, d: Path, slug: str, images: set[int], subset: np.ndarray) -> None:
        """The thumbnails the latent pages show, and the exported latents' top images enlarged."""
        view = self.index.saes[slug]
        (d / "thumb").mkdir(parents=True, exist_ok=True)
        for img in sorted(images):
            _write_bytes(d / "thumb" / f"{img}.jpg", self.thumbnail(slug, img))
        large = _active_top_union(view, subset)
        if large:
            (d / "image").mkdir(parents=True, exist_ok=True)
        for img in large:  # the top images, enlarged on a click
            _write_bytes(d / "image" / f"{img}.jpg", self.large_image(slug, img))

    def _export_image_pages(self, d: Path, slug: str, subset: np.ndarray, keep: set[int], images: set[int],
                            progress: bool) -> None:
        """The pages of the exported latents' top images (and the thumbnails they add)."""
        from tqdm import tqdm

        view = self.index.saes[slug]
        shown = _active_top_union(view, subset)
        pages_of = set(shown)
        tops_of = {j: set(_active_top_ids(view, j)) for j in subset.tolist()}
        more: set[int] = set()
        for img in tqdm(shown, desc=f"image pages {slug}", unit="image", disable=not progress, file=sys.stderr):
            page = self.image_page(slug, img, linked=lambda k: k in keep, image_linked=lambda i: i in pages_of,
                                   overlay_ok=lambda j, i: j in tops_of and i in tops_of[j])
            _write_text(d / "img" / f"{img}.html", page)
            more.update(int(x) for x in re.findall(r'/thumb/(\d+)\.jpg"', page))
        if view.images is not None:
            for img in sorted(more - images):
                _write_bytes(d / "thumb" / f"{img}.jpg", self.thumbnail(slug, img))


def _active_top_union(view: SAEView, subset: np.ndarray) -> list[int]:
    """Every image that is an active top image of one of the latents, in increasing order."""
    return sorted({i for j in subset.tolist() for i in _active_top_ids(view, j)})


def _replace_folder(new: Path, final: Path) -> None:
    """``new`` takes ``final``'s place in one rename; the old folder is removed after."""
    import os
    import shutil

    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    """An export's page, written atomically (its folder made first)."""
    from saevlm.data.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _write_bytes(path: Path, data: bytes) -> None:
    from saevlm.data.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def hierarchy_tree(view: SAEView, rel, linked: Callable[[int], bool] | None = None, roots: int = 8,
                   per_node: int = 3) -> list[dict]:
    """The SAE page's tree: group 0's most active latents, each with its children in the next
    finer groups (see metrics/coactivation.py), to the last group. ``linked``: the latents that have pages."""
    groups = view.groups()
    active = rel.active_k

    def ok(k: int) -> bool:
        return linked is None or linked(k)

    def node(k: int, share: float | None, depth: int, seen: set) -> dict:
        seen.add(k)
        kids = []
        if depth < len(view.group_sizes) - 1:
            for c, sh in zip(rel.children_kc[k], rel.child_share_kc[k]):
                if c < 0 or len(kids) >= per_node:
                    break
                if int(groups[c]) == int(groups[k]) + 1 and c not in seen and ok(int(c)):
                    kids.append(node(int(c), float(sh), depth + 1, seen))
        return {"id": k, "name": view.name_of(k), "group": int(groups[k]), "active": int(active[k]), "share": share,
                "children": kids}

    first = np.flatnonzero((groups == 0) & (active > 0))
    first = [int(k) for k in first[np.argsort(-active[first], kind="stable")] if ok(int(k))][:roots]
    seen: set = set()
    return [node(k, None, 0, seen) for k in first]


def _thumb_ids(page: str) -> Iterable[str]:
    import re
    return re.findall(r'src="\.\./thumb/(\d+)\.jpg"', page)


def ranked_latents(view: SAEView) -> np.ndarray:
    """Every latent, best first as the table's default view ranks them: by MS (by max activation
    without MS), latents active on at least DEFAULT_MIN_ACTIVE images first (an MS over two images
    rests on one pair), then the rest in the same order."""
    ms, _ = view.ms
    key = np.asarray(ms if ms is not None else view.stats["max"], dtype=np.float64)
    order = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")
    if view.is_codes:
        enough = np.asarray(view.stats["active"])[order] >= DEFAULT_MIN_ACTIVE
        order = np.concatenate([order[enough], order[~enough]])
    return order


def _active_top_images(view: SAEView, j: int) -> list[tuple]:
    """(rank, image, value, label) of the latent's top images where it is active (the rest of a
    top-16 list is padding at 0)."""
    if view.top is None:
        return []
    ids, vals = view.top
    return [(r, int(i), float(v), view.label_of(int(i))) for r, (i, v) in enumerate(zip(ids[j], vals[j])) if v > 0]


def _active_top_ids(view: SAEView, j: int) -> list[int]:
    """The latent's top images where it is active, best first."""
    if view.top is None:
        return []
    ids, vals = view.top
    return [int(i) for i, a in zip(ids[j], vals[j]) if a > 0]


def _ms_columns(view: SAEView) -> list[tuple[str, str]]:
    """One MS column per embedder (never "-" because there are two)."""
    if not view.ms_sets:
        return [("ms", "MS")]
    return [(key, f"MS ({label})" if len(view.ms_sets) > 1 else "MS") for key, label, _ in view.ms_sets]


def _table_columns(view: SAEView) -> tuple[list, dict]:
    """The table's columns (the MS columns; the label column when labels are known) and each
    column's definition."""
    ms_cols = _ms_columns(view)
    label = [c for c in TABLE_COLUMNS if c[0] == "label"] if view.top_labels is not None else []
    columns = [c for c in TABLE_COLUMNS if c[0] in ("id", "name")] + label + ms_cols + \
        [c for c in TABLE_COLUMNS if c[0] not in ("id", "name", "ms", "label")]
    definitions = {**DEFINITIONS, **{key: DEFINITIONS["ms"] + f" (embedder {lab})" for key, lab, _ in view.ms_sets}}
    return columns, definitions


def _optional(values, j: int) -> float | None:
    return None if values is None else float(values[j])


def _latent_numbers(view: SAEView, j: int) -> dict:
    """A latent page's numbers: MS (per embedder), frequency, maximum, active images, group, depth, FMS."""
    stats = view.stats
    return dict(ms=_optional(view.ms[0], j), ms_all=[(label, float(s[j])) for _, label, s in view.ms_sets],
                active=int(stats["active"][j]) if "active" in stats and stats["active"][j] >= 0 else None,
                freq=float(stats["freq"][j]), maxv=float(stats["max"][j]),
                group=int(view.groups()[j]) if view.group_sizes else None,
                depth=_optional(view.depth, j),
                depth_max=max(len(t) for t in view.classes.taxonomy) if view.depth is not None else None,
                fms=_optional(view.fms, j))


def _pictures_are_the_stores(view: SAEView, image_ids: list[int]) -> bool:
    """Whether thumbnails may be shown: the pictures must be the store's own (content hashes),
    checked before any is linked; if not, the view's note says why."""
    if not hasattr(view.images, "check"):
        return True
    from saevlm.errors import UserError
    try:
        view.images.check(image_ids)
    except UserError as err:
        view.images_note = f"no images to show: {err}"
        return False
    return True


def _weak_reasons(named) -> list[str]:
    """Why a latent's names may be weak: a small margin, low label purity, detection near chance."""
    checks = ((f"margin under {WEAK_MARGIN}", named.margin is not None and named.margin < WEAK_MARGIN),
              (f"label purity under {WEAK_PURITY}", named.purity is not None and named.purity < WEAK_PURITY))
    reasons = [why for why, bad in checks if bad]
    if named.detection is not None and named.detection_baseline is not None and \
            named.detection - named.detection_baseline < max(WEAK_DETECTION, 2 * (named.detection_se or 0.0)):
        reasons.append("detection AUROC near the baseline")
    return reasons


def _names_source(names) -> str:
    """Where an SAE's latent names come from, in words."""
    if names is None:
        return "CLIP"
    if names.explainer == "mllm":
        return f"written by {names.mllm_model} from the top images"
    if names.explainer == "given":
        return f"from {Path(names.names_file or '').name}"
    if names.text_embeddings:
        return f"nearest of the text embeddings in {Path(names.text_embeddings).name}, not CLIP text"
    return "CLIP"


def _hierarchy_context(view: SAEView, rel, j: int, g: int, entry: Callable) -> dict:
    """A Matryoshka latent's parents and children (by co-activation share) and its group's place."""
    sizes = list(view.group_sizes)
    bounds = group_bounds(sizes)
    return {"parents": [entry(int(k), float(v), None) for k, v in zip(rel.parents_kp[j], rel.parent_share_kp[j])
                        if k >= 0],
            "children": [entry(int(k), float(v), None) for k, v in zip(rel.children_kc[j], rel.child_share_kc[j])
                         if k >= 0],
            "group_info": {"group": g, "num_groups": len(sizes), "size": sizes[g], "first": bounds[g],
                           "last": bounds[g + 1] - 1, "prefix": bounds[g + 1]}}


def _chance_context(view: SAEView, j: int, ms: np.ndarray, active: np.ndarray) -> dict:
    """The latent's MS against chance: random image sets of its active size, under the same embedder."""
    from saevlm.explorer.stats import baseline_at

    n = int(active[j]) if view.is_codes else int((view.top[1][j] > 0).sum()) if view.top is not None else 0
    base, why = view.ms_baseline
    at = baseline_at(base, n) if base is not None else None
    return {"ms_base": None if at is None else {"size": at[0], "q50": at[1], "q95": at[2], "n": n,
                                                "above": bool(ms[j] > at[2]), "chance": bool(ms[j] <= at[1])},
            "ms_base_note": why}


def choose_latents(view: SAEView, spec: str) -> np.ndarray:
    """``--latents``: ``all``, ``top:N`` (the first N of :func:`ranked_latents`), or ``1,5,9``."""
    K = view.num_latents
    if spec == "all":
        return np.arange(K)
    if spec.startswith("top:"):
        n = _top_count(spec)  # checked before any statistic is computed (and cached)
        return np.sort(ranked_latents(view)[:n])
    # ids beyond this SAE's size (any size: Python ints) belong to wider SAEs of the run (export says so)
    return np.array([j for j in latent_ids(spec) if j < K], dtype=np.int64)


def _top_count(spec: str) -> int:
    """N of ``--latents top:N``."""
    try:
        n = int(spec[4:])
    except ValueError:
        raise UserError(f"--latents {spec}: expected top:N, all, or ids like 1,5,9") from None
    if n < 1:
        raise UserError(f"--latents {spec}: N must be a positive number of latents (e.g. top:500)")
    return n


def _ascii_digits(word: str) -> bool:
    return word.isascii() and word.isdigit()  # ASCII only: int() also reads other scripts' digits


def latent_ids(spec: str) -> list[int]:
    """The ids of ``--latents 1,5,9``, increasing and each once."""
    words = [x.strip() for x in spec.split(",") if x.strip()]
    if any(w.startswith("-") and _ascii_digits(w[1:]) for w in words):
        raise UserError(f"--latents {spec}: ids must be 0 or more")
    if not all(_ascii_digits(w) for w in words):
        raise UserError(f"--latents {spec}: expected top:N, all, or ids like 1,5,9")
    return sorted({int(w) for w in words})
