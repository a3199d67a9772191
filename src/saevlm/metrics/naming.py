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
EXPLAINERS = ("clip", "mllm", "given")
# the fixed prompt an MLLM explainer gets with a grid of a latent's top images (recorded in names.json)
MLLM_PROMPT = ("The images in this grid all strongly activate the same feature of a vision model. "
               "In at most five words, what do they have in common?")


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




def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores ``pos`` (should be high) against ``neg``: the share of
    (positive, negative) pairs ordered right, ties counting one half (Mann-Whitney U / (P x Q))."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    both = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # the average rank (1-based) of each distinct value, for ties
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = avg_rank[inverse[: len(pos)]].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def auroc_se(a: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC ``a`` from ``n_pos`` positives and ``n_neg`` negatives (Hanley &
    McNeil 1982, exponential approximation): how far a sampled score may be from the exact one."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / max(n_pos * n_neg, 1)
    return float(np.sqrt(max(var, 0.0)))


@dataclass
class Detection:
    """Per latent: AUROC of its name, of a random other latent's name (the baseline), the latent
    whose name was the baseline, and the numbers of positive / negative images (NaN / -1 / 0: none)."""

    auroc: np.ndarray
    baseline: np.ndarray
    baseline_of: np.ndarray
    n_positive: np.ndarray
    n_negative: np.ndarray


def detection_scores(codes, emb_store, top_kn: np.ndarray, active_kn: np.ndarray, text_kd: np.ndarray,
                     named_k: np.ndarray, n_positive: int = 32, n_negative: int = 256, seed: int = 0,
                     progress: bool = False) -> Detection:
    """How well each latent's name picks its images (the detection score of issue "names with scores").

    For latent j with name text embedding ``text_kd[j]`` (unit): positives are up to ``n_positive``
    of its held-out activating images (code > 0, not among the top images its name was read from),
    negatives up to ``n_negative`` random images of the same store where it is not active; each
    image scores the cosine of its unit CLIP embedding with the text, and the AUROC says how well
    that separates the two. The baseline is the same AUROC, on the same images, of a random other
    named latent's text. A code store with one row per image is needed (names are per image)."""
    from tqdm import tqdm

    N, K = codes.num_rows, len(top_kn)
    row_ids = codes.image_ids()
    if len(row_ids) != N:
        raise UserError(f"codes_dir {codes.path}: {N} rows for {len(row_ids)} images; the detection score needs one "
                        f"row per image (pooled or CLS codes)", field="codes_dir")
    # every active (latent, row) pair, sorted by latent then row, as one int64 key
    keys = []
    for ch in codes.iter_csr():
        rows = np.repeat(np.arange(ch.start, ch.start + ch.num_rows, dtype=np.int64), np.diff(ch.indptr))
        keep = ch.values > 0
        keys.append(ch.indices[keep].astype(np.int64) * N + rows[keep])
    active_keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    bounds = np.searchsorted(active_keys, np.arange(K + 1, dtype=np.int64) * N)
    # the top images the names were read from, as keys of the same kind
    order = np.argsort(row_ids, kind="stable")
    top_rows = order[np.clip(np.searchsorted(row_ids[order], top_kn), 0, N - 1)]
    top_keys = np.sort((np.arange(K, dtype=np.int64)[:, None] * N + top_rows)[np.asarray(active_kn, bool)])
    # unit embeddings in code-row order
    emb_ids = emb_store.image_ids()
    pos_in_emb = np.clip(np.searchsorted(emb_ids, row_ids), 0, len(emb_ids) - 1)
    if not np.array_equal(emb_ids[pos_in_emb], row_ids):
        raise UserError(f"embeddings_path {emb_store.path}: lacks embeddings of images in {codes.path}; embed the "
                        f"images the codes were made from", field="embeddings_path")
    emb_nd = _unit(emb_store.gather(pos_in_emb).astype(np.float32))
    text = _unit(np.asarray(text_kd, dtype=np.float32))

    def member(sorted_keys: np.ndarray, q: np.ndarray) -> np.ndarray:
        at = np.clip(np.searchsorted(sorted_keys, q), 0, max(len(sorted_keys) - 1, 0))
        return (sorted_keys[at] == q) if len(sorted_keys) else np.zeros(len(q), bool)

    rng = np.random.default_rng(seed)
    named = np.flatnonzero(named_k)
    # the baseline: a random other named latent whose name is another text (a latent named like j
    # would score as j does); -1 where every named latent has the same name
    other = np.full(K, -1, dtype=np.int64)
    for j in named:
        for c in named[rng.integers(0, len(named), size=16)]:
            if c != j and not np.array_equal(text[c], text[j]):
                other[j] = c
                break
    out = Detection(np.full(K, np.nan), np.full(K, np.nan), other, np.zeros(K, np.int64), np.zeros(K, np.int64))
    for j in tqdm(named, desc="detection score", unit="latent", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True):
        act_keys = active_keys[bounds[j]:bounds[j + 1]]
        held = act_keys[~member(top_keys, act_keys)] - j * N
        if len(held) == 0:  # active on its top images alone (most latents at x64): nothing held out
            continue
        cand = rng.choice(N, size=min(N, 2 * n_negative + 16), replace=False)
        neg = cand[~member(act_keys, j * N + cand)][:n_negative]
        if len(neg) == 0:
            continue
        pos = rng.choice(held, size=min(n_positive, len(held)), replace=False)
        e_pos, e_neg = emb_nd[pos], emb_nd[neg]
        out.auroc[j] = auroc(e_pos @ text[j], e_neg @ text[j])
        if other[j] >= 0:
            out.baseline[j] = auroc(e_pos @ text[other[j]], e_neg @ text[other[j]])
        out.n_positive[j], out.n_negative[j] = len(pos), len(neg)
    return out


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
    no_score: bool = opt(False)
    """skip the detection score (AUROC of each name on held-out images vs a random other name)"""
    score_positives: int = opt(32)
    """held-out activating images per latent for the detection score (default: %(default)s)"""
    score_negatives: int = opt(256)
    """random images where the latent is silent, per latent, for the detection score (default: %(default)s)"""
    no_progress: bool = opt(False)
    """no progress bar"""
    explainer: str = opt("clip", choices=list(EXPLAINERS))
    """who writes the names. clip (default): the nearest --vocab word to the mean CLIP embedding of the top
    images; mllm: --mllm_model describes a grid of each latent's top images (as MedSAE); given: --names_file"""
    mllm_model: str | None = opt(None)
    """--explainer mllm: the MLLM (any family steer supports: LLaVA-1.5 / NeXT / OneVision, Qwen2.5-VL,
    Gemma-3 such as MedGemma; a hub id or a local folder)"""
    prompt: str = opt(MLLM_PROMPT)
    """--explainer mllm: the question asked with each grid (default: a fixed prompt, recorded)"""
    max_new_tokens: int = opt(16)
    """--explainer mllm: tokens per description (greedy decoding; default: %(default)s)"""
    mllm_batch_size: int = opt(8)
    """--explainer mllm: latents described per generate call (default: %(default)s; each answer is the one
    the MLLM gives that grid alone, and a resumed run loses at most one batch)"""
    model_dtype: str = opt("auto", choices=["auto", "fp16", "bf16", "fp32"])
    """--explainer mllm: the MLLM's weights (auto: fp16 on GPU, fp32 on CPU)"""
    data_path: str | None = opt(None)
    """--explainer mllm: where the store's images are now (default: where they were extracted from)"""
    names_file: str | None = opt(None)
    """--explainer given: JSON object {"<latent id>": "name", ...} of your own names, to score and show"""


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


NAMES_DEFINITION = (
    "cosine of the mean unit CLIP image embedding of the top-k images where the latent is active (> 0) with each "
    "name's text embedding (clip: every word of the vocabulary, the best three kept; mllm / given: the latent's own "
    "text); margin = first - second; purity and entropy over the same images (n_active); detection = AUROC of the "
    "cosine of the name's text with the unit CLIP embeddings of held-out activating images (not among the top-k) "
    "against random images where the latent is silent (detection_n = [positives, negatives]); detection_baseline = "
    "the same with the name of latent detection_baseline_of; detection_se = the standard error of their difference "
    "(Hanley-McNeil)")


def _words(args: NameConfig, store) -> tuple[list[str], str | None]:
    """The vocabulary CLIP names come from (none for free-text explainers) and where it came from."""
    if args.explainer == "clip":
        return _vocabulary(args, store)
    if args.text_embeddings:
        raise UserError(f"--text_embeddings: scores words of a vocabulary, but --explainer {args.explainer} "
                        f"writes free text, which only a CLIP text tower embeds (--clip_model)",
                        field="text_embeddings")
    return [], None


def _word_texts(args: NameConfig, emb, words: list[str]):
    """(text embeddings of the words, where they came from, the CLIP encoder or None)."""
    if args.text_embeddings:
        text = np.load(args.text_embeddings)
        if text.shape[0] != len(words):
            raise UserError(f"--text_embeddings {args.text_embeddings}: {text.shape[0]} rows for {len(words)} words")
        return text, str(args.text_embeddings), None
    from saevlm.device import resolve_device
    from saevlm.models.clip import ClipEncoder

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
    text = encoder.text([args.template.format(w) for w in words]) if words else np.zeros((0, emb.dim))
    return text, clip_name, encoder


def _detection_fields(detection, j: int) -> dict:
    """A latent's detection AUROC, its baseline and the standard error of their difference."""
    base = detection.baseline[j]
    n_pos, n_neg = int(detection.n_positive[j]), int(detection.n_negative[j])
    return {"detection": round(float(detection.auroc[j]), 4),
            "detection_baseline": None if np.isnan(base) else round(float(base), 4),
            "detection_baseline_of": int(detection.baseline_of[j]), "detection_n": [n_pos, n_neg],
            # both sampled; their correlation ignored
            "detection_se": None if np.isnan(base) else round(float(np.hypot(
                auroc_se(float(detection.auroc[j]), n_pos, n_neg), auroc_se(float(base), n_pos, n_neg))), 4)}


def _free_text_similarities(descriptions: dict[int, str], alive, encoder, mean):
    """(each named latent's text embedding, [K, 1] cosine with its mean top-image embedding)."""
    ids = [j for j in range(len(alive)) if alive[j]]
    name_text = np.zeros_like(mean, dtype=float)
    if ids:
        name_text[ids] = encoder.text([descriptions[j] for j in ids])
    return name_text, np.einsum("kd,kd->k", _unit(mean), name_text)[:, None]


def _latent_record(j: int, n_active: int, alive: bool, names: list, sims, detection, purity) -> dict:
    """One latent of names.json: its names (best first) with the margin, detection and purity."""
    rec: dict = {"id": j, "n_active": n_active, "names": names if alive else [], "margin": None}
    if alive and len(names) > 1:
        rec["margin"] = round(float(sims[j, 0] - sims[j, 1]), 5)
    if detection is not None and alive and detection.n_positive[j] > 0:
        rec.update(_detection_fields(detection, j))
    if purity is not None and alive:
        majority, pure, entropy, class_names = purity
        lab = int(majority[j])
        rec.update(purity=round(float(pure[j]), 4), entropy_bits=round(float(entropy[j]), 4),
                   label=class_names[lab] if 0 <= lab < len(class_names) else lab)
    return rec


def _explainer_fields(args: NameConfig) -> dict:
    explainer: dict = {"explainer": args.explainer}
    if args.explainer == "mllm":
        explainer.update(mllm_model=args.mllm_model, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                         decoding="greedy", seed=0)
    elif args.explainer == "given":
        explainer.update(names_file=str(Path(args.names_file).resolve()))
    return explainer


def _purity(store, top, active):
    """(majority label, purity, entropy, class names) of each latent's active top images, or None
    without labels."""
    labels = store.labels()  # checksum, dtype, shape and range checked
    if labels is None:
        return None
    majority, purity, entropy = label_purity(labels[top], active)
    classes = store.classes()
    return majority, purity, entropy, (_display_names(classes) if classes else [])


def _detection(args: NameConfig, store, emb, top, active, name_text, alive):
    if args.no_score:
        return None
    from saevlm.data.codes import CodeStore

    if not isinstance(store, CodeStore):
        print(f"note: --codes_dir {store.path} is not a code store: names are not scored (the detection score "
              f"needs every image's codes)", file=sys.stderr)
        return None
    return detection_scores(store, emb, top, active, name_text, alive, args.score_positives,
                            args.score_negatives, progress=not args.no_progress)


def run(args: NameConfig) -> int:
    from saevlm.data.atomic import ensure_writable_dir
    from saevlm.data.open import open_any_store
    from saevlm.data.store import ActivationStore
    from saevlm.data.topimages import load_top_images
    from saevlm.data.stamps import source_stamp

    store = open_any_store(args.codes_dir, "codes_dir", allow_top_images=True)
    out = Path(args.output) if args.output else store.path / A.NAMES
    ensure_writable_dir(out.parent, "output")
    top, kth, values = load_top_images(store.path, args.k, store)
    emb = ActivationStore(args.embeddings_path, field="embeddings_path")
    diff = emb.provenance.compatible_with(store.provenance, aspects=("dataset",))
    if diff is not None:
        raise UserError(f"--embeddings_path {emb.path}: embeds another image list than {store.path} "
                        f"(dataset {diff.key}: {diff.ours!r} vs {diff.theirs!r})")
    active = values > 0  # only images where the latent fires say what it detects
    alive = active.any(axis=1)
    words, vocab_source = _words(args, store)
    descriptions: dict[int, str] = {}
    if args.explainer == "given":
        descriptions = _given_names(args.names_file, len(top))
    elif args.explainer == "mllm":
        check_mllm(args)  # one line before any work (not an MLLM, offline without its weights)
    text, text_source, encoder = _word_texts(args, emb, words)
    if text.shape[1] != emb.dim:
        raise UserError(f"text embeddings have {text.shape[1]} dims, the image embeddings {emb.dim}: use the "
                        f"same CLIP model for both (--clip_model)")
    mean = mean_top_embeddings(top, emb, active)
    if args.explainer == "mllm":
        descriptions = mllm_descriptions(args, store, top, active, out)
    if args.explainer == "clip":
        idx, sims = name_latents(mean, text, words)
        names = [[[words[int(w)], round(float(s), 5)] for w, s in zip(idx[j], sims[j])] for j in range(len(top))]
        name_text = text[idx[:, 0]]
    else:  # free text: each latent's own name, embedded by the CLIP text tower
        alive &= np.array([j in descriptions for j in range(len(top))], dtype=bool)
        name_text, sims = _free_text_similarities(descriptions, alive, encoder, mean)
        names = [[[descriptions[j], round(float(sims[j, 0]), 5)]] if alive[j] else [] for j in range(len(top))]
    purity = _purity(store, top, active)
    detection = _detection(args, store, emb, top, active, name_text, alive)
    latents = [_latent_record(j, int(active[j].sum()), bool(alive[j]), names[j], sims, detection, purity)
               for j in range(len(top))]
    A.NamesResult.write_json(out, {"format": NAMES_FORMAT, "k": args.k, **_explainer_fields(args),
                                   "template": args.template if args.explainer == "clip" else None,
                                   "vocab_source": vocab_source, "vocab_size": len(words),
                                   "text_embeddings": text_source, "image_embeddings": str(emb.path.resolve()),
                                   "definition": NAMES_DEFINITION,
                                   "detection_seed": 0 if detection is not None else None,
                                   "source": source_stamp(store), "latents": latents})
    named = [r for r in latents if r["names"]]
    source = f"{len(words)} words" if args.explainer == "clip" else \
        (args.mllm_model if args.explainer == "mllm" else args.names_file)
    print(f"named {len(named)} of {len(latents)} latents ({len(latents) - len(named)} unnamed) from "
          f"{source}; wrote {out}", file=sys.stderr)
    for r in sorted(named, key=lambda r: -(r["margin"] or r.get("detection") or 0))[:5]:
        print(f"  latent {r['id']}: {r['names'][0][0]} ({r['names'][0][1]:.3f})")
    return 0


def _given_names(path: str | None, num_latents: int) -> dict[int, str]:
    """``--names_file``: a JSON object of latent id -> name (your own, or another tool's)."""
    import json

    if not path:
        raise UserError("explainer given: needs --names_file FILE (a JSON object {\"<latent id>\": \"name\"})",
                        field="explainer", mentions=("names_file",))
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"names_file {path}: not a readable JSON file ({e})", field="names_file") from None
    if not isinstance(data, dict):
        raise UserError(f"names_file {path}: expected a JSON object {{\"<latent id>\": \"name\"}}, found "
                        f"{type(data).__name__}", field="names_file")
    out = {}
    for key, name in data.items():
        if not (str(key).isdigit() and 0 <= int(key) < num_latents) or not isinstance(name, str) or not name.strip():
            raise UserError(f"names_file {path}: entry {key!r}: expected a latent id in [0, {num_latents}) and a "
                            f"non-empty name", field="names_file")
        out[int(key)] = name.strip()
    return out


def check_mllm(args) -> None:
    """--explainer mllm: the model is one of the supported MLLM families, readable now (locally or
    from the hub), said in one line before any image is read."""
    from saevlm.models.towers import DEFAULT_MLLM

    if args.mllm_batch_size < 1:
        raise UserError(f"mllm_batch_size {args.mllm_batch_size}: expected a positive number of latents per "
                        f"generate call", field="mllm_batch_size")
    if not args.mllm_model:
        raise UserError("explainer mllm: needs --mllm_model (an MLLM steer supports, e.g. "
                        f"{DEFAULT_MLLM} or google/medgemma-4b-it)", field="explainer", mentions=("mllm_model",))
    from saevlm.models.mllm import mllm_family

    try:
        mllm_family(args.mllm_model, args.mllm_model)
    except UserError as err:
        raise UserError(f"mllm_model {args.mllm_model}: {str(err).split(': ', 1)[-1]}", field="mllm_model") from None


def _grid(images, ids: list[int], cell: int = 112, tile=None):
    """The images ``ids`` side by side in a square grid (4 x 4 for 16), each centre-cropped to
    ``cell``; ``tile(image_id)``, when given, draws a tile instead (JPEG bytes: the heatmap)."""
    import io
    import math

    from PIL import Image, ImageOps

    side = max(1, math.ceil(math.sqrt(len(ids))))
    grid = Image.new("RGB", (side * cell, side * cell), (255, 255, 255))
    for n, i in enumerate(ids):
        data = tile(int(i)) if tile is not None else images.read_bytes(int(i))
        with Image.open(io.BytesIO(data)) as im:
            piece = ImageOps.fit(im.convert("RGB"), (cell, cell))
        grid.paste(piece, ((n % side) * cell, (n // side) * cell))
    return grid


def heatmap_tiles(store, data_path: str | None, cache_dir: Path):
    """For a token-level store: ``tile(j, image_id)`` giving the image with latent j's activation on
    each patch in red (the explorer's overlay: the run's model re-reads the image), else None."""
    from saevlm.explorer.index import SAEView

    view = SAEView(store.path, "name", store.path.parent, cache_dir, data_path)
    model, why = view.overlay_model
    if model is None:
        return None, why
    return (lambda j, image_id: view.overlay(j, image_id, 112)), ""


def mllm_descriptions(args, store, top: np.ndarray, active: np.ndarray, out: Path) -> dict[int, str]:
    """Each active latent's description by the MLLM, from a grid of its top images where it is
    active and the fixed prompt, greedy. Every answer is appended to ``<names>.mllm.jsonl`` as it
    comes, so an interrupted run resumes at the next latent (a file written for another model,
    prompt or top-image list is set aside, not reused)."""
    import hashlib
    import json

    import torch
    from tqdm import tqdm

    from saevlm.device import resolve_device
    from saevlm.metrics.figures import open_store_images
    from saevlm.models.mllm import load_mllm

    header = {"mllm_model": args.mllm_model, "prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
              "tokens": store.provenance.tokens.selection,
              "k": args.k, "top_images_sha256": hashlib.sha256(np.ascontiguousarray(top).tobytes()
                                                               + np.ascontiguousarray(active).tobytes()).hexdigest()}
    partial = out.with_suffix(".mllm.jsonl")
    done: dict[int, str] = {}
    if partial.is_file():
        lines = partial.read_text().splitlines()
        try:
            same = bool(lines) and json.loads(lines[0]) == header
        except ValueError:
            same = False
        if same:
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                    done[int(rec["id"])] = str(rec["text"])
                except (ValueError, KeyError, TypeError):
                    break  # a line cut off by the interruption: that latent is asked again
        else:
            partial.rename(partial.with_suffix(".jsonl.old"))
            print(f"note: {partial} was written for another model, prompt or top-image list; kept as "
                  f"{partial.with_suffix('.jsonl.old').name}, starting again", file=sys.stderr)
    todo = [j for j in range(len(top)) if active[j].any() and j not in done]
    if done:
        print(f"resuming: {len(done)} latent(s) already described in {partial}", file=sys.stderr)
    if not todo:
        return done
    images = open_store_images(store, args.data_path)
    import tempfile

    cache = tempfile.TemporaryDirectory(prefix="saevlm-name-")  # the overlays' per-latent maxima
    tiles, why = heatmap_tiles(store, args.data_path, Path(cache.name))
    if tiles is None:
        print(f"note: plain top images for the MLLM, no heatmap: {why}", file=sys.stderr)
    mllm = load_mllm(args.mllm_model, resolve_device(args.device), args.model_dtype)
    torch.manual_seed(0)
    mode = "a" if done else "w"
    with cache, open(partial, mode, encoding="utf-8") as f:
        if not done:
            f.write(json.dumps(header) + "\n")
        bar = tqdm(total=len(todo), desc=f"describe with {Path(args.mllm_model).name}", unit="latent",
                   disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
        for start in range(0, len(todo), args.mllm_batch_size):
            batch = todo[start:start + args.mllm_batch_size]
            grids = [_grid(images, [int(i) for i in top[j][active[j]]],
                           tile=None if tiles is None else (lambda i, j=j: tiles(j, i))) for j in batch]
            for j, answer in zip(batch, mllm.prompt_batch(args.prompt, grids, args.max_new_tokens)):
                done[j] = " ".join(answer.split()) or "(no answer)"
                f.write(json.dumps({"id": j, "text": done[j]}) + "\n")
            f.flush()  # a batch's answers are kept before the next batch is asked
            bar.update(len(batch))
        bar.close()
    return done
