"""The Monosemanticity Score (MS), arXiv 2504.02821 v3, Eq. 5-9, exactly, in one streaming pass.

Definition, for neuron k over N images with activations a_n and image embeddings e_n:

    ã_n  = (a_n - min a) / (max a - min a)                       (per-neuron min-max)
    s_nm = cos(e_n, e_m)
    MS_k = Σ_{n<m} ã_n ã_m s_nm / Σ_{n<m} ã_n ã_m               (pairs of distinct images)

NaN ("dead") when max == min or when the denominator is 0 (ã non-zero on at most one image).

Closed form (exact): with unit-norm u_n = e_n / ||e_n||, s_nn = 1 and

    2 Σ_{n<m} ã_n ã_m s_nm = ||Σ_n ã_n u_n||² - Σ_n ã_n²
    2 Σ_{n<m} ã_n ã_m      = (Σ_n ã_n)²     - Σ_n ã_n².

Because ã is invariant to shifting a, and the scale (max - min)² cancels in the ratio, one pass
suffices: accumulate per neuron S1 = Σ b_n, S2 = Σ b_n², V = Σ b_n u_n (b = a - c for a fixed
per-neuron shift c), the minimum, maximum and the number of images at the minimum, plus
U = Σ u_n. With m = min b and Q = S2 - 2 m S1 + N m² (= Σ (b_n - m)²):

    MS = (||V - m U||² - Q) / ((S1 - N m)² - Q).

Accumulation is in float64 (the differences above cancel). For sparse SAE codes only the
non-zero entries are touched (cost N·k·d, not N·K·d); zeros contribute nothing to S1, S2, V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MSAccumulator:
    """Streaming accumulator; feed dense or CSR chunks of activations with their embeddings."""

    num_neurons: int
    embed_dim: int
    device: str | object = "cpu"

    def __post_init__(self):
        import torch

        f64 = dict(dtype=torch.float64, device=self.device)
        K, d = self.num_neurons, self.embed_dim
        self.n = 0
        self.U = torch.zeros(d, **f64)
        self.V = torch.zeros(K, d, **f64)
        self.S1 = torch.zeros(K, **f64)
        self.S2 = torch.zeros(K, **f64)
        self.shift = None  # dense path: per-neuron shift c (the first chunk's minimum)
        # dense path: running min / max / count at min of b = a - c
        self.bmin = torch.full((K,), float("inf"), **f64)
        self.bmax = torch.full((K,), float("-inf"), **f64)
        self.count_min = torch.zeros(K, dtype=torch.int64, device=self.device)
        # sparse path: statistics of the stored (non-zero) values
        self.nnz = torch.zeros(K, dtype=torch.int64, device=self.device)
        self.mode: str | None = None

    def _unit(self, embeds_nd):
        import torch

        e = torch.as_tensor(np.asarray(embeds_nd), device=self.device).to(torch.float64)
        norms = e.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("an image embedding has zero norm; its cosine similarity is undefined")
        return e / norms

    def _set_mode(self, mode: str) -> None:
        if self.mode not in (None, mode):
            raise ValueError("do not mix dense and sparse chunks in one accumulator")
        self.mode = mode

    def add_dense(self, acts_nk, embeds_nd) -> None:
        """Dense activations [n, K] (any sign) with their embeddings [n, d]."""
        import torch

        self._set_mode("dense")
        u = self._unit(embeds_nd)
        a = torch.as_tensor(np.asarray(acts_nk), device=self.device).to(torch.float64)
        if self.shift is None:
            self.shift = a.min(0).values
        b = a - self.shift
        cmin = b.min(0).values
        self._merge_min_max(cmin, b.max(0).values, (b == cmin).sum(0))
        self.S1 += b.sum(0)
        self.S2 += (b * b).sum(0)
        self.V += b.T @ u
        self.U += u.sum(0)
        self.n += len(a)

    def _merge_min_max(self, cmin, cmax, at_cmin) -> None:
        """Fold a chunk's per-neuron min, max and count at the min into the running ones."""
        import torch

        lower = cmin < self.bmin
        equal = cmin == self.bmin
        self.count_min = torch.where(lower, at_cmin, torch.where(equal, self.count_min + at_cmin, self.count_min))
        self.bmin = torch.minimum(self.bmin, cmin)
        self.bmax = torch.maximum(self.bmax, cmax)

    def add_csr(self, indptr, indices, values, embeds_nd, rows_per_block: int = 2048) -> None:
        """A CSR chunk of codes [n, K] with its embeddings [n, d]; only non-zeros are touched."""
        import torch

        self._set_mode("sparse")
        u = self._unit(embeds_nd)
        indptr = np.asarray(indptr, dtype=np.int64)
        n = len(indptr) - 1
        for r0 in range(0, n, rows_per_block):  # bounds the [nnz, d] temporary
            r1 = min(r0 + rows_per_block, n)
            lo, hi = int(indptr[r0]), int(indptr[r1])
            if hi == lo:
                continue
            cols = torch.as_tensor(np.asarray(indices[lo:hi], dtype=np.int64), device=self.device)
            vals = torch.as_tensor(np.array(values[lo:hi], dtype=np.float64), device=self.device)
            rows = torch.as_tensor(np.repeat(np.arange(r0, r1), np.diff(indptr[r0:r1 + 1])), device=self.device)
            keep = vals != 0  # explicit zeros are zeros
            cols, vals, rows = cols[keep], vals[keep], rows[keep]
            self.S1.index_add_(0, cols, vals)
            self.S2.index_add_(0, cols, vals * vals)
            self.V.index_add_(0, cols, vals[:, None] * u[rows])
            self.nnz.index_add_(0, cols, torch.ones_like(cols))
            # min / max / count-at-min over the stored values (zeros are added in scores())
            big = torch.full((self.num_neurons,), float("inf"), dtype=torch.float64, device=self.device)
            cmin = big.scatter_reduce(0, cols, vals, reduce="amin")
            cmax = (-big).scatter_reduce(0, cols, vals, reduce="amax")
            at = torch.zeros(self.num_neurons, dtype=torch.int64, device=self.device)
            at.index_add_(0, cols, (vals == cmin[cols]).to(torch.int64))
            self._merge_min_max(cmin, cmax, at)
        self.U += u.sum(0)
        self.n += n

    def scores(self) -> np.ndarray:
        """MS per neuron (float64, NaN where the score is undefined)."""
        import torch

        N = self.n
        bmin, bmax, count_min = self.bmin.clone(), self.bmax.clone(), self.count_min.clone()
        if self.mode == "sparse":
            zeros = N - self.nnz  # images where the neuron is exactly 0
            has_zero = zeros > 0
            z = torch.zeros_like(bmin)
            count_min = torch.where(has_zero & (bmin > 0), zeros,
                                    torch.where(has_zero & (bmin == 0), zeros + count_min, count_min))
            count_min = torch.where(has_zero & (bmin == float("inf")), zeros, count_min)
            bmin = torch.where(has_zero, torch.minimum(bmin, z), bmin)
            bmax = torch.where(has_zero, torch.maximum(bmax, z), bmax)
        m = bmin
        Q = self.S2 - 2 * m * self.S1 + N * m * m
        W = self.V - m[:, None] * self.U[None, :]
        num = (W * W).sum(1) - Q
        den = (self.S1 - N * m) ** 2 - Q
        ms = num / den
        constant = bmax == bmin
        undefined = constant | (N - count_min <= 1)
        # why a score is undefined: the neuron never varies, or varies on one image only
        self.dead_constant = int(constant.sum())
        self.dead_one_image = int((undefined & ~constant).sum())
        ms = torch.where(undefined, torch.full_like(ms, float("nan")), ms)
        return ms.cpu().numpy()


def summarize(scores_k: np.ndarray, top: int = 10) -> dict:
    """mean, std, dead, total, top10 / bottom10 ([neuron, score]) over the defined scores."""
    valid = np.flatnonzero(~np.isnan(scores_k))
    vals = scores_k[valid]
    order = valid[np.argsort(-vals, kind="stable")]
    return {
        "mean": float(vals.mean()) if len(vals) else float("nan"),
        # unbiased, as the authors' torch.std (ddof=1)
        "std": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
        "dead": int(len(scores_k) - len(valid)),
        "total": int(len(scores_k)),
        "top10": [[int(i), float(scores_k[i])] for i in order[:top]],
        "bottom10": [[int(i), float(scores_k[i])] for i in order[::-1][:top]],
    }


# ----------------------------------------------------------------------------- where results go
def embedder_slug(emb_store) -> str:
    """A folder-safe name of the embedding model: ``dinov2-base``, ``clip-vit-base-patch32``."""
    import re

    name = str(emb_store.provenance.get("model", {}).get("name") or "embeddings")
    name = name.rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "embeddings"


def find_ms_dir(store_path, ms_subdir: str | None, flag: str, required: bool = False):
    """The folder holding a store's MS results: ``<store>/<ms_subdir>`` when named, else the single
    ``ms*/`` folder with a scores.npy (several: an error naming them, or None when not required)."""
    from pathlib import Path

    from saevlm.errors import UserError

    store_path = Path(store_path)
    if ms_subdir:
        d = Path(ms_subdir) if Path(ms_subdir).is_absolute() else store_path / ms_subdir
        if required and not (d / "scores.npy").is_file():
            raise UserError(f"--ms_subdir {ms_subdir}: no scores.npy in {d}; run saevlm ms first")
        return d if (d / "scores.npy").is_file() else None
    found = sorted(d for d in store_path.glob("ms*") if (d / "scores.npy").is_file())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(d.name for d in found)
        if required:
            raise UserError(f"{flag} {store_path}: holds MS results for several embedders ({names}); "
                            f"choose one with --ms_subdir")
        print(f"note: {flag} {store_path}: MS results for several embedders ({names}); pass --ms_subdir "
              f"to use one", file=__import__("sys").stderr)
        return None
    if required:
        raise UserError(f"{flag} {store_path}: no MS results (ms*/scores.npy); run saevlm ms first")
    return None


def load_ms_scores(ms_dir, num_neurons: int, flag: str):
    """scores.npy of an MS folder, checked against the number of neurons it should score."""
    import numpy as np

    from saevlm.errors import UserError

    f = ms_dir / "scores.npy"
    try:
        scores = np.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {f}: unreadable ({e}); rerun saevlm ms") from None
    if scores.ndim != 1 or len(scores) != num_neurons:
        raise UserError(f"{flag} {f}: {scores.shape} scores, expected one per neuron ({num_neurons}); "
                        f"it belongs to another store, rerun saevlm ms")
    return scores


# ----------------------------------------------------------------------------- command
def add_arguments(p) -> None:
    from saevlm.device import DEVICE_HELP

    p.add_argument("--activations_dir", required=True,
                   help="an activation store (raw neurons) or a code store (SAE latents), one row per image")
    p.add_argument("--embeddings_path", required=True,
                   help="the embedding store of the same images (saevlm embed: DINOv2 / CLIP)")
    p.add_argument("--output_dir", default=None,
                   help="where scores.npy, ms.json and metric_stats.txt go (default: "
                        "<activations_dir>/ms_<embedder>/, e.g. ms_dinov2-base/, so that scores from "
                        "another embedder are added, not replaced; the store's own files are never touched)")
    p.add_argument("--output_subdir", default=None,
                   help="the same, as a folder name inside --activations_dir (the authors' scripts)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results in the output folder that were computed from other inputs")
    p.add_argument("--allow_nonfinite", action="store_true",
                   help="score stores holding NaN / inf (refused by default; scores then may be NaN)")
    p.add_argument("--chunk_rows", type=int, default=8192,
                   help="images per streamed chunk; bounds memory (default: %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def open_scored_store(path, flag: str = "--activations_dir", allow_top_images: bool = False,
                      allow_nonfinite: bool = False):
    """An activation or code store, whichever the manifest says (see saevlm.data.open)."""
    from saevlm.data.open import open_any_store

    return open_any_store(path, flag, allow_top_images=allow_top_images, allow_nonfinite=allow_nonfinite)


def check_one_row_per_image(store, flag: str) -> None:
    from saevlm.errors import UserError

    n_img = int(store.manifest.get("num_images", store.num_rows))
    if store.num_rows != n_img:
        tokens = store.provenance.get("tokens", {})
        raise UserError(f"{flag} {store.path}: {store.num_rows} rows for {n_img} images (token "
                        f"selection {tokens.get('selection')!r}); this metric needs one row per image "
                        f"(extract with --cls_only or --mean_pool)")


def ms_inputs(acts, emb) -> dict:
    """What an MS result was computed from: results from other inputs are never replaced silently."""
    def ident(store) -> dict:
        return {"path": str(store.path.resolve()), "format": store.manifest.get("format"),
                "content_sha256": store.manifest.get("content_sha256"),
                "image_ids_sha256": store.manifest.get("image_ids_sha256"),
                "finished": store.manifest.get("finished"), "model": store.provenance.get("model", {}).get("source"),
                "sae": (store.provenance.get("sae") or {}).get("path")}
    return {"activations": ident(acts), "embeddings": ident(emb)}


def _same_inputs(old: dict | None, new: dict) -> bool:
    """The same stores, wherever they now lie (a copied or moved run keeps its results)."""
    import json

    def strip(inputs):
        return {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in (inputs or {}).items()}
    return old is not None and strip(old) == strip(json.loads(json.dumps(new)))


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from tqdm import tqdm

    from saevlm.data.atomic import OutputLock, atomic_save_npy, atomic_write_json, atomic_write_text
    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore, check_same_images
    from saevlm.device import resolve_device
    from saevlm.errors import UserError

    t0 = time.time()
    device = resolve_device(args.device)
    if args.chunk_rows < 1:
        raise UserError(f"--chunk_rows {args.chunk_rows}: expected a positive integer")
    if args.output_dir and args.output_subdir:
        raise UserError("--output_dir and --output_subdir: give one (the folder, or its name inside the store)")
    acts = open_scored_store(args.activations_dir, allow_nonfinite=args.allow_nonfinite)
    emb = ActivationStore(args.embeddings_path, flag="--embeddings_path", allow_nonfinite=args.allow_nonfinite)
    check_one_row_per_image(acts, "--activations_dir")
    check_one_row_per_image(emb, "--embeddings_path")
    check_same_images(acts, emb, what="--activations_dir / --embeddings_path")
    if acts.num_rows < 2:
        raise UserError(f"--activations_dir {acts.path}: the MS needs at least 2 images")
    if args.output_dir:
        out, flag = Path(args.output_dir), "--output_dir"
    else:
        out = acts.path / (args.output_subdir or f"ms_{embedder_slug(emb)}")
        flag = "--output_subdir" if args.output_subdir else "--output_dir (default)"
    # Before any work: the output must be writable, ours alone, and not hold other inputs' results.
    lock = OutputLock(out, flag)
    inputs = ms_inputs(acts, emb)
    old_f = out / "ms.json"
    if old_f.is_file() and not args.overwrite:
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
    sparse = isinstance(acts, CodeStore)
    acc = MSAccumulator(acts.dim, emb.dim, device)
    with tqdm(total=acts.num_rows, unit="img", disable=args.no_progress, desc="MS",
              dynamic_ncols=True, file=sys.stderr) as bar:
        chunks = acts.iter_csr(args.chunk_rows) if sparse else acts.iter_chunks(args.chunk_rows)
        for chunk in chunks:
            if sparse:
                e = emb.read(chunk.start, chunk.start + chunk.num_rows)
                acc.add_csr(chunk.indptr, chunk.indices, chunk.values, e)
                bar.update(chunk.num_rows)
            else:
                start, a = chunk
                acc.add_dense(a, emb.read(start, start + len(a)))
                bar.update(len(a))
    scores_k = acc.scores()
    summary = summarize(scores_k)
    record = {**summary, "scored": int(summary["total"] - summary["dead"]),
              "dead_constant": acc.dead_constant, "dead_one_image": acc.dead_one_image,
              "num_images": acts.num_rows, "kind": "sae latents" if sparse else "raw neurons",
              "activations_dir": str(acts.path.resolve()), "embeddings_path": str(emb.path.resolve()),
              "embeddings_model": emb.provenance.get("model", {}).get("name"),
              "sae": acts.provenance.get("sae"), "hook": acts.provenance.get("hook"),
              "model": acts.provenance.get("model", {}).get("name"), "inputs": inputs,
              "definition": "arXiv 2504.02821 Eq. 5-9: per-neuron min-max, pairs n<m, NaN = dead; std unbiased"}
    lines = [f"MS over {acts.num_rows} images, embeddings {record['embeddings_model']}",
             f"mean {summary['mean']:.4f} +- {summary['std']:.4f} over {record['scored']} scored neurons "
             f"of {summary['total']}",
             f"dead {summary['dead']} of {summary['total']} ({acc.dead_constant} never vary, "
             f"{acc.dead_one_image} vary on one image only)",
             "top10 " + " ".join(f"{i}:{s:.4f}" for i, s in summary["top10"]),
             "bottom10 " + " ".join(f"{i}:{s:.4f}" for i, s in summary["bottom10"])]
    # scores.npy first and ms.json last: ms.json marks a complete result
    atomic_save_npy(out / "scores.npy", scores_k)
    atomic_write_text(out / "metric_stats.txt", "\n".join(lines) + "\n")
    atomic_write_json(out / "ms.json", record)
    lock.release()
    print("\n".join(lines))
    print(f"wrote {out}/scores.npy, ms.json, metric_stats.txt ({time.time() - t0:.1f} s)")
    return 0
