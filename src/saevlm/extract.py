"""``saevlm extract``: activations of a vision encoder at one or several hook points, into stores.

Flags follow the authors' ``save_activations.py``. All requested (point, layer) pairs come from
ONE forward pass per batch; with no ``post_projection`` requested, the pass stops after the
deepest requested block. One store per point: ``<output_dir>/post_mlp_residual_<l>/`` and
``<output_dir>/post_projection/``. Rerunning the same command resumes an interrupted run and
skips finished stores (byte-identical result: shard boundaries fall on batch boundaries).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from saevlm.commandline import CommandConfig, opt
from saevlm.errors import UserError
from saevlm.extraction import ExtractionSettings, ImageRunOptions, extract_stores, prepare_inputs, report_stores


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(CommandConfig, ImageRunOptions):
    """`saevlm extract`: activations of a vision encoder at hook points -> stores."""

    COMMAND: ClassVar[str] = "extract"

    model_name: str = opt(group='model and hook points')
    """short name (clip-vit-large-patch14-336, siglip-so400m-patch14-384, aimv2-large-patch14-224,
    webssl-mae300m-full2b-224, dinov3-vitb16, siglip2-so400m-patch16-naflex, ...), hub id, local directory, or
    open_clip:<arch>/<pretrained>. CLIP, SigLIP, SigLIP2, DINOv2, DINOv3, AIMv2 and ViT/ViT-MAE encoders; an MLLM
    (LLaVA-1.5 / NeXT / OneVision, Qwen2.5-VL, Gemma-3) gives its vision tower, as steering will see it"""
    attachment_point: list[str] = opt(['post_mlp_residual'], group='model and hook points')
    """post_mlp_residual (block output) and/or post_projection (pooled, projected output); several may be
    given (default: post_mlp_residual)"""
    layer: list[str] | None = opt(None, group='model and hook points')
    """block indices for post_mlp_residual (negative counts from the end); 'last' adds post_projection.
    Several layers come from one forward pass. The authors' '--attachment_point post_projection --layer
    -1' works as is"""
    cls_only: bool = opt(False, group='token selection (block points; default: all tokens)')
    """the CLS token only (the MS experiments); models without CLS (SigLIP) fall back to 2 random tokens"""
    mean_pool: bool = opt(False, group='token selection (block points; default: all tokens)')
    """mean over all tokens (CLS included)"""
    random_k: int | None = opt(None, group='token selection (block points; default: all tokens)')
    """k random distinct tokens per image, seeded by (--seed, image index)"""
    patches_only: bool = opt(False, group='token selection (block points; default: all tokens)')
    """every patch token: all tokens but CLS and register tokens (what saev's and visaebench's SAEs are
    trained on; see saevlm import-sae); with --mean_pool, the mean over the patches alone"""
    seed: int = opt(0, group='token selection (block points; default: all tokens)')
    """seed for --random_k (default: 0)"""
    sae_path: str | None = opt(None, group="SAE codes instead of activations (the authors' flow)")
    """encode the activations of the (single) requested point with this SAE and write a sparse code store
    <output_dir>/<point>_codes instead"""
    sae_model: str | None = opt(None, group="SAE codes instead of activations (the authors' flow)")
    """expected SAE architecture (checked against the checkpoint's config; the authors'
    matroyshka_batch_top_k spelling is accepted)"""
    top_k: int | None = opt(None, group="SAE codes instead of activations (the authors' flow)")
    """with --sae_path and --mean_pool: keep only a running top-k of images per latent (top_images_<k>.npy
    and the authors' hai_indices_<k>.npy) instead of a code store; at ImageNet-train size the pooled
    codes would not fit on disk (the paper's steering protocol uses 16)"""
    allow_mismatch: bool = opt(False, group="SAE codes instead of activations (the authors' flow)")
    """use an SAE trained on another model or hook point"""
    output_dir: str = opt(group='output')
    """one store per point is written under it"""
    store_dtype: str = opt('fp32', flags=('--store_dtype', '--dtype'), group='output')
    """how activations are stored: fp32 | fp16 | bf16 (default: fp32; --dtype is the older name). The
    forward pass's precision is --autocast"""
    save_every: int | None = opt(None, group='output')
    """accepted for the authors' commands (their images per .pt part); saevlm's shards are sized by
    --shard_rows and the value changes nothing"""


CONFIG = ExtractConfig


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


def run(args: ExtractConfig) -> int:
    from saevlm.data.atomic import check_not_own_input
    from saevlm.models.base import token_selection_from_flags

    t0 = time.time()
    check_not_own_input(args.output_dir, "output_dir", [("data_path", args.data_path),
                                                          ("sae_path", args.sae_path)])
    from saevlm.extraction import planned_store_dirs, precheck_output_manifests
    precheck_output_manifests(planned_store_dirs(args.output_dir, args.layer, bool(args.sae_path)), "output_dir",
                              args.overwrite)
    inputs = prepare_inputs(args, output=(args.output_dir, "output_dir"))
    device, store_dtype, images, selected, encoder = (inputs.device, inputs.store_dtype, inputs.images,
                                                      inputs.selected, inputs.encoder)
    points = parse_points(encoder, args.attachment_point, args.layer)
    tokens = token_selection_from_flags(args.cls_only, args.mean_pool, args.random_k, args.seed,
                                        encoder.has_cls, args.model_name,
                                        lambda m: print(f"warning: {m}", file=sys.stderr),
                                        patches_only=args.patches_only)
    sae = None
    if args.sae_path:
        from saevlm.sae.checkpoint import load_sae
        if len(points) != 1:
            raise UserError(f"--sae_path: an SAE reads one hook point, but {len(points)} were requested "
                            f"({', '.join(p.slug for p in points)})")
        from saevlm.sae.archs import canonical_arch
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
    out_root = Path(args.output_dir)
    suffix = "_codes" if sae is not None else ""
    output_dirs = {p: out_root / f"{p.slug}{suffix}" for p in points}
    for out_dir in output_dirs.values():
        check_not_own_input(out_dir, "output_dir", [("data_path", args.data_path), ("sae_path", args.sae_path)])
    if inputs.dist.world_size > 1:
        print(f"rank {inputs.dist.rank}/{inputs.dist.world_size} on {device}", file=sys.stderr)
    print(f"extract: {args.model_name} ({encoder.num_layers} blocks) on {images.name}/{images.split} "
          f"({len(selected)} of {len(images)} images), points: "
          f"{', '.join(p.slug for p in points)}, tokens: {tokens.mode}, device: {device}",
          file=sys.stderr)
    cfg = ExtractionSettings.from_config(args, "activations", store_dtype)
    stores = extract_stores(encoder, images, selected, points, tokens, cfg, output_dirs=output_dirs,
                            device=device, log=lambda m: print(m, file=sys.stderr), sae=sae, dist=inputs.dist)
    if inputs.dist.is_main:
        report_stores(stores, time.time() - t0, codes=sae is not None, top_k=args.top_k)
    return 0
