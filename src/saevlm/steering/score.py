"""Steering score (the authors' ``steering_score.py`` and ``similarity_baseline.py``; PAPER.md §5).

For a neuron k and an image: LLaVA answers "What is shown in this image? Use exactly one word!"
(5 new tokens) with latent k clamped to alpha on every token of vision block 22; the score is the
cosine between the CLIP ViT-B/32 text embedding of the answer's first word and the mean CLIP
ViT-B/32 image embedding of the neuron's 16 highest-activating images (unit-normalised, then
averaged). Per neuron: the mean over images; reported: mean ± std over neurons. ``--no_steer``
gives the unsteered reference. Bounds (``similarity-baseline``): images against their true class
names, and against shuffled names.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

from saevlm.errors import UserError
from saevlm.steering.steer import DEFAULT_PROMPT, add_model_arguments

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
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", answer)
    return words[0].lower() if words else ""


def list_images(spec: str) -> list[tuple[str, object]]:
    """(name, PIL image) for a folder (sorted, recursive) or 'white'."""
    from saevlm.data.images import IMG_EXTENSIONS
    from saevlm.steering.llava import load_image

    if spec in ("white", "black"):
        return [(spec, load_image(spec))]
    root = Path(spec)
    if not root.is_dir():
        raise UserError(f"--images {spec}: not a directory (or 'white')")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise UserError(f"--images {spec}: no images inside")
    return [(str(f.relative_to(root)), load_image(str(f))) for f in files]


def neuron_image_embeddings(top_images: np.ndarray, store) -> np.ndarray:
    """Mean unit-normalised CLIP image embedding of each neuron's top images ([K, d])."""
    ids = store.image_ids()
    row_of = {int(i): r for r, i in enumerate(ids)}
    missing = [int(i) for i in np.unique(top_images) if int(i) not in row_of]
    if missing:
        raise UserError(f"--clip_embeddings {store.path}: no embedding for image {missing[0]} of the top "
                        f"images ({len(missing)} missing); embed the dataset the top images index")
    emb = store.read(0, store.num_rows)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows = np.vectorize(row_of.get)(top_images)
    return emb[rows].mean(1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--top_images", required=True,
                   help="top_images_16.npy of the steering SAE (saevlm top-images --pool mean on its codes)")
    p.add_argument("--clip_embeddings", required=True,
                   help="CLIP ViT-B/32 embedding store of the images the top indices refer to (saevlm embed)")
    p.add_argument("--clip_model", default=DEFAULT_CLIP, help="for text embeddings (default: %(default)s)")
    p.add_argument("--images", default="white", help="folder of images to steer, or 'white' (default)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--neurons", type=int, default=1000, help="the first N neurons (default: %(default)s)")
    sel.add_argument("--neuron_list", type=int, nargs="+", help="these neurons")
    p.add_argument("--alpha", type=float, default=100.0, help="clamp value (default: %(default)s)")
    p.add_argument("--no_steer", action="store_true", help="unsteered answers (the reference row)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="(default: %(default)r)")
    p.add_argument("--output_dir", required=True, help="labels.csv, scores.csv, summary.json")


def run(args) -> int:
    from tqdm import tqdm

    from saevlm.data.store import ActivationStore, atomic_write_json
    from saevlm.steering.intervention import sae_intervention
    from saevlm.steering.steer import load_models

    top = np.load(args.top_images) if Path(args.top_images).is_file() else None
    if top is None:
        raise UserError(f"--top_images {args.top_images}: no such file")
    store = ActivationStore(args.clip_embeddings, flag="--clip_embeddings")
    neurons = list(args.neuron_list) if args.neuron_list else list(range(min(args.neurons, len(top))))
    bad = [n for n in neurons if not 0 <= n < len(top)]
    if bad:
        raise UserError(f"--neuron_list {bad[0]}: out of range (top images for {len(top)} neurons)")
    images = list_images(args.images)
    llava, sae, layer = load_models(args)
    clip = ClipEncoder(args.clip_model, llava.device)
    target = neuron_image_embeddings(top[neurons], store)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels: list[tuple[int, str, str]] = []
    size = int(getattr(llava.model.config.vision_config, "image_size", 336))
    resized = [(name, im.resize((size, size)) if name in ("white", "black") else im) for name, im in images]
    with tqdm(total=len(neurons) * len(images) if not args.no_steer else len(images), unit="answer",
              file=sys.stderr, dynamic_ncols=True, desc="steering-score") as bar:
        if args.no_steer:
            answers = {}
            for name, im in resized:
                answers[name] = llava.prompt(args.prompt, im, args.max_new_tokens)
                bar.update(1)
            labels = [(n, name, answers[name]) for n in neurons for name, _ in resized]
        else:
            for n in neurons:
                with sae_intervention(llava, sae, layer, {n: args.alpha}, args.mode, args.zero_others):
                    for name, im in resized:
                        labels.append((n, name, llava.prompt(args.prompt, im, args.max_new_tokens)))
                        bar.update(1)
    words = [first_word(a) for _, _, a in labels]
    vocab = sorted(set(words))
    text = dict(zip(vocab, clip.text([w or "nothing" for w in vocab])))
    index = {n: i for i, n in enumerate(neurons)}
    sims = np.array([float(text[w] @ target[index[n]]) for (n, _, _), w in zip(labels, words)])
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["neuron", "image", "answer", "word", "similarity"])
        for (n, name, answer), word, s in zip(labels, words, sims):
            w.writerow([n, name, answer, word, f"{s:.6f}"])
    per_neuron = {n: float(np.mean(sims[[i for i, (m, _, _) in enumerate(labels) if m == n]])) for n in neurons}
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["neuron", "score"])
        for n, s in per_neuron.items():
            w.writerow([n, f"{s:.6f}"])
    vals = np.array(list(per_neuron.values()))
    summary = {"mean": float(vals.mean()), "std": float(vals.std()), "neurons": len(neurons),
               "images": len(images), "steered": not args.no_steer, "alpha": None if args.no_steer else args.alpha,
               "layer": layer, "mode": args.mode, "prompt": args.prompt, "sae": str(sae.path),
               "model": args.model_name, "clip_model": args.clip_model,
               "paper": {"steered_white": "0.259 +- 0.036", "steered_imagenet": 0.263,
                         "unsteered_white": 0.212, "unsteered_imagenet": 0.211}}
    atomic_write_json(out / "summary.json", summary)
    print(f"steering score ({'unsteered' if args.no_steer else f'alpha {args.alpha:g}'}): "
          f"{summary['mean']:.3f} +- {summary['std']:.3f} over {len(neurons)} neurons x {len(images)} image(s)")
    print(f"wrote {out}/labels.csv, scores.csv, summary.json")
    return 0


# ----------------------------------------------------------------------------- bounds
def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    from saevlm.device import DEVICE_HELP
    p.add_argument("--images", required=True, help="an evaluation folder (saevlm make-eval-folder): <class>/<image>")
    p.add_argument("--clip_model", default=DEFAULT_CLIP, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed for the random-pairs bound (default: 0)")
    p.add_argument("--output", default=None, help="JSON output (default: <images>/similarity_baseline.json)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")


def run_baseline(args) -> int:
    from saevlm.data.store import atomic_write_json
    from saevlm.device import resolve_device

    root = Path(args.images)
    if not root.is_dir():
        raise UserError(f"--images {root}: no such directory")
    names_f = root / "class_names.json"
    names = json.loads(names_f.read_text()) if names_f.is_file() else {}
    items = [(cls, name, im) for name, im in list_images(str(root)) for cls in [Path(name).parts[0]]]
    if any(len(Path(n).parts) < 2 for _, n, _ in items):
        raise UserError(f"--images {root}: expected <class>/<image> (saevlm make-eval-folder writes this)")
    clip = ClipEncoder(args.clip_model, resolve_device(args.device))
    img = clip.images([im for _, _, im in items])
    class_text = [names.get(c, c).split(",")[0].strip() for c, _, _ in items]
    txt = clip.text(class_text)
    true = (img * txt).sum(1)
    perm = np.random.default_rng(args.seed).permutation(len(items))
    # shuffled names: a derangement-like shuffle (an image never keeps its own class name)
    for i in np.flatnonzero(np.array(class_text)[perm] == np.array(class_text)):
        perm[i], perm[(i + 1) % len(perm)] = perm[(i + 1) % len(perm)], perm[i]
    rand = (img * txt[perm]).sum(1)
    res = {"true_class_names": {"mean": float(true.mean()), "std": float(true.std())},
           "shuffled_class_names": {"mean": float(rand.mean()), "std": float(rand.std())},
           "images": len(items), "clip_model": args.clip_model,
           "paper": {"true_class_names": 0.283, "random_pairs": 0.185}}
    out = Path(args.output) if args.output else root / "similarity_baseline.json"
    atomic_write_json(out, res)
    print(f"images vs true class names: {true.mean():.3f} +- {true.std():.3f}; vs shuffled names: "
          f"{rand.mean():.3f} +- {rand.std():.3f} ({len(items)} images)")
    print(f"wrote {out}")
    return 0


def add_folder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset_name", default="imagenet", help="(default: %(default)s)")
    p.add_argument("--data_path", required=True, help="dataset root")
    p.add_argument("--split", default="train", help="(default: %(default)s: the paper uses ImageNet train)")
    p.add_argument("--output_dir", required=True, help="<class>/<image> copies + class_names.json")


def run_folder(args) -> int:
    import shutil

    from saevlm.data.images import open_dataset
    from saevlm.data.store import atomic_write_json

    images = open_dataset(args.dataset_name, args.data_path, args.split)
    out = Path(args.output_dir)
    first: dict[int, int] = {}
    for i, label in enumerate(images.labels.tolist()):
        first.setdefault(label, i)
    for label, i in sorted(first.items()):
        dest = out / images.classes[label] / Path(images.paths[i]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(images.path(i), dest)
    names = images.class_names or images.classes
    atomic_write_json(out / "class_names.json", dict(zip(images.classes, names)))
    print(f"wrote {len(first)} images (the first of each class) to {out}")
    return 0
