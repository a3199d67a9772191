"""Steering score (the authors' ``steering_score.py`` and ``similarity_baseline.py``; arXiv
2504.02821 Sec. 4.3, Table 3).

For a neuron k and an image: LLaVA answers "What is shown in this image? Use exactly one word!"
(5 new tokens) with latent k clamped to alpha on every token of vision block 22; the score is the
cosine between the CLIP ViT-B/32 text embedding of the answer's first word and the mean CLIP
ViT-B/32 image embedding of the neuron's 16 highest-activating images. ``--no_steer`` gives the
unsteered reference. Bounds (``similarity-baseline``): images against their true class names, and
against shuffled names.

``--protocol`` (recorded in every output):

- ``authors`` (default; the paper's numbers): the word is
  ``answer.split('ASSISTANT: ')[-1].split(' ')[0]`` of the whole decoded sequence, kept as is
  ("Pencil." stays, "" stays); the target is the mean of the RAW image embeddings; mean and std
  (unbiased) are taken over all (neuron, image) pairs; the bounds embed the authors' class-name
  strings (``--class_names``).
- ``saevlm``: the first alphabetic word, lower-cased ("" becomes "nothing"); the mean of
  unit-normalised image embeddings (each top image weighs the same); std over per-neuron means;
  bounds from the eval folder's class_names.json (ImageNet meta.bin names).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from saevlm.errors import UserError
from saevlm.steering.steer import DEFAULT_PROMPT, add_model_arguments

PROTOCOLS = ("authors", "saevlm")
DEFAULT_CLIP = "clip-vit-base-patch32"


class ClipEncoder:
    """CLIP text and image embeddings (transformers ``CLIPModel``), unit-normalised."""

    def __init__(self, name: str, device):
        import torch  # noqa: F401
        from transformers import AutoProcessor, CLIPModel

        from saevlm.models import SHORT_NAMES
        from saevlm.models.hf import hub_error

        source = SHORT_NAMES.get(name, name)
        try:
            self.model = CLIPModel.from_pretrained(source).eval().to(device)
            self.processor = AutoProcessor.from_pretrained(source)
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


def first_word(answer: str) -> str:
    """saevlm's rule: the first alphabetic word, lower-cased ("" when there is none)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", answer)
    return words[0].lower() if words else ""


def authors_word(decoded_sequence: str) -> str:
    """The authors' rule, on the whole decoded sequence: the text after the last 'ASSISTANT: ',
    up to the first space, kept as is (punctuation and case included; may be empty)."""
    return decoded_sequence.split("ASSISTANT: ")[-1].split(" ")[0]


def list_images(spec: str, flag: str = "--images") -> list[tuple[str, object]]:
    """(name, PIL image) for a folder (sorted, recursive) or 'white'."""
    from saevlm.data.images import IMG_EXTENSIONS
    from saevlm.steering.llava import load_image

    if spec in ("white", "black"):
        return [(spec, load_image(spec))]
    root = Path(spec)
    if not root.is_dir():
        raise UserError(f"{flag} {spec}: not a directory (or 'white' for the paper's white image; the "
                        f"authors' ./images/ folder holds only white.png)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise UserError(f"{flag} {spec}: no images inside")
    return [(str(f.relative_to(root)), load_image(str(f))) for f in files]


def neuron_image_embeddings(top_images: np.ndarray, store, normalise: bool = True) -> np.ndarray:
    """Mean CLIP image embedding of each neuron's top images ([K, d]): of unit-normalised
    embeddings (saevlm), or of the raw ``image_embeds`` (``normalise=False``, the authors')."""
    ids = store.image_ids()
    row_of = {int(i): r for r, i in enumerate(ids)}
    missing = [int(i) for i in np.unique(top_images) if int(i) not in row_of]
    if missing:
        raise UserError(f"--clip_embeddings {store.path}: no embedding for image {missing[0]} of the top "
                        f"images ({len(missing)} missing); embed the dataset the top images index")
    emb = store.read(0, store.num_rows).astype(np.float64)
    if normalise:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows = np.vectorize(row_of.get)(top_images)
    return emb[rows].mean(1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--protocol", default="authors", choices=PROTOCOLS,
                   help="authors: their word rule, raw-embedding target, std over all pairs (the paper's "
                        "Table 3); saevlm: cleaned word, unit-normalised target, std over neurons "
                        "(default: %(default)s)")
    p.add_argument("--top_images", "--hai_indices_path", dest="top_images", required=True,
                   help="top images of the steering SAE: top_images_16.npy or the authors' hai_indices_16.npy "
                        "(saevlm extract --sae_path --mean_pool --top_k 16)")
    p.add_argument("--clip_embeddings", "--embeddings_path", dest="clip_embeddings", required=True,
                   help="CLIP ViT-B/32 embedding store of the images the top indices refer to (saevlm embed)")
    p.add_argument("--model_name", "--clip_model", dest="clip_model", default=DEFAULT_CLIP,
                   help="CLIP model for the text embeddings (the authors' --model_name; LLaVA is "
                        "--llava_model) (default: %(default)s)")
    p.add_argument("--images", "--images_path", dest="images", default="white",
                   help="folder of images to steer, or 'white' (default)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--neurons", "--neuron_prefix", dest="neurons", type=int, default=1000,
                     help="the first N neurons (default: %(default)s)")
    sel.add_argument("--neuron_list", type=int, nargs="+", help="these neurons")
    p.add_argument("--alpha", type=float, default=100.0, help="clamp value (default: %(default)s)")
    p.add_argument("--steer", dest="steer", action=argparse.BooleanOptionalAction, default=True,
                   help="clamp the latent (default) or not (--no-steer / --no_steer: the unsteered reference)")
    p.add_argument("--no_steer", dest="steer", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--pre_zero", dest="zero_others", action=argparse.BooleanOptionalAction, default=False,
                   help="zero every other latent before clamping (the authors' --pre_zero; default: off)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="(default: %(default)r)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output_dir", help="labels.csv, scores.csv, steering_score.json go here")
    out.add_argument("--output_path", help="the authors' form: outputs go to its directory part "
                                           "(os.path.dirname, so './x/steering/' means './x/steering')")


def output_dir_of(args) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    return Path(os.path.dirname(args.output_path) or ".")


def run(args) -> int:
    from tqdm import tqdm

    from saevlm.data.store import ActivationStore, atomic_write_json
    from saevlm.metrics.top_images import load_top_images_for
    from saevlm.steering.intervention import sae_intervention
    from saevlm.steering.steer import load_models

    top_f = Path(args.top_images)
    if not top_f.is_file():
        raise UserError(f"--top_images {args.top_images}: no such file")
    k = int(np.load(top_f, mmap_mode="r").shape[1])
    top = load_top_images_for(top_f.parent, k, str(top_f))[0] if top_f.name.startswith("hai_indices") \
        else np.load(top_f)
    store = ActivationStore(args.clip_embeddings, flag="--clip_embeddings")
    neurons = list(args.neuron_list) if args.neuron_list else list(range(min(args.neurons, len(top))))
    bad = [n for n in neurons if not 0 <= n < len(top)]
    if bad:
        raise UserError(f"--neuron_list {bad[0]}: out of range (top images for {len(top)} neurons)")
    images = list_images(args.images, flag="--images")
    authors = args.protocol == "authors"
    llava, sae, layer = load_models(args)
    clip = ClipEncoder(args.clip_model, llava.device)
    target = neuron_image_embeddings(top[neurons], store, normalise=not authors)
    target_unit = target / np.linalg.norm(target, axis=1, keepdims=True)
    out = output_dir_of(args)
    out.mkdir(parents=True, exist_ok=True)
    labels: list[tuple[int, str, str, str]] = []  # neuron, image, answer, whole decoded sequence
    size = int(getattr(llava.model.config.vision_config, "image_size", 336))
    resized = [(name, im.resize((size, size)) if name in ("white", "black") else im) for name, im in images]
    with tqdm(total=len(neurons) * len(images) if args.steer else len(images), unit="answer",
              file=sys.stderr, dynamic_ncols=True, desc="steering-score") as bar:
        if not args.steer:
            answers = {}
            for name, im in resized:
                answers[name] = llava.generate(args.prompt, im, args.max_new_tokens)
                bar.update(1)
            labels = [(n, name, *answers[name]) for n in neurons for name, _ in resized]
        else:
            for n in neurons:
                with sae_intervention(llava, sae, layer, {n: args.alpha}, args.mode, args.zero_others):
                    for name, im in resized:
                        labels.append((n, name, *llava.generate(args.prompt, im, args.max_new_tokens)))
                        bar.update(1)
    words = [authors_word(full) if authors else first_word(answer) for _, _, answer, full in labels]
    vocab = sorted(set(words))
    text = dict(zip(vocab, clip.text(vocab if authors else [w or "nothing" for w in vocab])))
    index = {n: i for i, n in enumerate(neurons)}
    sims = np.array([float(text[w] @ target_unit[index[n]]) for (n, _, _, _), w in zip(labels, words)])
    from saevlm.data.atomic import atomic_write_text

    def csv_text(header: list, rows) -> str:
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()
    atomic_write_text(out / "labels.csv", csv_text(["neuron", "image", "answer", "word", "similarity"], (
        [n, name, answer, word, f"{s:.6f}"] for (n, name, answer, _), word, s in zip(labels, words, sims))))
    per_neuron = {n: float(np.mean(sims[[i for i, lab in enumerate(labels) if lab[0] == n]])) for n in neurons}
    atomic_write_text(out / "scores.csv", csv_text(["neuron", "score"],
                                                   ([n, f"{s:.6f}"] for n, s in per_neuron.items())))
    vals = np.array(list(per_neuron.values()))
    if authors:  # torch.std over all (neuron, image) pairs: unbiased
        mean, std, std_over = float(sims.mean()), float(sims.std(ddof=1)) if len(sims) > 1 else float("nan"), \
            "all (neuron, image) pairs, unbiased"
    else:
        mean, std, std_over = float(vals.mean()), float(vals.std()), "per-neuron means, ddof 0"
    from saevlm.report.paper import STEERING
    summary = {"kind": "steering_score", "protocol": args.protocol, "mean": mean, "std": std,
               "std_over": std_over, "neurons": len(neurons), "images": len(images), "steered": args.steer,
               "alpha": args.alpha if args.steer else None, "layer": layer, "mode": args.mode,
               "zero_others": args.zero_others, "prompt": args.prompt, "sae": str(sae.path),
               "llava_model": args.llava_model, "clip_model": args.clip_model,
               "word_rule": "answer.split('ASSISTANT: ')[-1].split(' ')[0], as is" if authors
                            else "first alphabetic word, lower-cased; '' -> 'nothing'",
               "target": "mean of raw image embeddings" if authors else "mean of unit-normalised image embeddings",
               "paper": STEERING}
    atomic_write_json(out / "steering_score.json", summary)
    print(f"steering score ({'unsteered' if not args.steer else f'alpha {args.alpha:g}'}, protocol {args.protocol}): "
          f"{mean:.3f} +- {std:.3f} over {len(neurons)} neurons x {len(images)} image(s)")
    print(f"wrote {out}/labels.csv, scores.csv, steering_score.json")
    return 0


# ----------------------------------------------------------------------------- bounds
WNID = re.compile(r"^n\d{8}$")


def load_class_names(path: str) -> dict[str, str]:
    """``--class_names FILE``: JSON, either ``{"0": ["n01440764", "tench"], ...}`` (the
    index -> [wnid, name] layout of the class-name list the authors embed) or ``{wnid: name}``."""
    f = Path(path)
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--class_names {f}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"--class_names {f}: expected a JSON object")
    first = next(iter(data.values()))
    if isinstance(first, list):
        return {str(v[0]): str(v[1]) for v in data.values()}
    return {str(k): str(v) for k, v in data.items()}


def eval_items(root: Path, flag: str = "--images") -> list[tuple[str, str, object]]:
    """(wnid, file name, image) of an eval folder: saevlm's ``<wnid>/<file>`` or the authors'
    flat ``<wnid>_<file>`` (their imagenet_subset.py; the class is ``name.split('_')[0]``)."""
    out = []
    for name, im in list_images(str(root), flag=flag):
        parts = Path(name).parts
        out.append((parts[0] if len(parts) > 1 else parts[0].split("_")[0], name, im))
    return out


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    from saevlm.device import DEVICE_HELP
    p.add_argument("--images", default="./images_imagenet",
                   help="an evaluation folder (saevlm make-eval-folder) (default: %(default)s, the path the "
                        "authors' similarity_baseline.py hard-codes)")
    p.add_argument("--protocol", default="authors", choices=PROTOCOLS,
                   help="authors: embed --class_names strings as they are, unbiased std, plain shuffle; "
                        "saevlm: names from the folder's class_names.json, first synonym, a shuffle that never "
                        "keeps an image's own name (default: %(default)s)")
    p.add_argument("--class_names", default=None,
                   help="JSON of class-name strings ({index: [wnid, name]} or {wnid: name}); required by the "
                        "authors' protocol (their list of ImageNet names, e.g. 'great_white_shark')")
    p.add_argument("--clip_model", "--model_name", dest="clip_model", default=DEFAULT_CLIP,
                   help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed for the random-pairs bound (default: 0)")
    p.add_argument("--output", default=None, help="JSON output (default: <images>/similarity_baseline.json)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")


def run_baseline(args) -> int:
    from saevlm.data.store import atomic_write_json
    from saevlm.device import resolve_device

    root = Path(args.images)
    if not root.is_dir():
        raise UserError(f"--images {root}: no such directory (make it with saevlm make-eval-folder)")
    authors = args.protocol == "authors"
    if args.class_names:
        names = load_class_names(args.class_names)
    elif authors:
        raise UserError("--class_names: the authors' protocol embeds their own ImageNet class-name strings "
                        "(e.g. 'tench', 'great_white_shark'); pass them as JSON ({index: [wnid, name]} or "
                        "{wnid: name}), or use --protocol saevlm for the names in the folder's class_names.json")
    else:
        names_f = root / "class_names.json"
        names = json.loads(names_f.read_text()) if names_f.is_file() else {}
    items = eval_items(root)
    missing = sorted({c for c, _, _ in items if c not in names or WNID.match(names[c].split(",")[0].strip())})
    if missing:
        src = f"--class_names {args.class_names}" if args.class_names else f"{root}/class_names.json"
        raise UserError(f"{src}: no class name for {len(missing)} of the folder's classes (first: {missing[0]}); "
                        f"the bounds need real names, not wnids: pass --class_names")
    clip = ClipEncoder(args.clip_model, resolve_device(args.device))
    img = clip.images([im for _, _, im in items])
    class_text = [names[c] if authors else names[c].split(",")[0].strip() for c, _, _ in items]
    txt = clip.text(class_text)
    true = (img * txt).sum(1)
    perm = np.random.default_rng(args.seed).permutation(len(items))
    if not authors:  # a derangement-like shuffle: an image never keeps its own class name
        for i in np.flatnonzero(np.array(class_text)[perm] == np.array(class_text)):
            perm[i], perm[(i + 1) % len(perm)] = perm[(i + 1) % len(perm)], perm[i]
    rand = (img * txt[perm]).sum(1)
    ddof = 1 if authors else 0
    from saevlm.config import paper_numbers
    res = {"kind": "similarity_baseline", "protocol": args.protocol,
           "true_class_names": {"mean": float(true.mean()), "std": float(true.std(ddof=ddof))},
           "shuffled_class_names": {"mean": float(rand.mean()), "std": float(rand.std(ddof=ddof))},
           "images": len(items), "clip_model": args.clip_model,
           "paper": {"true_class_names": paper_numbers()["steering"]["bound_true_names"],
                     "random_pairs": paper_numbers()["steering"]["bound_random_pairs"]}}  # configs/paper.yaml
    out = Path(args.output) if args.output else root / "similarity_baseline.json"
    atomic_write_json(out, res)
    print(f"images vs true class names: {true.mean():.3f} +- {true.std(ddof=ddof):.3f}; vs shuffled names: "
          f"{rand.mean():.3f} +- {rand.std(ddof=ddof):.3f} ({len(items)} images, protocol {args.protocol})")
    print(f"wrote {out}")
    return 0


def add_folder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset_name", default="imagenet", help="(default: %(default)s)")
    root = p.add_mutually_exclusive_group(required=True)
    root.add_argument("--data_path", help="dataset root")
    root.add_argument("--imagenet_root", help="the authors' flag: the ImageNet root (saevlm reads its --split; "
                                              "their script needed the train folder itself); implies --layout flat")
    p.add_argument("--split", default="train", help="(default: %(default)s: the paper uses ImageNet train)")
    p.add_argument("--output_dir", default="./images_imagenet",
                   help="where the copies go (default: %(default)s, the authors')")
    p.add_argument("--layout", default=None, choices=["flat", "folders"],
                   help="flat: <wnid>_<file> as the authors' imagenet_subset.py (the default with "
                        "--imagenet_root); folders: <wnid>/<file> (the default otherwise)")
    p.add_argument("--class_names", default=None,
                   help="JSON of class-name strings to store in class_names.json (see similarity-baseline)")


def run_folder(args) -> int:
    import shutil

    from saevlm.data.images import open_dataset
    from saevlm.data.store import atomic_write_json

    layout = args.layout or ("flat" if args.imagenet_root else "folders")
    images = open_dataset(args.dataset_name, args.imagenet_root or args.data_path, args.split)
    out = Path(args.output_dir)
    first: dict[int, int] = {}
    for i, label in enumerate(images.labels.tolist()):
        first.setdefault(label, i)
    for label, i in sorted(first.items()):
        cls, fname = images.classes[label], Path(images.paths[i]).name
        dest = out / cls / fname if layout == "folders" else out / f"{cls}_{fname}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(images.path(i), dest)
    names = dict(zip(images.classes, images.class_names or images.classes))
    if args.class_names:
        names.update(load_class_names(args.class_names))
    atomic_write_json(out / "class_names.json", names)
    print(f"wrote {len(first)} images (the first of each class, layout {layout}) to {out}")
    return 0
