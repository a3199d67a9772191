"""``saevlm extract``: activations of a vision encoder at one or several hook points, into stores.

Flags follow the authors' ``save_activations.py``. All requested (point, layer) pairs come from
ONE forward pass per batch; with no ``post_projection`` requested, the pass stops after the
deepest requested block. One store per point: ``<output_dir>/post_mlp_residual_<l>/`` and
``<output_dir>/post_projection/``. Rerunning the same command resumes an interrupted run and
skips finished stores (byte-identical result: shard boundaries fall on batch boundaries).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from saevlm.device import AUTOCAST_CHOICES, DEVICE_HELP
from saevlm.errors import UserError

DEFAULT_SHARD_ROWS = 65536


def add_common_arguments(p: argparse.ArgumentParser, *, default_batch_size: int = 64) -> None:
    """Dataset, batching and device flags shared by ``extract`` and ``embed``."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", default="imagefolder",
                   help="imagenet | inat (iNaturalist 2021) | imagefolder (default: %(default)s)")
    g.add_argument("--data_path", required=True, help="dataset root (holding train/ val/ for "
                   "imagenet and inat; for imagefolder the class folders, or their parent with --split)")
    g.add_argument("--split", default=None, help="split folder under --data_path: train, val, ... "
                   "(required for imagenet and inat)")
    g.add_argument("--take_every", type=int, default=1,
                   help="keep every n-th image of the split, in dataset order (default: 1)")
    g.add_argument("--max_images", type=int, default=None,
                   help="stop after this many selected images (quick runs)")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="log and skip unreadable images (listed in the manifest) instead of stopping")
    g.add_argument("--allow_nonfinite", action="store_true",
                   help="write NaN / inf values (counted in the manifest; readers refuse them unless they "
                        "pass --allow_nonfinite too) instead of stopping at the first shard holding any")
    r = p.add_argument_group("run")
    r.add_argument("--batch_size", type=int, default=default_batch_size,
                   help="images per forward pass (default: %(default)s)")
    r.add_argument("--num_workers", type=int, default=4, help="image-decoding worker processes "
                   "(default: %(default)s; 0 decodes in the main process)")
    r.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    r.add_argument("--autocast", default="none", choices=AUTOCAST_CHOICES,
                   help="mixed-precision forward on GPU (default: none = fp32)")
    r.add_argument("--processor_backend", default="pil", choices=["pil", "torchvision"],
                   help="image resizing of transformers models: pil (default; what the authors ran, "
                        "transformers 4.46) or torchvision (transformers 5's default, about one grey level "
                        "apart)")
    r.add_argument("--shard_rows", type=int, default=DEFAULT_SHARD_ROWS,
                   help="approximate rows per shard file (default: %(default)s)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace existing stores written with other settings (default: refuse; "
                        "a store with the same settings is resumed or skipped)")
    r.add_argument("--no_progress", action="store_true", help="no progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model and hook points")
    m.add_argument("--model_name", required=True,
                   help="short name (clip-vit-large-patch14-336, siglip-so400m-patch14-384, "
                        "clip-vit-base-patch32, dinov2-base), hub id, local directory, or "
                        "open_clip:<arch>/<pretrained>")
    m.add_argument("--attachment_point", nargs="+", default=["post_mlp_residual"],
                   help="post_mlp_residual (block output) and/or post_projection (pooled, projected "
                        "output); several may be given (default: post_mlp_residual)")
    m.add_argument("--layer", nargs="+", default=None,
                   help="block indices for post_mlp_residual (negative counts from the end); "
                        "'last' adds post_projection. Several layers come from one forward pass. "
                        "The authors' '--attachment_point post_projection --layer -1' works as is")
    t = p.add_argument_group("token selection (block points; default: all tokens)")
    t.add_argument("--cls_only", action="store_true", help="the CLS token only (the MS experiments); "
                   "models without CLS (SigLIP) fall back to 2 random tokens")
    t.add_argument("--mean_pool", action="store_true", help="mean over all tokens (CLS included)")
    t.add_argument("--random_k", type=int, default=None,
                   help="k random distinct tokens per image, seeded by (--seed, image index)")
    t.add_argument("--seed", type=int, default=0, help="seed for --random_k (default: 0)")
    a = p.add_argument_group("SAE codes instead of activations (the authors' flow)")
    a.add_argument("--sae_path", default=None,
                   help="encode the activations of the (single) requested point with this SAE and "
                        "write a sparse code store <output_dir>/<point>_codes instead")
    a.add_argument("--sae_model", default=None,
                   help="expected SAE architecture (checked against the checkpoint's config; the "
                        "authors' matroyshka_batch_top_k spelling is accepted)")
    a.add_argument("--top_k", type=int, default=None,
                   help="with --sae_path and --mean_pool: keep only a running top-k of images per latent "
                        "(top_images_<k>.npy and the authors' hai_indices_<k>.npy) instead of a code store; "
                        "at ImageNet-train size the pooled codes would not fit on disk (the paper's steering "
                        "protocol uses 16)")
    a.add_argument("--allow_mismatch", action="store_true",
                   help="use an SAE trained on another model or hook point")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", required=True, help="one store per point is written under it")
    o.add_argument("--store_dtype", "--dtype", dest="store_dtype", default="fp32",
                   help="how activations are stored: fp32 | fp16 | bf16 (default: fp32; --dtype is the "
                        "older name). The forward pass's precision is --autocast")
    o.add_argument("--save_every", type=int, default=None,
                   help="accepted for the authors' commands (their images per .pt part); saevlm's shards "
                        "are sized by --shard_rows and the value changes nothing")
    add_common_arguments(p)


def parse_points(encoder, attachment_points: Sequence[str], layers: Sequence[str] | None):
    """Flags -> resolved HookPoints (deduplicated, ordered)."""
    from saevlm.models.base import ATTACHMENT_POINTS, POST_MLP_RESIDUAL, POST_PROJECTION

    for ap in attachment_points:
        if ap not in ATTACHMENT_POINTS:
            raise UserError(f"--attachment_point {ap!r}: unknown; expected one of "
                            f"{', '.join(ATTACHMENT_POINTS)}")
    int_layers: list[int] = []
    want_projection = POST_PROJECTION in attachment_points
    for raw in layers or []:
        if str(raw).lower() in ("last", "proj", "projection"):
            want_projection = True
            continue
        try:
            int_layers.append(int(raw))
        except ValueError:
            raise UserError(f"--layer {raw!r}: expected integers (or 'last' for the projection)") from None
    points = []
    if POST_MLP_RESIDUAL in attachment_points:
        if not int_layers and not (want_projection and layers):
            raise UserError(f"--layer: required with --attachment_point {POST_MLP_RESIDUAL} "
                            f"(block indices; the model has {encoder.num_layers} blocks)")
        points += [encoder.resolve(POST_MLP_RESIDUAL, layer) for layer in int_layers]
    elif int_layers and any(layer != -1 for layer in int_layers):
        raise UserError(f"--layer {' '.join(map(str, int_layers))}: block layers need "
                        f"--attachment_point {POST_MLP_RESIDUAL}; {POST_PROJECTION} takes --layer -1 or none")
    if want_projection:
        points.append(encoder.resolve(POST_PROJECTION, -1))
    return list(dict.fromkeys(points))


@dataclass
class _PendingStore:
    """A store being written: its writer and the rows buffered for its current shard."""

    point: object
    writer: object
    tokens: object
    todo: set
    acts: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    pool_encode: object = None  # SAE codes mean-pooled over tokens: encode(rows) -> codes


def extract_stores(encoder, images, selected, points, tokens, *, output_dirs: dict, kind: str,
                   batch_size: int, num_workers: int, store_dtype: str, device, autocast: str = "none",
                   skip_bad_images: bool = False, shard_rows: int = DEFAULT_SHARD_ROWS,
                   overwrite: bool = False, progress: bool = True, take_every: int = 1,
                   max_images: int | None = None, log=print, sae=None,
                   allow_mismatch: bool = False, dist=None, allow_nonfinite: bool = False) -> dict:
    """Write one store per point; returns ``{point: store_dir}``. See module docstring.

    With ``sae`` (a LoadedSAE; exactly one point), the store is a sparse code store instead.
    Under torchrun (``dist``), each process computes its own shards (see StoreWriter) and rank 0
    marks the stores complete once all are done.
    """
    from saevlm.distributed import Dist, barrier

    dist = dist or Dist()
    import numpy as np
    import torch
    from tqdm import tqdm

    from saevlm.data.codes import dense_to_csr
    from saevlm.data.images import ImageDataset, collate_images
    from saevlm.device import autocast_context
    from saevlm.models.base import POST_PROJECTION
    from saevlm.sae.pooled import mean_codes

    if batch_size < 1:
        raise UserError(f"--batch_size {batch_size}: expected a positive integer")
    if shard_rows < 1:
        raise UserError(f"--shard_rows {shard_rows}: expected a positive integer")
    autocast_ctx = autocast_context(device, autocast)  # validates before any work
    encoder.to(device)
    software = _software_versions()
    dataset_prov = images.provenance(selected, take_every, max_images)
    extra_files = {"labels.npy": images.labels}
    extra_json = {"classes.json": images.classes_json()}

    num_tokens = None
    if tokens.mode == "all" and any(p.attachment_point != POST_PROJECTION for p in points):
        num_tokens = _probe_num_tokens(encoder, images, selected, points, device)

    # One shard size for every store of the run (the smallest), so that a shard index names the
    # same images in every store and processes can split the work by shard.
    rows_per_point = [1 if p.attachment_point == POST_PROJECTION else tokens.rows_per_image(num_tokens or 0)
                      for p in points]
    images_per_shard = min(max(1, shard_rows // max(r, 1) // batch_size) * batch_size for r in rows_per_point)

    def open_writers() -> dict:
        return {p: _open_writer(p, encoder, tokens, num_tokens, dataset_prov, batch_size, autocast,
                                images_per_shard, selected, software, overwrite, extra_files, extra_json,
                                output_dirs, kind, store_dtype, sae, allow_mismatch, device, dist,
                                allow_nonfinite)
                for p in points}

    # Rank 0 validates or creates every store's main manifest before the other ranks open them.
    writers = open_writers() if dist.is_main else {}
    barrier(dist)
    if not dist.is_main:
        writers = open_writers()
    try:
        pending: list[_PendingStore] = []
        for point in points:
            writer = writers[point]
            if writer.already_complete:
                if dist.is_main:
                    log(f"{output_dirs[point]}: complete already, skipped")
                continue
            if writer.images_done and dist.is_main:
                log(f"{output_dirs[point]}: resuming after {writer.images_done}/{len(selected)} images")
            pooled_codes = (sae is not None and tokens.mode == "mean"
                            and point.attachment_point != POST_PROJECTION)
            pool_encode = None
            if pooled_codes:
                from saevlm.sae.registry import encode_batch
                pool_encode = lambda x: encode_batch(sae, x)  # noqa: E731
            pending.append(_PendingStore(point, writer, None if point.attachment_point == POST_PROJECTION
                                         else tokens, {i for i, _, _ in writer.shard_ranges()},
                                         pool_encode=pool_encode))

        needed = sorted({r for s in pending for r in s.writer.shard_ranges()})
        if needed:
            positions = np.concatenate([np.arange(first, stop) for _, first, stop in needed])
            loader = torch.utils.data.DataLoader(
                ImageDataset(images, selected[positions], encoder.preprocess), batch_size=batch_size,
                shuffle=False, num_workers=num_workers, collate_fn=collate_images,
                pin_memory=device.type == "cuda", persistent_workers=False)
            desc = f"extract {len(pending)} point(s)" + (f" [rank {dist.rank}]" if dist.world_size > 1 else "")
            bar = tqdm(total=len(positions), unit="img", disable=not progress or not dist.is_main,
                       desc=desc, dynamic_ncols=True, file=sys.stderr)
            shard_no, consumed, shard_hashes = 0, 0, []
            with bar:
                for good, pixels, bad, hashes in loader:
                    idx, first, stop = needed[shard_no]
                    n_in_batch = len(good) + len(bad)
                    shard_hashes.extend(hashes)
                    skipped = _handle_bad(images, bad, skip_bad_images, log)
                    active = [s for s in pending if idx in s.todo]
                    if pixels is not None and active:
                        with autocast_ctx:
                            out = encoder.capture(pixels.to(device, non_blocking=True),
                                                  [s.point for s in active])
                        for s in active:
                            acts = out[s.point]
                            if s.pool_encode is not None:  # mean_t encode(x_t), the authors' protocol
                                with torch.no_grad():
                                    s.acts.append(dense_to_csr(mean_codes(acts.float(), s.pool_encode)))
                                img = torch.as_tensor(good, dtype=torch.int64)
                                s.rows.append(torch.stack([img, torch.full_like(img, -1)], 1).numpy())
                                continue
                            if s.tokens is None:
                                rows = torch.stack([torch.as_tensor(good), torch.full((len(good),), -1)], 1)
                            else:
                                acts, rows = s.tokens.select(acts, good)
                            s.acts.append(acts.float().cpu().numpy())
                            s.rows.append(rows.numpy())
                    for s in active:
                        s.skipped.extend(skipped)
                    consumed += n_in_batch
                    bar.update(n_in_batch)
                    if consumed > stop - first:
                        raise RuntimeError("a batch crossed a shard boundary")
                    if consumed == stop - first:
                        images_n2 = np.asarray(shard_hashes, dtype=np.int64).reshape(-1, 2)
                        for s in active:
                            rows_n2 = np.concatenate(s.rows) if s.rows else np.zeros((0, 2), np.int64)
                            if s.pool_encode is not None:
                                s.writer.write_shard_codes(idx, s.acts, rows_n2, first, stop - first, s.skipped,
                                                           images_n2)
                                s.acts, s.rows, s.skipped = [], [], []
                                continue
                            acts_nd = (np.concatenate(s.acts) if s.acts
                                       else np.zeros((0, s.writer.input_dim), np.float32))
                            s.writer.write_shard(idx, acts_nd, rows_n2, first, stop - first, s.skipped, images_n2)
                            s.acts, s.rows, s.skipped = [], [], []
                        shard_no, consumed, shard_hashes = shard_no + 1, 0, []
        barrier(dist)
        if dist.is_main:
            for s in pending:
                s.writer.finalize()
        barrier(dist)
    finally:  # the locks go even when a shard fails (e.g. refused NaN values)
        for w in writers.values():
            w.close()
    return {p: output_dirs[p] for p in points}


def point_provenance(point, encoder, tokens, num_tokens, dataset_prov: dict, batch_size: int, autocast: str,
                     sae=None) -> dict:
    """What a store (or top-images folder) of one hook point records about where it came from."""
    from saevlm.models.base import POST_PROJECTION

    if point.attachment_point == POST_PROJECTION:
        token_prov = {"selection": "pooled"}
    else:
        token_prov = {**tokens.describe(), **({"tokens_per_image": num_tokens} if num_tokens else {}),
                      **({"codes": "mean_t encode(x_t): the SAE encodes every token, codes mean-pooled"}
                         if sae is not None and tokens.mode == "mean" else {})}
    return {"model": encoder.provenance(),
            "hook": {"attachment_point": point.attachment_point, "layer": point.layer},
            "tokens": token_prov, "dataset": dataset_prov,
            "run": {"batch_size": batch_size, "autocast": autocast}}


def _open_writer(point, encoder, tokens, num_tokens, dataset_prov, batch_size, autocast, images_per_shard,
                 selected, software, overwrite, extra_files, extra_json, output_dirs, kind, store_dtype,
                 sae, allow_mismatch, device, dist, allow_nonfinite=False):
    from saevlm.data.store import StoreWriter

    provenance = point_provenance(point, encoder, tokens, num_tokens, dataset_prov, batch_size, autocast, sae)
    common = dict(images_per_shard=images_per_shard, num_images=len(selected), software=software,
                  overwrite=overwrite, extra_files=extra_files, extra_json=extra_json,
                  rank=dist.rank, world_size=dist.world_size, allow_nonfinite=allow_nonfinite)
    if sae is None:
        return StoreWriter(output_dirs[point], kind=kind, dim=encoder.output_dim(point),
                           dtype=store_dtype, provenance=provenance, **common)
    from saevlm.data.codes import CodeStoreWriter
    from saevlm.sae.encode import check_sae_matches, code_provenance, make_encoder
    check_sae_matches(sae, {**provenance, "_dim": encoder.output_dim(point)}, allow_mismatch,
                      f"--model_name {encoder.name} at {point.slug}")
    return CodeStoreWriter(output_dirs[point], encode=make_encoder(sae, device),
                           input_dim=encoder.output_dim(point), kind="codes", dim=sae.dict_size,
                           dtype="fp32", provenance=code_provenance(provenance, sae), **common)


def _handle_bad(images, bad, skip: bool, log) -> list[dict]:
    records = []
    for index, err in bad:
        path = images.path(index)
        if not skip:
            raise UserError(f"unreadable image {path} (dataset index {index}): {err}. Fix or remove "
                            f"it, or rerun with --skip_bad_images to log it and leave it out "
                            f"(recorded in the manifest)")
        log(f"warning: skipping unreadable image {path} (dataset index {index}): {err}")
        records.append({"index": int(index), "path": str(images.paths[index]), "error": err})
    return records


def _probe_num_tokens(encoder, images, selected, points, device) -> int:
    """Tokens per image at the block points, from one image (for sizing all-token shards)."""
    from saevlm.data.images import ImageDataset
    from saevlm.models.base import POST_MLP_RESIDUAL

    ds = ImageDataset(images, selected[:1], encoder.preprocess)
    _, pixels, err, _ = ds[0]
    if err is not None:
        raise UserError(f"unreadable image {images.path(int(selected[0]))}: {err}")
    block = [p for p in points if p.attachment_point == POST_MLP_RESIDUAL][:1]
    out = encoder.capture(pixels[None].to(device), block)
    return int(out[block[0]].shape[1])


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


def prepare_inputs(args: argparse.Namespace) -> RunInputs:
    from saevlm.data.images import open_dataset, select_indices
    from saevlm.data.store import normalize_store_dtype
    from saevlm.distributed import init_distributed
    from saevlm.models import load_encoder

    dist, device = init_distributed(args.device)
    store_dtype = normalize_store_dtype(args.store_dtype, "--store_dtype")
    images = open_dataset(args.dataset_name, args.data_path, args.split)
    selected = select_indices(len(images), args.take_every, args.max_images)
    encoder = load_encoder(args.model_name, processor_backend=args.processor_backend)
    return RunInputs(device, store_dtype, images, selected, encoder, dist)


def run(args: argparse.Namespace) -> int:
    from saevlm.models.base import token_selection_from_flags

    t0 = time.time()
    inputs = prepare_inputs(args)
    device, store_dtype, images, selected, encoder = (inputs.device, inputs.store_dtype, inputs.images,
                                                      inputs.selected, inputs.encoder)
    points = parse_points(encoder, args.attachment_point, args.layer)
    tokens = token_selection_from_flags(args.cls_only, args.mean_pool, args.random_k, args.seed,
                                        encoder.has_cls, args.model_name,
                                        lambda m: print(f"warning: {m}", file=sys.stderr))
    sae = None
    if args.sae_path:
        from saevlm.sae.registry import load_sae
        if len(points) != 1:
            raise UserError(f"--sae_path: an SAE reads one hook point, but {len(points)} were requested "
                            f"({', '.join(p.slug for p in points)})")
        from saevlm.sae.registry import canonical_arch
        expected = canonical_arch(args.sae_model) if args.sae_model else None
        sae = load_sae(args.sae_path, device=device)
        if expected and expected != sae.arch:
            raise UserError(f"--sae_model {args.sae_model}: the checkpoint {sae.path} is a {sae.arch} "
                            f"({sae.dict_class})")
    elif args.sae_model:
        raise UserError("--sae_model: given without --sae_path (the SAE to encode with)")
    if args.save_every is not None:
        print(f"note: --save_every {args.save_every} (the authors' images per .pt part) is accepted and "
              f"changes nothing: shards are sized by --shard_rows", file=sys.stderr)
    if args.top_k is not None and not (sae is not None and tokens.mode == "mean"):
        raise UserError("--top_k: only with --sae_path and --mean_pool (a running top-k of images per "
                        "latent of the mean-pooled codes); for other stores run `saevlm top-images`")
    out_root = Path(args.output_dir)
    suffix = "_codes" if sae is not None else ""
    output_dirs = {p: out_root / f"{p.slug}{suffix}" for p in points}
    if inputs.dist.world_size > 1:
        print(f"rank {inputs.dist.rank}/{inputs.dist.world_size} on {device}", file=sys.stderr)
    if args.top_k is not None:
        return _run_pooled_top_k(args, inputs, points[0], tokens, sae, output_dirs[points[0]], t0)
    print(f"extract: {args.model_name} ({encoder.num_layers} blocks) on {images.name}/{images.split} "
          f"({len(selected)} of {len(images)} images), points: "
          f"{', '.join(p.slug for p in points)}, tokens: {tokens.mode}, device: {device}",
          file=sys.stderr)
    stores = extract_stores(encoder, images, selected, points, tokens, output_dirs=output_dirs,
                            kind="activations", batch_size=args.batch_size,
                            num_workers=args.num_workers, store_dtype=store_dtype, device=device,
                            autocast=args.autocast, skip_bad_images=args.skip_bad_images,
                            shard_rows=args.shard_rows, overwrite=args.overwrite,
                            progress=not args.no_progress, take_every=args.take_every,
                            max_images=args.max_images,
                            log=lambda m: print(m, file=sys.stderr), sae=sae,
                            allow_mismatch=args.allow_mismatch, dist=inputs.dist,
                            allow_nonfinite=args.allow_nonfinite)
    if inputs.dist.is_main:
        _report_stores(stores, time.time() - t0, codes=sae is not None)
    return 0


def _run_pooled_top_k(args, inputs, point, tokens, sae, out_dir: Path, t0: float) -> int:
    """``--sae_path --mean_pool --top_k``: see :mod:`saevlm.sae.pooled`."""
    from saevlm.models.base import POST_PROJECTION
    from saevlm.sae.encode import check_sae_matches, code_provenance
    from saevlm.sae.pooled import extract_pooled_top_k

    if point.attachment_point == POST_PROJECTION:
        raise UserError("--top_k: the projection has one pooled vector per image; --mean_pool --top_k "
                        "applies to block outputs (token sequences)")
    if inputs.dist.world_size > 1:
        raise UserError("--top_k: runs in one process (the running top-k is not split across ranks); "
                        "launch without torchrun")
    enc = inputs.encoder
    provenance = point_provenance(point, enc, tokens, None,
                                  inputs.images.provenance(inputs.selected, args.take_every, args.max_images),
                                  args.batch_size, args.autocast, sae)
    check_sae_matches(sae, {**provenance, "_dim": enc.output_dim(point)}, args.allow_mismatch,
                      f"--model_name {enc.name} at {point.slug}")
    out = extract_pooled_top_k(enc, inputs.images, inputs.selected, point, sae, k=args.top_k,
                               output_dir=out_dir, provenance=code_provenance(provenance, sae),
                               batch_size=args.batch_size, num_workers=args.num_workers,
                               device=inputs.device, autocast=args.autocast,
                               skip_bad_images=args.skip_bad_images, overwrite=args.overwrite,
                               progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {out}: top_images_{args.top_k}.npy (+ _values, _kth_value) and hai_indices_{args.top_k}.npy "
          f"for {sae.dict_size} latents over {len(inputs.selected)} images")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def _report_stores(stores: dict, seconds: float, codes: bool = False) -> None:
    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore

    for point, path in stores.items():
        s = CodeStore(path) if codes else ActivationStore(path)
        print(f"wrote {path}  ({s.num_rows} rows x {s.dim}, {s.dtype}, "
              f"{s.manifest['num_images']} images)")
    print(f"done in {seconds:.1f} s")
