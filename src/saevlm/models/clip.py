"""CLIP embeddings for the steering score (arXiv 2504.02821, Sec. 4.3): the text of LLaVA's answer
against the mean image embedding of a latent's top images, plus reading image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saevlm.errors import UserError

PROTOCOLS = ("authors", "saevlm")
DEFAULT_CLIP = "clip-vit-base-patch32"


class ClipEncoder:
    """CLIP text and image embeddings (transformers ``CLIPModel``), unit-normalised."""

    def __init__(self, name: str, device, processor_backend: str = "pil", field: str = "clip_model"):
        import torch  # noqa: F401
        from transformers import CLIPModel

        from saevlm.models import SHORT_NAMES
        from saevlm.models.hf import auto_processor, hub_error, load_config, quiet_from_pretrained

        source = SHORT_NAMES.get(name, name)
        model_type = getattr(load_config(name, source), "model_type", None)
        if model_type != "clip":  # before loading: CLIPModel over other weights would be random
            raise UserError(f"{field} {name}: a CLIP model with its text tower is needed (model type 'clip'), "
                            f"this is {model_type!r}"
                            + (" (CLIP's vision tower alone)" if model_type == "clip_vision_model" else "")
                            + "; pass --clip_model with a full CLIP (e.g. clip-vit-base-patch32) or "
                              "--text_embeddings", field=field)
        self.model = quiet_from_pretrained(name, source, CLIPModel, skipped_by_design=(), field=field).eval().to(device)
        try:
            self.processor = auto_processor(source, processor_backend, multimodal=True)
        except (OSError, ValueError) as err:
            raise hub_error(name, source, err) from None
        self.device = device

    @staticmethod
    def _tensor(out):
        import torch
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text(self, words: list[str]) -> np.ndarray:
        import torch
        tok = self.processor.tokenizer(words, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            e = self._tensor(self.model.get_text_features(**tok)).float()
        return (e / e.norm(dim=1, keepdim=True)).cpu().numpy()

    def images(self, pil_images) -> np.ndarray:
        import torch
        px = self.processor.image_processor(images=pil_images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            e = self._tensor(self.model.get_image_features(pixel_values=px)).float()
        return (e / e.norm(dim=1, keepdim=True)).cpu().numpy()


def list_images(spec: str, field: str = "images") -> list[tuple[str, object]]:
    """(name, PIL image) for a folder (sorted, recursive) or 'white'."""
    from saevlm.data.images import IMG_EXTENSIONS
    from saevlm.models.mllm import load_image

    if spec in ("white", "black"):
        return [(spec, load_image(spec))]
    root = Path(spec)
    if not root.is_dir():
        raise UserError(f"{field} {spec}: not a directory (or 'white' for the paper's white image; the "
                        f"authors' ./images/ folder holds only white.png)", field=field)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise UserError(f"{field} {spec}: no images inside", field=field)
    return [(str(f.relative_to(root)), load_image(str(f), field=field)) for f in files]


def neuron_image_embeddings(top_images: np.ndarray, store, normalise: bool = True) -> np.ndarray:
    """Mean CLIP image embedding of each neuron's top images ([K, d]): of unit-normalised
    embeddings (saevlm), or of the raw ``image_embeds`` (``normalise=False``, the authors')."""
    ids = store.image_ids()
    row_of = {int(i): r for r, i in enumerate(ids)}
    missing = [int(i) for i in np.unique(top_images) if int(i) not in row_of]
    if missing:
        raise UserError(f"clip_embeddings {store.path}: no embedding for image {missing[0]} of the top "
                        f"images ({len(missing)} missing); embed the dataset the top images index", field="clip_embeddings")
    emb = store.read(0, store.num_rows).astype(np.float64)
    if normalise:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows = np.vectorize(row_of.get)(top_images)
    return emb[rows].mean(1)
