"""The extraction engine behind ``saevlm extract`` and ``saevlm embed``: images -> one forward
pass per batch -> one store per hook point (resumable, multi-process, checksummed).

All requested (point, layer) pairs come from ONE forward pass per batch; with no
``post_projection`` requested, the pass stops after the deepest requested block. Shard boundaries
fall on batch boundaries, so a resumed store is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from saevlm.commandline import DeviceOption, ProgressOption, opt
from saevlm.data import artifacts as A
from saevlm.device import AUTOCAST_CHOICES
from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import DatasetInfo, Provenance


DEFAULT_SHARD_ROWS = 65536


@dataclass(frozen=True, kw_only=True)
class ImageRunOptions(DeviceOption, ProgressOption):
    """Dataset, batching and device options shared by ``extract`` and ``embed``."""

    dataset_name: str = opt("imagefolder", group="data")
    """imagenet | inat (iNaturalist 2021) | imagefolder (default: %(default)s), or hf:<repo id> to stream a
    Hugging Face dataset (e.g. hf:ILSVRC/imagenet-1k; log in and accept its license first) or hf:<dir> for a
    local copy in the hub's parquet layout"""
    data_path: str | None = opt(None, group="data")
    """dataset root (holding train/ val/ for imagenet and inat; for imagefolder the class folders, or their
    parent with --split); hf:<repo id> here streams that hub dataset whatever --dataset_name says"""
    split: str | None = opt(None, group="data")
    """split folder under --data_path: train, val, ... (required for imagenet and inat); for hub datasets a
    split name (val is taken as validation where the dataset calls it so)"""
    take_every: int = opt(1, group="data")
    """keep every n-th image of the split, in dataset order (default: 1)"""
    max_images: int | None = opt(None, group="data")
    """stop after this many selected images (quick runs)"""
    skip_bad_images: bool = opt(False, group="data")
    """log and skip unreadable images (listed in the manifest) instead of stopping"""
    allow_nonfinite: bool = opt(False, group="data")
    """write NaN / inf values (counted in the manifest; readers refuse them unless they pass
    --allow_nonfinite too) instead of stopping at the first shard holding any"""
    batch_size: int = opt(64, group="run")
    """images per forward pass (default: %(default)s)"""
    num_workers: int = opt(4, group="run")
    """image-decoding worker processes (default: %(default)s; 0 decodes in the main process)"""
    autocast: str = opt("none", choices=AUTOCAST_CHOICES, group="run")
    """mixed-precision forward: fp16 or bf16 on a GPU, bf16 on a CPU (half the time where it has bf16
    instructions) (default: none = fp32)"""
    processor_backend: str = opt("pil", choices=["pil", "torchvision"], group="run")
    """image resizing of transformers models: pil (default; what the authors ran, transformers 4.46) or
    torchvision (transformers 5's default, about one grey level apart)"""
    shard_rows: int = opt(DEFAULT_SHARD_ROWS, group="run")
    """approximate rows per shard file (default: %(default)s)"""
    overwrite: bool = opt(False, group="run")
    """replace existing stores written with other settings (default: refuse; a store with the same settings
    is resumed or skipped)"""
    allow_missing_weights: bool = opt(False, group="run")
    """load a model whose checkpoint lacks weights its class expects (they stay randomly initialised;
    recorded in the manifest as missing_weights). Default: refuse such a checkpoint"""


@dataclass
class _StoreShard:
    """A store being written, and what its current shard has gathered so far. One subclass per
    store kind (``_SHARD_OF_KIND``), each with the same two methods: ``add`` one batch's captured
    activations, and ``payload``, the finished shard as its writer takes it; ``write`` hands it to
    the writer's ``write_shard`` (every store writer's one interface, with ``finalize``) and starts
    the next shard."""

    point: object
    writer: object
    tokens: object  # the token selection at a block; None at the pooled output
    todo: set  # the shards this process still writes
    rows: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def add(self, acts, good: list, valid) -> None:
        raise NotImplementedError

    def payload(self):
        """The shard's data as this kind's writer takes it (and forget it)."""
        raise NotImplementedError

    def write(self, idx: int, first: int, count: int, images_n2) -> None:
        self.writer.write_shard(idx, self.payload(), self._rows_n2(), first, count, self.skipped, images_n2)
        self.rows, self.skipped = [], []

    def _image_rows(self, good: list) -> None:
        import torch

        img = torch.as_tensor(good, dtype=torch.int64)
        self.rows.append(torch.stack([img, torch.full_like(img, -1)], 1).numpy())

    def _rows_n2(self):
        import numpy as np

        return np.concatenate(self.rows) if self.rows else np.zeros((0, 2), np.int64)


@dataclass
class _DenseShard(_StoreShard):
    """Activations (or embeddings) as rows: the selected tokens of each image, or its pooled output;
    a code store's writer encodes them with the SAE as it writes."""

    acts: list = field(default_factory=list)

    def add(self, acts, good, valid) -> None:
        import torch

        if self.tokens is None:
            rows = torch.stack([torch.as_tensor(good), torch.full((len(good),), -1)], 1)
        else:
            acts, rows = self.tokens.select(acts, good, valid)
        self.acts.append(acts.float().cpu().numpy())
        self.rows.append(rows.numpy())

    def payload(self):
        import numpy as np

        acts_nd = np.concatenate(self.acts) if self.acts else np.zeros((0, self.writer.input_dim), np.float32)
        self.acts = []
        return acts_nd


@dataclass
class _PooledCodesShard(_StoreShard):
    """SAE codes of every counted token, mean-pooled per image (mean_t encode(x_t), the authors'
    steering protocol), one sparse row per image."""

    encode: object = None  # rows -> codes
    acts: list = field(default_factory=list)

    def pooled(self, acts, valid):
        import torch

        from saevlm.sae.pooled import mean_codes

        counted = self.tokens.counted(valid, acts.shape[0], acts.shape[1])
        with torch.no_grad():
            return mean_codes(acts.float(), self.encode, valid_bt=None if counted is None else counted.to(acts.device))

    def add(self, acts, good, valid) -> None:
        from saevlm.data.codes import dense_to_csr

        self.acts.append(dense_to_csr(self.pooled(acts, valid)))
        self._image_rows(good)

    def payload(self):
        from saevlm.data.codes import CSRParts

        parts, self.acts = CSRParts(self.acts), []
        return parts


@dataclass
class _PooledTopKShard(_PooledCodesShard):
    """The running top-k images per latent of the mean-pooled codes (a top-images store): each
    shard's own top-k is written, and merged when all shards are in."""

    selected: object = None  # the selected images' dataset indices (a batch's rows are positions in it)
    new_top_k: object = None  # () -> an empty RunningTopK
    top_k: object = None

    def add(self, acts, good, valid) -> None:
        import numpy as np

        if self.top_k is None:
            self.top_k = self.new_top_k()
        self.top_k.update_rows(np.searchsorted(self.selected, np.asarray(good)), self.pooled(acts, valid))
        self._image_rows(good)

    def payload(self):
        top_k, self.top_k = self.top_k or self.new_top_k(), None
        return top_k.partial()  # (rows [k, K], values [k, K])


# the kind of store a point writes: activations (or embeddings) without an SAE; with one, a code store
# of token rows (the writer encodes), of mean-pooled token codes, or their running top-k of images
_SHARD_OF_KIND = {"activations": _DenseShard, "codes": _DenseShard, "pooled_codes": _PooledCodesShard,
                  "pooled_top_k": _PooledTopKShard}


def _check_settings(cfg: ExtractionSettings, sae, tokens, points, num_images: int) -> None:
    """The settings that cannot work, refused before any model or image is read."""
    from saevlm.models.base import POST_PROJECTION

    if cfg.batch_size < 1:
        raise UserError(f"batch_size {cfg.batch_size}: expected a positive integer", field="batch_size")
    if cfg.shard_rows < 1:
        raise UserError(f"shard_rows {cfg.shard_rows}: expected a positive integer", field="shard_rows")
    if cfg.top_k is not None:
        if sae is None or tokens.mode != "mean" or any(p.attachment_point == POST_PROJECTION for p in points):
            raise UserError("top_k: only with --sae_path and --mean_pool at a block (a running top-k of images "
                            "per latent of the mean-pooled codes); for other stores run `saevlm top-images`", field="top_k")
        if not 1 <= cfg.top_k <= num_images:
            raise UserError(f"top_k {cfg.top_k}: expected 1..{num_images} (the number of images)", field="top_k")


def _pending_stores(points, writers: dict, plan, log) -> list[_StoreShard]:
    """A shard buffer of its store's kind for every store not complete yet (said when resumed)."""
    from saevlm.models.base import POST_PROJECTION

    pending: list[_StoreShard] = []
    for point in points:
        writer = writers[point]
        if writer.already_complete:
            if plan.dist.is_main:
                log(f"{plan.output_dirs[point]}: complete already, skipped")
            continue
        if writer.images_done and plan.dist.is_main:
            log(f"{plan.output_dirs[point]}: resuming after {writer.images_done}/{plan.num_images} images")
        kind, sae, extra = _store_kind(point, plan), plan.sae, {}
        if kind in ("pooled_codes", "pooled_top_k"):
            from saevlm.sae.inference import encode_batch
            extra["encode"] = lambda x: encode_batch(sae, x)
        if kind == "pooled_top_k":
            from saevlm.sae.pooled import RunningTopK
            extra.update(selected=plan.selected,
                         new_top_k=lambda: RunningTopK(sae.dict_size, plan.cfg.top_k, device=plan.device))
        tokens = None if point.attachment_point == POST_PROJECTION else plan.tokens
        pending.append(_SHARD_OF_KIND[kind](point, writer, tokens, {i for i, _, _ in writer.shard_ranges()}, **extra))
    return pending


def _store_kind(point, plan) -> str:
    from saevlm.models.base import POST_PROJECTION

    if plan.sae is None:
        return "activations"
    if plan.cfg.top_k is not None:
        return "pooled_top_k"  # checked: only at a block with --mean_pool
    if plan.tokens.mode == "mean" and point.attachment_point != POST_PROJECTION:
        return "pooled_codes"
    return "codes"


def _run_option_default(name: str):
    """A run setting's default, written once: the ImageRunOptions flag's."""
    return next(f.default for f in dataclasses.fields(ImageRunOptions) if f.name == name)


# the settings that are ImageRunOptions flags of the same name (copied by ExtractionSettings.from_config)
_SHARED_RUN_OPTIONS = ("batch_size", "num_workers", "autocast", "skip_bad_images", "shard_rows", "overwrite",
                       "take_every", "max_images", "allow_nonfinite")


@dataclass(frozen=True)
class ExtractionSettings:
    """How ``extract`` / ``embed`` write their stores: the run settings, typed (build it in
    Python, or from a command's config with :meth:`from_config`). What is read (model, images, hook
    points, token selection) is passed to :func:`extract_stores` beside it. The settings that are
    flags take their defaults from the flags (:class:`ImageRunOptions`)."""

    kind: str = "activations"  # activations | embeddings (codes: pass an SAE)
    batch_size: int = _run_option_default("batch_size")
    num_workers: int = _run_option_default("num_workers")
    store_dtype: str = "float32"
    autocast: str = _run_option_default("autocast")
    skip_bad_images: bool = _run_option_default("skip_bad_images")
    shard_rows: int = _run_option_default("shard_rows")
    overwrite: bool = _run_option_default("overwrite")
    progress: bool = True
    take_every: int = _run_option_default("take_every")
    max_images: int | None = _run_option_default("max_images")
    allow_mismatch: bool = False
    allow_nonfinite: bool = _run_option_default("allow_nonfinite")
    top_k: int | None = None  # with an SAE and mean-pooled tokens: a top-images store of the k best images

    def __post_init__(self) -> None:
        from saevlm.data.store import normalize_store_dtype

        # "fp32" / "bf16" (the flags' spelling) or numpy's names
        object.__setattr__(self, "store_dtype", normalize_store_dtype(self.store_dtype, "store_dtype"))

    @classmethod
    def from_config(cls, args: "ImageRunOptions", kind: str, store_dtype: str) -> "ExtractionSettings":
        return cls(kind=kind, store_dtype=store_dtype, progress=not args.no_progress,
                   allow_mismatch=getattr(args, "allow_mismatch", False), top_k=getattr(args, "top_k", None),
                   **{name: getattr(args, name) for name in _SHARED_RUN_OPTIONS})


@dataclass
class _WriterPlan:
    """What every store of one extraction shares (the writers' common arguments)."""

    encoder: object
    tokens: object
    num_tokens: int | None
    dataset: "DatasetInfo"
    images_per_shard: int
    num_images: int
    software: dict
    extra_files: dict
    extra_json: dict
    output_dirs: dict
    cfg: ExtractionSettings
    sae: object
    device: object
    dist: object
    selected: object  # the selected images' dataset indices, in order
    output_field: str = "output_dir"  # the config field the output directories came from (for messages)


def extract_stores(encoder, images, selected, points, tokens, cfg: ExtractionSettings, *, output_dirs: dict,
                   device, log=print, sae=None, dist=None, output_field: str = "output_dir") -> dict:
    """Write one store per point; returns ``{point: store_dir}``. See module docstring.

    With ``sae`` (a LoadedSAE; exactly one point), the store is a sparse code store instead.
    Under torchrun (``dist``), each process computes its own shards (see StoreWriter) and rank 0
    marks the stores complete once all are done.
    """
    batch_size, shard_rows = cfg.batch_size, cfg.shard_rows
    from saevlm.distributed import Dist, barrier

    dist = dist or Dist()

    from saevlm.device import autocast_context
    from saevlm.models.base import POST_PROJECTION

    _check_settings(cfg, sae, tokens, points, len(selected))
    autocast_ctx = autocast_context(device, cfg.autocast)  # validates before any work
    encoder.to(device)

    num_tokens = None
    if tokens.mode in ("all", "patches") and any(p.attachment_point != POST_PROJECTION for p in points):
        num_tokens = _probe_num_tokens(encoder, images, selected, points, device)

    # One shard size for every store of the run (the smallest), so that a shard index names the
    # same images in every store and processes can split the work by shard.
    rows_per_point = [1 if p.attachment_point == POST_PROJECTION else tokens.rows_per_image(num_tokens or 0)
                      for p in points]
    images_per_shard = min(max(1, shard_rows // max(r, 1) // batch_size) * batch_size for r in rows_per_point)

    plan = _WriterPlan(encoder, tokens, num_tokens, images.provenance(selected, cfg.take_every, cfg.max_images),
                       images_per_shard, len(selected), _software_versions(), {A.LABELS: images.labels},
                       {A.CLASSES: images.classes_json()}, output_dirs, cfg, sae, device, dist, selected,
                       output_field)

    def open_writers() -> dict:
        return {p: _open_writer(p, plan) for p in points}

    # Rank 0 validates or creates every store's main manifest before the other ranks open them.
    writers = open_writers() if dist.is_main else {}
    barrier(dist)
    if not dist.is_main:
        writers = open_writers()
    try:
        pending = _pending_stores(points, writers, plan, log)

        _write_shards(pending, images, encoder, plan, autocast_ctx, log)
        barrier(dist)
        if dist.is_main:
            for s in pending:
                s.writer.finalize()
        barrier(dist)
    finally:  # the locks go even when a shard fails (e.g. refused NaN values)
        for w in writers.values():
            w.close()
    return {p: output_dirs[p] for p in points}


def _write_shards(pending: list[_StoreShard], images, encoder, plan, autocast_ctx, log) -> None:
    """Every shard this process still owes its stores: the images read once, each batch captured
    at all the points whose stores need that shard, each finished shard written by every store."""
    import numpy as np
    from tqdm import tqdm

    from saevlm.models.base import pixels_to

    cfg, device, dist, selected = plan.cfg, plan.device, plan.dist, plan.selected
    needed = sorted({r for s in pending for r in s.writer.shard_ranges()})
    if needed:
        positions = np.concatenate([np.arange(first, stop) for _, first, stop in needed])
        loader = images.batches(selected[positions], encoder.preprocess, cfg.batch_size, cfg.num_workers,
                                pin_memory=device.type == "cuda")
        desc = f"extract {len(pending)} point(s)" + (f" [rank {dist.rank}]" if dist.world_size > 1 else "")
        bar = tqdm(total=len(positions), unit="img", disable=not cfg.progress or not dist.is_main,
                   desc=desc, dynamic_ncols=True, file=sys.stderr)
        shard_no, consumed, shard_hashes = 0, 0, []
        with bar:
            for good, pixels, bad, hashes in loader:
                idx, first, stop = needed[shard_no]
                n_in_batch = len(good) + len(bad)
                shard_hashes.extend(hashes)
                skipped = handle_bad_images(images, bad, cfg.skip_bad_images, log)
                active = [s for s in pending if idx in s.todo]
                if pixels is not None and active:
                    pixels = pixels_to(pixels, device, non_blocking=True)
                    with autocast_ctx:
                        out = encoder.capture(pixels, [s.point for s in active])
                    for s in active:
                        acts = out[s.point]
                        # registers and padding (None when every token counts)
                        valid = None if s.tokens is None else encoder.valid_tokens(pixels, acts.shape[1])
                        s.add(acts, good, valid)
                for s in active:
                    s.skipped.extend(skipped)
                consumed += n_in_batch
                bar.update(n_in_batch)
                if consumed > stop - first:
                    raise RuntimeError("a batch crossed a shard boundary")
                if consumed == stop - first:
                    images_n2 = np.asarray(shard_hashes, dtype=np.int64).reshape(-1, 2)
                    for s in active:
                        s.write(idx, first, stop - first, images_n2)
                    shard_no, consumed, shard_hashes = shard_no + 1, 0, []


def point_provenance(point, encoder, tokens, num_tokens, dataset: DatasetInfo, batch_size: int, autocast: str,
                     sae=None) -> Provenance:
    """What a store (or top-images folder) of one hook point records about where it came from."""
    from saevlm.data.manifest import HookInfo, ModelInfo, Provenance, RunInfo, TokenInfo
    from saevlm.models.base import POST_PROJECTION

    if point.attachment_point == POST_PROJECTION:
        token_prov = {"selection": "pooled"}
    else:
        fixed = num_tokens and not encoder.variable_tokens
        token_prov = {**tokens.describe(), **({"tokens_per_image": tokens.rows_per_image(num_tokens)} if fixed else {}),
                      **({"excluded_tokens": encoder.info["excluded_tokens"]}
                         if encoder.info.get("excluded_tokens") else {}),
                      **({"codes": "mean_t encode(x_t): the SAE encodes every token, codes mean-pooled"}
                         if sae is not None and tokens.mode == "mean" else {})}
    return Provenance(model=ModelInfo.from_json(encoder.provenance()),
                      hook=HookInfo(attachment_point=point.attachment_point, layer=point.layer),
                      tokens=TokenInfo.from_json(token_prov), dataset=dataset,
                      run=RunInfo(batch_size=batch_size, autocast=autocast))


def _open_writer(point, plan: _WriterPlan):
    from saevlm.data.writer import StoreWriter

    cfg = plan.cfg
    provenance = point_provenance(point, plan.encoder, plan.tokens, plan.num_tokens, plan.dataset,
                                  cfg.batch_size, cfg.autocast, plan.sae)
    common = dict(images_per_shard=plan.images_per_shard, num_images=plan.num_images, software=plan.software,
                  overwrite=cfg.overwrite, extra_files=plan.extra_files, extra_json=plan.extra_json,
                  rank=plan.dist.rank, world_size=plan.dist.world_size, allow_nonfinite=cfg.allow_nonfinite,
                  field=plan.output_field)
    kind = _store_kind(point, plan)
    if kind == "activations":
        return StoreWriter(plan.output_dirs[point], kind=cfg.kind, dim=plan.encoder.output_dim(point),
                           dtype=cfg.store_dtype, provenance=provenance, **common)
    from saevlm.data.codes import CodeStoreWriter
    from saevlm.data.topimages import TopImagesWriter
    from saevlm.sae.apply import check_sae_matches, code_provenance, make_encoder
    check_sae_matches(plan.sae, provenance, plan.encoder.output_dim(point), cfg.allow_mismatch,
                      f"--model_name {plan.encoder.name} at {point.slug}")
    if kind == "pooled_top_k":
        return TopImagesWriter(plan.output_dirs[point], k=cfg.top_k, dim=plan.sae.dict_size, selected=plan.selected,
                               provenance=code_provenance(provenance, plan.sae), **common)
    return CodeStoreWriter(plan.output_dirs[point], encode=make_encoder(plan.sae, plan.device),
                           input_dim=plan.encoder.output_dim(point), kind="codes", dim=plan.sae.dict_size,
                           dtype="fp32", provenance=code_provenance(provenance, plan.sae), **common)


def handle_bad_images(images, bad, skip: bool, log) -> list[dict]:
    records = []
    for index, err in bad:
        path = images.path(index)  # in words, for hub datasets
        if not skip:
            raise UserError(f"unreadable image {path} (dataset index {index}): {err}. Fix or remove "
                            f"it, or rerun with --skip_bad_images to log it and leave it out "
                            f"(recorded in the manifest)")
        log(f"warning: skipping unreadable image {path} (dataset index {index}): {err}")
        records.append({"index": int(index), "path": images.name_of(index), "error": err})
    return records


def _probe_num_tokens(encoder, images, selected, points, device) -> int:
    """Tokens per image at the block points, from one image (for sizing all-token shards)."""
    from saevlm.data.images import ImageDataset
    from saevlm.models.base import POST_MLP_RESIDUAL, batch_of_one, pixels_to

    ds = ImageDataset(images, selected[:1], encoder.preprocess)
    _, pixels, err, _ = ds[0]
    if err is not None:
        raise UserError(f"unreadable image {images.path(int(selected[0]))}: {err}")
    block = [p for p in points if p.attachment_point == POST_MLP_RESIDUAL][:1]
    pixels = pixels_to(batch_of_one(pixels), device)
    t = int(encoder.capture(pixels, block)[block[0]].shape[1])
    valid = encoder.valid_tokens(pixels, t)
    if valid is None or encoder.variable_tokens:  # NaFlex: at most t valid tokens per image
        return t
    return int(valid[0].sum())  # e.g. DINOv3: the register tokens are not stored


def _software_versions() -> dict:
    import importlib.metadata as md

    import saevlm

    out = {"saevlm": saevlm.__version__}
    for pkg in ("torch", "transformers", "open_clip_torch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class RunInputs:
    """What ``extract`` and ``embed`` validate and load before any work, cheapest checks first."""

    device: object
    store_dtype: str
    images: object
    selected: object
    encoder: object
    dist: object


def precheck_output_manifests(store_dirs, field: str, overwrite: bool) -> None:
    """A damaged manifest in a store this command would write is refused BEFORE the model loads
    (it used to surface only after 10-20 s of loading)."""
    import json

    if overwrite:
        return
    for d in store_dirs:
        m = Path(d) / A.MANIFEST
        if not m.is_file():
            continue
        try:
            ok = isinstance(json.loads(m.read_text()), dict)
        except (OSError, ValueError) as e:
            raise UserError(f"{field} {d}: its manifest.json is damaged ({str(e).splitlines()[0][:120]}); pass "
                            f"--overwrite to replace the store", field=field) from None
        if not ok:
            raise UserError(f"{field} {d}: its manifest.json is damaged (not a store manifest); pass --overwrite "
                            f"to replace the store", field=field)


def planned_store_dirs(output_dir, layers, codes: bool) -> list[Path]:
    """The store folders ``extract`` will write for these --layer values, as far as they are known
    without the model (non-negative blocks and 'last')."""
    out, suffix = Path(output_dir), "_codes" if codes else ""
    dirs = []
    for raw in layers or []:
        if str(raw).lower() in ("last", "proj", "projection"):
            dirs.append(out / f"post_projection{suffix}")
        elif str(raw).lstrip("+").isdigit():
            dirs.append(out / f"post_mlp_residual_{int(raw)}{suffix}")
    return dirs


def prepare_inputs(args: ImageRunOptions, output: tuple[str, str] | None = None) -> RunInputs:
    """The dataset, the selected images and the model of a run. ``output`` (path, field): checked
    writable once the dataset has been found and before the model loads (minutes for a 7B tower)."""
    from saevlm.data.images import open_dataset, select_indices
    from saevlm.data.store import normalize_store_dtype
    from saevlm.distributed import init_distributed
    from saevlm.models import load_encoder

    if args.num_workers < 0:
        raise UserError(f"num_workers {args.num_workers}: expected 0 (decode in the main process) or more", field="num_workers")
    if args.batch_size < 1:
        raise UserError(f"batch_size {args.batch_size}: expected a positive integer", field="batch_size")
    dist, device = init_distributed(args.device)
    if device.type == "cpu" and args.num_workers > 0:
        from saevlm.threads import configure_threads
        configure_threads(workers=args.num_workers)  # leave the decoding workers their cores
    store_dtype = normalize_store_dtype(args.store_dtype, "store_dtype")
    images = open_dataset(args.dataset_name, args.data_path, args.split)
    selected = select_indices(len(images), args.take_every, args.max_images)
    if output is not None:
        from saevlm.data.atomic import ensure_writable_dir
        ensure_writable_dir(output[0], output[1])
    encoder = load_encoder(args.model_name, processor_backend=args.processor_backend,
                           allow_missing_weights=args.allow_missing_weights)
    return RunInputs(device, store_dtype, images, selected, encoder, dist)


def report_stores(stores: dict, seconds: float, codes: bool = False, top_k: int | None = None) -> None:
    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore

    for point, path in stores.items():
        if top_k is not None:
            from saevlm.data.topimages import TopImagesStore
            t = TopImagesStore(path)
            print(f"wrote {path}: top_images_{top_k}.npy (+ _values, _kth_value) and hai_indices_{top_k}.npy "
                  f"for {t.dim} latents over {t.num_rows} images")
            continue
        s = CodeStore(path) if codes else ActivationStore(path)
        print(f"wrote {path}  ({s.num_rows} rows x {s.dim}, {s.dtype}, "
              f"{s.manifest.num_images} images)")
    print(f"done in {seconds:.1f} s")
