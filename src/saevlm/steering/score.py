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
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, opt
from saevlm.data import artifacts as A
from saevlm.errors import UserError
from saevlm.models.clip import DEFAULT_CLIP, PROTOCOLS, ClipEncoder, list_images, neuron_image_embeddings  # noqa: F401
from saevlm.steering.options import DEFAULT_PROMPT, SteeringModelOptions


def first_word(answer: str) -> str:
    """saevlm's rule: the first alphabetic word, lower-cased ("" when there is none)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", answer)
    return words[0].lower() if words else ""


def authors_word(decoded_sequence: str) -> str:
    """The authors' rule, on the whole decoded sequence: the text after the last 'ASSISTANT: ',
    up to the first space, kept as is (punctuation and case included; may be empty)."""
    return decoded_sequence.split("ASSISTANT: ")[-1].split(" ")[0]


@dataclass(frozen=True, kw_only=True)
class SteeringScoreConfig(CommandConfig, SteeringModelOptions):
    """`saevlm steering-score`: steering score: CLIP similarity of steered answers."""

    COMMAND: ClassVar[str] = "steering-score"

    protocol: str = opt('authors', choices=['authors', 'saevlm'])
    """authors: their word rule, raw-embedding target, std over all pairs (the paper's Table 3); saevlm:
    cleaned word, unit-normalised target, std over neurons (default: %(default)s)"""
    top_images: str = opt(flags=('--top_images', '--hai_indices_path'))
    """top images of the steering SAE: top_images_16.npy or the authors' hai_indices_16.npy (saevlm extract
    --sae_path --mean_pool --top_k 16)"""
    clip_embeddings: str = opt(flags=('--clip_embeddings', '--embeddings_path'))
    """CLIP ViT-B/32 embedding store of the images the top indices refer to (saevlm embed)"""
    clip_model: str = opt('clip-vit-base-patch32', flags=('--model_name', '--clip_model'))
    """CLIP model for the text embeddings (the authors' --model_name; LLaVA is --llava_model) (default:
    %(default)s)"""
    images: str = opt('white', flags=('--images', '--images_path'))
    """folder of images to steer, or 'white' (default)"""
    neurons: int = opt(1000, flags=('--neurons', '--neuron_prefix'), mutex='neurons+neuron_list')
    """the first N neurons (default: %(default)s)"""
    neuron_list: list[int] | None = opt(None, mutex='neurons+neuron_list')
    """these neurons"""
    alpha: float = opt(100.0)
    """clamp value (default: %(default)s)"""
    steer: bool = opt(True, action="optional", extra=((("--no_steer",), "store_false"),))
    """clamp the latent (default) or not (--no-steer / --no_steer: the unsteered reference)"""
    zero_others: bool = opt(False, extra=((("--pre_zero",), argparse.BooleanOptionalAction),))
    """reconstruct mode: zero every other latent before clamping (the authors' --pre_zero / --no-pre_zero)"""
    prompt: str = opt(DEFAULT_PROMPT)
    """(default: %(default)r)"""
    output_dir: str | None = opt(None, mutex='output_dir+output_path')
    """labels.csv, scores.csv, steering_score.json go here"""
    output_path: str | None = opt(None, mutex='output_dir+output_path')
    """the authors' form: outputs go to its directory part (os.path.dirname, so './x/steering/' means
    './x/steering')"""


CONFIG = SteeringScoreConfig


def output_dir_of(args) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    return Path(os.path.dirname(args.output_path) or ".")


def _targets(args: SteeringScoreConfig):
    """(the neurons scored, their top images [N, k], the CLIP image-embedding store)."""
    from saevlm.data.store import ActivationStore
    from saevlm.data.topimages import load_top_images_for

    top_f = Path(args.top_images)
    if not top_f.is_file():
        raise UserError(f"--top_images {args.top_images}: no such file")
    k = int(np.load(top_f, mmap_mode="r").shape[1])
    top = load_top_images_for(top_f.parent, k, str(top_f))[0] if top_f.name.startswith("hai_indices") \
        else np.load(top_f)
    store = ActivationStore(args.clip_embeddings, field="clip_embeddings")
    neurons = list(args.neuron_list) if args.neuron_list else list(range(min(args.neurons, len(top))))
    bad = [n for n in neurons if not 0 <= n < len(top)]
    if bad:
        raise UserError(f"--neuron_list {bad[0]}: out of range (top images for {len(top)} neurons)")
    return neurons, top, store


def _answers(args: SteeringScoreConfig, mllm, sae, layer: int, neurons: list[int], resized: list
             ) -> list[tuple[int, str, str, str]]:
    """(neuron, image, answer, whole decoded sequence) for every neuron and image: steered with the
    neuron clamped to --alpha, or the plain answers (asked once per image)."""
    from tqdm import tqdm

    from saevlm.steering.intervention import sae_intervention

    labels: list[tuple[int, str, str, str]] = []
    with tqdm(total=len(neurons) * len(resized) if args.steer else len(resized), unit="answer",
              file=sys.stderr, dynamic_ncols=True, desc="steering-score") as bar:
        if not args.steer:
            answers = {}
            for name, im in resized:
                answers[name] = mllm.generate(args.prompt, im, args.max_new_tokens)
                bar.update(1)
            return [(n, name, *answers[name]) for n in neurons for name, _ in resized]
        for n in neurons:
            with sae_intervention(mllm, sae, layer, {n: args.alpha}, args.mode, args.zero_others):
                for name, im in resized:
                    labels.append((n, name, *mllm.generate(args.prompt, im, args.max_new_tokens)))
                    bar.update(1)
    return labels


def _csv_text(header: list, rows) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _mean_and_std(authors: bool, sims: np.ndarray, per_neuron: dict) -> tuple[float, float, str]:
    if authors:  # torch.std over all (neuron, image) pairs: unbiased
        return (float(sims.mean()), float(sims.std(ddof=1)) if len(sims) > 1 else float("nan"),
                "all (neuron, image) pairs, unbiased")
    vals = np.array(list(per_neuron.values()))
    return float(vals.mean()), float(vals.std()), "per-neuron means, ddof 0"


def run(args: SteeringScoreConfig) -> int:
    from saevlm.data.atomic import atomic_write_text, file_checksum
    from saevlm.paper import STEERING
    from saevlm.steering.options import load_models

    neurons, top, store = _targets(args)
    images = list_images(args.images, field="images")
    authors = args.protocol == "authors"
    mllm, sae, layer = load_models(args)
    clip = ClipEncoder(args.clip_model, mllm.device, args.processor_backend)
    target = neuron_image_embeddings(top[neurons], store, normalise=not authors)
    target_unit = target / np.linalg.norm(target, axis=1, keepdims=True)
    out = output_dir_of(args)
    out.mkdir(parents=True, exist_ok=True)
    size = mllm.image_size
    resized = [(name, im.resize((size, size)) if name in ("white", "black") else im) for name, im in images]
    labels = _answers(args, mllm, sae, layer, neurons, resized)
    # the authors' rule reads LLaVA-1.5's decoded sequence after "ASSISTANT: "; other families'
    # templates have no such marker, so it reads their answer (the new tokens) the same way
    whole = mllm.family.authors_word_rule
    words = [(authors_word(full) if whole else answer.split(" ")[0]) if authors else first_word(answer)
             for _, _, answer, full in labels]
    vocab = sorted(set(words))
    text = dict(zip(vocab, clip.text(vocab if authors else [w or "nothing" for w in vocab])))
    index = {n: i for i, n in enumerate(neurons)}
    sims = np.array([float(text[w] @ target_unit[index[n]]) for (n, _, _, _), w in zip(labels, words)])
    atomic_write_text(out / A.STEERING_LABELS_CSV, _csv_text(["neuron", "image", "answer", "word", "similarity"], (
        [n, name, answer, word, f"{s:.6f}"] for (n, name, answer, _), word, s in zip(labels, words, sims))))
    per_neuron = {n: float(np.mean(sims[[i for i, lab in enumerate(labels) if lab[0] == n]])) for n in neurons}
    atomic_write_text(out / A.STEERING_SCORES_CSV, _csv_text(["neuron", "score"],
                                                             ([n, f"{s:.6f}"] for n, s in per_neuron.items())))
    mean, std, std_over = _mean_and_std(authors, sims, per_neuron)
    summary = {"kind": "steering_score", "protocol": args.protocol, "mean": mean, "std": std,
               "std_over": std_over, "neurons": len(neurons), "images": len(images), "steered": args.steer,
               "alpha": args.alpha if args.steer else None, "layer": layer, "mode": args.mode,
               "zero_others": args.zero_others, "prompt": args.prompt, "sae": str(sae.path),
               # which weights (the explorer leaves out a result whose SAE was retrained since)
               "sae_weights": file_checksum(sae.path), "sae_dict_size": int(sae.dict_size),
               "llava_model": args.llava_model, "clip_model": args.clip_model,
               "processor_backend": args.processor_backend,
               "mllm_family": mllm.family.label,
               "word_rule": ("answer.split('ASSISTANT: ')[-1].split(' ')[0], as is" if whole
                             else "the new tokens' text .split(' ')[0], as is") if authors
                            else "first alphabetic word, lower-cased; '' -> 'nothing'",
               "target": "mean of raw image embeddings" if authors else "mean of unit-normalised image embeddings",
               "paper": STEERING}
    A.SteeringScore.write_json(out / A.STEERING_SCORE, summary)
    print(f"steering score ({'unsteered' if not args.steer else f'alpha {args.alpha:g}'}, protocol {args.protocol}): "
          f"{mean:.3f} +- {std:.3f} over {len(neurons)} neurons x {len(images)} image(s)")
    print(f"wrote {out}/labels.csv, scores.csv, steering_score.json")
    return 0
