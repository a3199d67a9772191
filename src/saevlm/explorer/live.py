"""Model inference for the explorer, kept out of the page code: the run's vision model at the SAE's
hook plus the SAE, loaded once per SAE, giving per-patch activations of latents on an image (the
token overlays of the latent pages)."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LiveModel:
    """The vision model, the SAE and the hook point the store's codes were read at."""

    encoder: Any
    sae: Any
    point: Any
    # one forward pass at a time: the model is shared by every request of the server
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def patch_codes(self, image, side: int):
        """(the image as shown, square ``side`` px; codes [grid_h, grid_w, K] of its patch tokens)."""
        import torch

        from saevlm.models.base import batch_of_one
        from saevlm.sae.inference import encode_batch

        encoder = self.encoder
        im = image.convert("RGB")
        batch = batch_of_one(encoder.preprocess(im))
        shapes = batch["spatial_shapes"] if isinstance(batch, dict) and "spatial_shapes" in batch else None
        if shapes is not None:  # NaFlex: the whole image, resized to its own patch grid
            base = im.resize((side, side))
        else:
            square = min(im.size)
            left, top = (im.width - square) // 2, (im.height - square) // 2
            base = im.crop((left, top, left + square, top + square)).resize((side, side))
        with self.lock, torch.no_grad():
            acts = encoder.capture(batch, [self.point])[self.point][0].float()
            valid = encoder.valid_tokens(batch, acts.shape[0])
            codes = encode_batch(self.sae, acts).cpu().numpy()
        if valid is not None:  # registers and padding are not image patches
            keep = valid[0].cpu().numpy().astype(bool)
            keep[0] = keep[0] and not encoder.has_cls
            codes = codes[keep]
        elif encoder.has_cls:
            codes = codes[1:]
        if shapes is not None:
            codes = codes.reshape(int(shapes[0][0]), int(shapes[0][1]), -1)
        else:
            grid = int(np.sqrt(len(codes)))
            codes = codes[len(codes) - grid * grid:].reshape(grid, grid, -1)
        return base, codes


def load_live_model(provenance, images_available: bool) -> tuple[LiveModel | None, str]:
    """(the model, "") when per-patch activations can be computed for this store, else (None, why)."""
    tokens = provenance.tokens.selection
    if tokens in (None, "cls", "pooled") or provenance.hook.attachment_point != "post_mlp_residual":
        return None, (f"Not applicable: this SAE reads one vector per image ({tokens}), so there is no "
                      f"per-patch activation.")
    if not images_available:
        return None, "No overlay: the store's images are not available."
    sae = provenance.sae
    if sae is None or not sae.path or not Path(sae.path).exists():
        return None, "No overlay: the SAE checkpoint recorded in the codes' provenance was not found."
    try:
        from saevlm.models import load_encoder
        from saevlm.sae.checkpoint import load_sae

        encoder = load_encoder(provenance.model.source or provenance.model.name or "", warn=lambda m: None)
        point = encoder.resolve(provenance.hook.attachment_point, provenance.hook.layer)
        loaded = load_sae(sae.path)
    except Exception as err:  # noqa: BLE001 - a missing model skips overlays, never the page
        return None, (f"No overlay: this SAE reads {tokens} tokens, and drawing its activation on the "
                      f"patches needs the vision model {provenance.model.source!r}, which could not be loaded "
                      f"here ({type(err).__name__}: {str(err).splitlines()[0][:160]}).")
    return LiveModel(encoder, loaded, point), ""


def heatmap_jpeg(base, a_hw: np.ndarray, scale: float) -> bytes:
    """``base`` with ``a_hw`` (one latent's activation per patch) in red, full red at ``scale``."""
    from PIL import Image

    side = base.width
    heat = Image.fromarray((np.clip(a_hw / scale, 0, 1) * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    red = Image.new("RGB", (side, side), (230, 20, 20))
    out = Image.composite(red, base, heat.point(lambda v: int(v * 0.75)))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
