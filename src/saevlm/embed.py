"""``saevlm embed``: image embeddings for the Monosemanticity Score (arXiv 2504.02821).

The similarity encoder E of the MS: DINOv2 ``pooler_output`` (default, 768-d) or CLIP
``image_embeds`` (512-d for ViT-B/32). Flags follow the authors' ``encode_images.py``; the output
is a store (``kind: embeddings``, one row per image, fp32) with the same image order and
dataset provenance as ``extract`` writes, so later stages can refuse a mismatched pair.
Embeddings are stored raw; the MS normalises them (cosine similarity).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from saevlm.commandline import CommandConfig, opt
from saevlm.extraction import ExtractionSettings, ImageRunOptions, extract_stores, prepare_inputs, report_stores


@dataclass(frozen=True, kw_only=True)
class EmbedConfig(CommandConfig, ImageRunOptions):
    """`saevlm embed`: image embeddings (DINOv2 / CLIP) for the Monosemanticity Score."""

    COMMAND: ClassVar[str] = "embed"

    embeddings_path: str = opt()
    """output store directory for the embeddings"""
    model_name: str = opt('dinov2-base')
    """similarity encoder: dinov2-base (default, pooler_output), clip-vit-base-patch32 (image_embeds), a
    hub id or a local directory"""
    store_dtype: str = opt('fp32', flags=('--store_dtype', '--dtype'))
    """how embeddings are stored: fp32 | fp16 | bf16 (default: fp32; --dtype is the older name)"""


CONFIG = EmbedConfig


def run(args: EmbedConfig) -> int:
    from saevlm.data.atomic import check_not_own_input
    from saevlm.models.base import POST_PROJECTION, TokenSelection

    t0 = time.time()
    check_not_own_input(args.embeddings_path, "embeddings_path", [("data_path", args.data_path)])
    from saevlm.extraction import precheck_output_manifests
    precheck_output_manifests([args.embeddings_path], "embeddings_path", args.overwrite)
    inputs = prepare_inputs(args, output=(args.embeddings_path, "embeddings_path"))
    device, store_dtype, images, selected, encoder = (inputs.device, inputs.store_dtype, inputs.images,
                                                      inputs.selected, inputs.encoder)
    point = encoder.resolve(POST_PROJECTION, -1)
    print(f"embed: {args.model_name} on {images.name}/{images.split} ({len(selected)} images), "
          f"device: {device}", file=sys.stderr)
    cfg = ExtractionSettings.from_config(args, "embeddings", store_dtype)
    stores = extract_stores(encoder, images, selected, [point], TokenSelection("all"), cfg,
                            output_dirs={point: Path(args.embeddings_path)}, device=device,
                            log=lambda m: print(m, file=sys.stderr), dist=inputs.dist,
                            output_field="embeddings_path")
    if inputs.dist.is_main:
        report_stores(stores, time.time() - t0)
    return 0
