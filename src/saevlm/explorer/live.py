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


PER_IMAGE = ("cls", "mean", "mean_patches", "pooled")  # selections giving one row per image


def shown_square(im, side: int):
    """The centre square of ``im`` (what a square-cropping processor shows the model), at ``side`` px."""
    square = min(im.size)
    left, top = (im.width - square) // 2, (im.height - square) // 2
    return im.crop((left, top, left + square, top + square)).resize((side, side))


@dataclass
class LiveModel:
    """The vision model, the SAE and the hook point the store's codes were read at."""

    encoder: Any
    sae: Any
    point: Any
    selection: str = "all"  # the store's token selection (provenance.tokens.selection)
    # one forward pass at a time: the model is shared by every request of the server
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def image_codes(self, image, side: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """(the image as shown; its codes [K] as the store holds them for an image: the selected
        row (CLS, mean) or, for token-level stores, each latent's maximum over the patches; the
        patch codes [grid_h, grid_w, K] for token-level stores, else None)."""
        import torch

        from saevlm.models.base import TokenSelection, batch_of_one
        from saevlm.sae.inference import encode_batch

        if self.selection not in PER_IMAGE:
            base, patches = self.patch_codes(image, side)
            return base, patches.reshape(-1, patches.shape[-1]).max(axis=0), patches
        encoder = self.encoder
        im = image.convert("RGB")
        batch = batch_of_one(encoder.preprocess(im))
        base = shown_square(im, side)
        with self.lock, torch.no_grad():
            acts = encoder.capture(batch, [self.point])[self.point].float()
            if acts.ndim == 3:  # a block's [1, T, D]: the store's selection of it
                mode = {"mean_patches": TokenSelection("mean", skip_cls=True)}.get(
                    self.selection, TokenSelection("mean" if self.selection == "mean" else "cls"))
                acts, _ = mode.select(acts, [0], encoder.valid_tokens(batch, acts.shape[1]))
            codes = encode_batch(self.sae, acts).cpu().numpy()[0]
        return base, codes, None

    def patch_codes(self, image, side: int):
        """(the image as shown, square ``side`` px; codes [grid_h, grid_w, K] of its patch tokens)."""
        import torch

        from saevlm.models.base import batch_of_one
        from saevlm.sae.inference import encode_batch

        encoder = self.encoder
        im = image.convert("RGB")
        batch = batch_of_one(encoder.preprocess(im))
        shapes = batch["spatial_shapes"] if isinstance(batch, dict) and "spatial_shapes" in batch else None
        # NaFlex: the whole image, resized to its own patch grid; else the centre square the model saw
        base = im.resize((side, side)) if shapes is not None else shown_square(im, side)
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


def _why_not_live(provenance, images_available: bool, patches: bool) -> str:
    """Why the store's provenance rules live codes out ("" when it does not): per-patch overlays
    need a token-level store and its images; any live code needs to know which tokens were read."""
    tokens = provenance.tokens.selection
    point = provenance.hook.attachment_point
    if patches and (tokens in (None, *PER_IMAGE) or point != "post_mlp_residual"):
        return (f"Not applicable: this SAE reads one vector per image ({tokens}), so there is no "
                f"per-patch activation.")
    if patches and not images_available:
        return "No overlay: the store's images are not available."
    if tokens is None and point != "post_projection":
        return "No live images: the codes' provenance does not say which tokens the SAE read."
    return ""


def load_live_model(provenance, images_available: bool, patches: bool = True) -> tuple[LiveModel | None, str]:
    """(the model, "") when this store's codes can be computed for an image, else (None, why).
    ``patches``: per-patch activations are wanted (token overlays), which one-row-per-image
    stores do not have; ``images_available``: the store's own images are needed (overlays)."""
    tokens = provenance.tokens.selection
    what = "No overlay" if patches else "No live images"
    why = _why_not_live(provenance, images_available, patches)
    if why:
        return None, why
    sae = provenance.sae
    if sae is None or not sae.path or not Path(sae.path).exists():
        return None, f"{what}: the SAE checkpoint recorded in the codes' provenance was not found."
    try:
        from saevlm.models import load_encoder
        from saevlm.sae.checkpoint import load_sae

        encoder = load_encoder(provenance.model.source or provenance.model.name or "", warn=lambda m: None)
        point = encoder.resolve(provenance.hook.attachment_point, provenance.hook.layer)
        loaded = load_sae(sae.path)
    except Exception as err:  # noqa: BLE001 - a missing model skips overlays, never the page
        return None, (f"{what}: this SAE reads {tokens} tokens of the vision model {provenance.model.source!r}, "
                      f"which could not be loaded here ({type(err).__name__}: {str(err).splitlines()[0][:160]}).")
    return LiveModel(encoder, loaded, point, tokens or "pooled"), ""


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


# -- uploaded images ---------------------------------------------------------------------------
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 25_000_000  # a decompression bomb declares far more; refused before any pixel is decoded
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class UploadError(ValueError):
    """An upload that is not a usable image: ``status`` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _check_upload_header(im) -> None:
    """Format, size and frame count, from the header alone (before any pixel is decoded)."""
    if im.format not in FORMATS:
        raise UploadError(415, f"{im.format} images are not accepted ({', '.join(FORMATS)} expected)")
    w, h = im.size
    if w < 1 or h < 1 or w * h > MAX_PIXELS:
        raise UploadError(413, f"{w} x {h} pixels; at most {MAX_PIXELS:,} pixels are accepted")
    if getattr(im, "n_frames", 1) > 1:
        raise UploadError(415, f"an animated image ({im.n_frames} frames); upload a single frame")


def _as_rgb8(im) -> tuple:
    """(8-bit RGB image, notes): 16-bit and float images scaled by their maximum, CMYK and
    palette images converted."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = float(a.max()) or 1.0
        im = Image.fromarray((np.clip(a / top, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        return im, ["a 16-bit (or float) image, scaled to 8 bits by its maximum"]
    notes = ["a CMYK image, converted to RGB"] if im.mode == "CMYK" else []
    return (im if im.mode == "RGB" else im.convert("RGB")), notes


def open_upload(data: bytes):
    """(an RGB PIL image, notes) from uploaded bytes, or UploadError: not an image (415), too large
    or a decompression bomb (413), animated (415), truncated or damaged (422). CMYK, 16-bit and
    palette images are converted to 8-bit RGB, and a note says so."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(400, "no image was sent")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(413, f"{len(data):,} bytes; at most {MAX_UPLOAD_BYTES:,} are accepted")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UploadError(413, f"refused as a decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError(415, f"not an image ({', '.join(FORMATS)} expected)") from None
    try:
        _check_upload_header(im)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise UploadError(422, f"truncated or damaged {im.format} image ({err})") from None
        return _as_rgb8(im)
    except UploadError:
        im.close()
        raise
