"""``saevlm name``: a name for every SAE latent from CLIP, and the label purity of its top images.

For latent j with top-k images I_j (``saevlm top-images``): the mean of the images' unit-normalised
CLIP image embeddings, normalised, against the unit text embeddings of a vocabulary
(``"a photo of a {}"`` per word; by default the dataset's class names). The three most similar
words with their cosine similarities, and the margin between the first two, go to ``names.json``
beside the codes. This is the steering score's target (arXiv 2504.02821, Sec. 4.3: the mean
CLIP embedding of a latent's top images) read the other way: which word is closest to it.

Where labels exist, the top images' label purity (share of the most common label) and the
entropy of their labels (bits; 0 = all one class) are recorded too: the label-based view of
monosemanticity of MedSAE-style analyses.

Only top images where the latent is active (value > 0) count: at the paper's x64 width a latent
is active on about 15 images on average, so a top-16 list is often padded with images at 0, which
say nothing about the latent. Each record says on how many images its name and purity rest
(``n_active``); near-dead latents (top value 0) get no name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.metrics.labels import label_purity  # a library module: the explorer reads it too

from saevlm.commandline import CommandConfig, DeviceOption, opt
from saevlm.data import artifacts as A
from saevlm.errors import UserError

NAMES_FORMAT = "saevlm-names"
DEFAULT_TEMPLATE = "a photo of a {}"


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def name_latents(mean_image_kd: np.ndarray, text_vd: np.ndarray, vocab: list[str], top: int = 3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(word indices [K, top], cosine similarities [K, top]) of each latent's best words:
    ``mean_image_kd`` are the latents' mean image embeddings, ``text_vd`` the vocabulary's."""
    if len(vocab) != len(text_vd):
        raise ValueError("one text embedding per word")
    sims_kv = _unit(np.asarray(mean_image_kd, dtype=np.float64)) @ _unit(np.asarray(text_vd, dtype=np.float64)).T
    top = min(top, sims_kv.shape[1])
    order = np.argsort(-sims_kv, axis=1, kind="stable")[:, :top]
    return order, np.take_along_axis(sims_kv, order, axis=1)




def mean_top_embeddings(top_kn: np.ndarray, emb_store, active_kn: np.ndarray | None = None,
                        chunk: int = 4096) -> np.ndarray:
    """Mean unit-normalised embedding of each latent's top images (image ids -> embedding rows),
    over the images where ``active_kn`` is True (all by default; a row with none gives zeros).
    Latents are taken ``chunk`` at a time, so 65,536 latents x 16 images never sit in memory at once."""
    ids = emb_store.image_ids()
    top_kn = np.asarray(top_kn)
    active_kn = np.ones(top_kn.shape, dtype=bool) if active_kn is None else np.asarray(active_kn, dtype=bool)
    pos = np.clip(np.searchsorted(ids, top_kn), 0, len(ids) - 1)
    missing = (ids[pos] != top_kn) & active_kn
    if missing.any():
        bad = int(top_kn[missing][0])
        raise UserError(f"--embeddings_path {emb_store.path}: has no embedding of image {bad} (a top image); "
                        f"embed the same images the codes were made from")
    out = np.zeros((len(top_kn), emb_store.dim), dtype=np.float64)
    for a in range(0, len(top_kn), chunk):
        p, keep = pos[a:a + chunk], active_kn[a:a + chunk]
        emb = _unit(emb_store.gather(p.reshape(-1)).astype(np.float64)).reshape(*p.shape, -1)
        n = keep.sum(axis=1, keepdims=True)
        out[a:a + chunk] = (emb * keep[..., None]).sum(axis=1) / np.maximum(n, 1)
    return out


@dataclass(frozen=True, kw_only=True)
class NameConfig(CommandConfig, DeviceOption):
    """`saevlm name`: a CLIP name for every latent, and its top images' label purity."""

    COMMAND: ClassVar[str] = "name"

    codes_dir: str = opt()
    """code store (or top-images store) holding top_images_<k>.npy (saevlm top-images)"""
    embeddings_path: str = opt()
    """CLIP image embeddings of the same images (saevlm embed --model_name clip-vit-base-patch32)"""
    clip_model: str | None = opt(None)
    """CLIP model for the text side (default: the embeddings' model)"""
    vocab: str | None = opt(None)
    """text file, one word or phrase per line (default: the dataset's class names)"""
    template: str = opt('a photo of a {}')
    """prompt per word (default: %(default)r)"""
    text_embeddings: str | None = opt(None)
    """.npy of unit text embeddings, one row per --vocab line, instead of a CLIP model"""
    k: int = opt(16)
    """top images per latent (default: %(default)s)"""
    output: str | None = opt(None)
    """default: <codes_dir>/names.json"""


CONFIG = NameConfig


def _vocabulary(args, store) -> tuple[list[str], str]:
    if args.vocab:
        try:
            words = [w.strip() for w in Path(args.vocab).read_text().splitlines() if w.strip()]
        except OSError as e:
            raise UserError(f"--vocab {args.vocab}: cannot read ({e.strerror})") from None
        if not words:
            raise UserError(f"--vocab {args.vocab}: empty")
        return words, str(args.vocab)
    classes = store.classes()  # checked against the manifest
    if classes is None:
        raise UserError(f"--codes_dir {store.path}: no classes.json to take a vocabulary from; pass --vocab FILE")
    words = [str(n).split(",")[0].strip() for n in _display_names(classes)]
    if not words:
        raise UserError(f"--codes_dir {store.path}: classes.json lists no classes; pass --vocab FILE")
    return words, "class names (classes.json, first synonym; for iNat the species)"


def _display_names(classes: dict) -> list[str]:
    """The class names people read (for iNat the species, not the folder: Classes.display_names)."""
    from saevlm.data.artifacts import CLASSES, Classes

    return Classes.from_json(classes, CLASSES).display_names()


def run(args: NameConfig) -> int:
    from saevlm.data.atomic import atomic_write_json, ensure_writable_dir
    from saevlm.data.open import open_any_store
    from saevlm.data.store import ActivationStore
    from saevlm.data.topimages import load_top_images
    from saevlm.metrics.results import source_stamp

    store = open_any_store(args.codes_dir, "codes_dir", allow_top_images=True)
    out = Path(args.output) if args.output else store.path / A.NAMES
    ensure_writable_dir(out.parent, "output")
    top, kth, values = load_top_images(store.path, args.k, store)
    emb = ActivationStore(args.embeddings_path, field="embeddings_path")
    diff = emb.provenance.compatible_with(store.provenance, aspects=("dataset",))
    if diff is not None:
        raise UserError(f"--embeddings_path {emb.path}: embeds another image list than {store.path} "
                        f"(dataset {diff.key}: {diff.ours!r} vs {diff.theirs!r})")
    words, vocab_source = _vocabulary(args, store)
    if args.text_embeddings:
        text = np.load(args.text_embeddings)
        if text.shape[0] != len(words):
            raise UserError(f"--text_embeddings {args.text_embeddings}: {text.shape[0]} rows for {len(words)} words")
        text_source = str(args.text_embeddings)
    else:
        from saevlm.device import resolve_device
        from saevlm.steering.clip import ClipEncoder

        clip_name = args.clip_model or emb.provenance.model.source or emb.provenance.model.name
        try:
            encoder = ClipEncoder(clip_name, resolve_device(args.device))
        except UserError as err:
            if args.clip_model:
                raise
            # without --clip_model the text tower is the embedder's own: say which store chose it
            raise UserError(f"--embeddings_path {emb.path}: names are read with the text tower of the model that "
                            f"embedded it, {clip_name}, which cannot give them ({str(err).split(': ', 1)[-1]})",
                            field="embeddings_path") from None
        text = encoder.text([args.template.format(w) for w in words])
        text_source = clip_name
    if text.shape[1] != emb.dim:
        raise UserError(f"text embeddings have {text.shape[1]} dims, the image embeddings {emb.dim}: use the "
                        f"same CLIP model for both (--clip_model)")
    active = values > 0  # only images where the latent fires say what it detects
    alive = active.any(axis=1)
    mean = mean_top_embeddings(top, emb, active)
    idx, sims = name_latents(mean, text, words)
    labels = store.labels()  # checksum, dtype, shape and range checked
    purity = None
    if labels is not None:
        majority, purity, entropy = label_purity(labels[top], active)
        classes = store.classes()
        class_names = _display_names(classes) if classes else []
    latents = []
    for j in range(len(top)):
        rec: dict = {"id": j, "n_active": int(active[j].sum())}
        if alive[j]:
            rec["names"] = [[words[int(w)], round(float(s), 5)] for w, s in zip(idx[j], sims[j])]
            rec["margin"] = round(float(sims[j, 0] - sims[j, 1]), 5) if sims.shape[1] > 1 else None
        else:
            rec["names"], rec["margin"] = [], None
        if purity is not None and alive[j]:
            lab = int(majority[j])
            rec.update(purity=round(float(purity[j]), 4), entropy_bits=round(float(entropy[j]), 4),
                       label=class_names[lab] if 0 <= lab < len(class_names) else lab)
        latents.append(rec)
    atomic_write_json(out, {"format": NAMES_FORMAT, "k": args.k, "template": args.template,
                            "vocab_source": vocab_source, "vocab_size": len(words), "text_embeddings": text_source,
                            "image_embeddings": str(emb.path.resolve()),
                            "definition": "cosine of the mean unit CLIP image embedding of the top-k images where "
                                          "the latent is active (> 0) with each word's text embedding; margin = "
                                          "first - second; purity and entropy over the same images (n_active)",
                            "source": source_stamp(store), "latents": latents})
    named = [r for r in latents if r["names"]]
    print(f"named {len(named)} of {len(latents)} latents ({len(latents) - len(named)} near-dead) from "
          f"{len(words)} words; wrote {out}", file=sys.stderr)
    for r in sorted(named, key=lambda r: -(r["margin"] or 0))[:5]:
        print(f"  latent {r['id']}: {r['names'][0][0]} ({r['names'][0][1]:.3f}, margin {r['margin']:.3f})")
    return 0
