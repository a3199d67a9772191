"""``saevlm similarity-baseline``: the bounds of the steering score (arXiv 2504.02821, Table 3):
CLIP similarity of each evaluation image with its true class name, and with a shuffled one.

``--protocol authors`` embeds the authors' class-name strings (``--class_names``) as they are;
``saevlm`` uses the first synonym of the folder's class_names.json and a shuffle that never keeps
an image's own name (see saevlm.steering.score for the protocols).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, DeviceOption, opt
from saevlm.data import artifacts as A
from saevlm.data.images import load_class_names
from saevlm.errors import UserError
from saevlm.models.clip import ClipEncoder, list_images

WNID = re.compile(r"^n\d{8}$")


def eval_items(root: Path, flag: str = "--images") -> list[tuple[str, str, object]]:
    """(wnid, file name, image) of an eval folder: saevlm's ``<wnid>/<file>`` or the authors'
    flat ``<wnid>_<file>`` (their imagenet_subset.py; the class is ``name.split('_')[0]``)."""
    out = []
    for name, im in list_images(str(root), field=flag.lstrip("-")):
        parts = Path(name).parts
        out.append((parts[0] if len(parts) > 1 else parts[0].split("_")[0], name, im))
    return out


@dataclass(frozen=True, kw_only=True)
class SimilarityBaselineConfig(CommandConfig, DeviceOption):
    """`saevlm similarity-baseline`: steering-score bounds: true / shuffled names."""

    COMMAND: ClassVar[str] = "similarity-baseline"

    images: str = opt('./images_imagenet')
    """an evaluation folder (saevlm make-eval-folder) (default: %(default)s, the path the authors'
    similarity_baseline.py hard-codes)"""
    protocol: str = opt('authors', choices=['authors', 'saevlm'])
    """authors: embed --class_names strings as they are, unbiased std, plain shuffle; saevlm: names from
    the folder's class_names.json, first synonym, a shuffle that never keeps an image's own name
    (default: %(default)s)"""
    class_names: str | None = opt(None)
    """JSON of class-name strings ({index: [wnid, name]} or {wnid: name}); required by the authors'
    protocol (their list of ImageNet names, e.g. 'great_white_shark')"""
    clip_model: str = opt('clip-vit-base-patch32', flags=('--clip_model', '--model_name'))
    """(default: %(default)s)"""
    seed: int = opt(0)
    """shuffle seed for the random-pairs bound (default: 0)"""
    output: str | None = opt(None)
    """JSON output (default: <images>/similarity_baseline.json)"""
    processor_backend: str = opt('pil', choices=['pil', 'torchvision'])
    """image preprocessing of LLaVA and CLIP: pil (the authors' transformers-4.46 path, as extract uses) or
    torchvision (transformers 5's default; moves similarities by about 1e-5) (default: %(default)s)"""


CONFIG = SimilarityBaselineConfig


def run(args: SimilarityBaselineConfig) -> int:
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
        names_f = root / A.EVAL_CLASS_NAMES
        names = json.loads(names_f.read_text()) if names_f.is_file() else {}
    items = eval_items(root)
    missing = sorted({c for c, _, _ in items if c not in names or WNID.match(names[c].split(",")[0].strip())})
    if missing:
        src = f"--class_names {args.class_names}" if args.class_names else f"{root}/class_names.json"
        raise UserError(f"{src}: no class name for {len(missing)} of the folder's classes (first: {missing[0]}); "
                        f"the bounds need real names, not wnids: pass --class_names")
    clip = ClipEncoder(args.clip_model, resolve_device(args.device), args.processor_backend)
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
           "processor_backend": args.processor_backend,
           "paper": {"true_class_names": paper_numbers()["steering"]["bound_true_names"],
                     "random_pairs": paper_numbers()["steering"]["bound_random_pairs"]}}  # configs/paper.yaml
    out = Path(args.output) if args.output else root / A.SIMILARITY_BASELINE
    A.SimilarityBaseline.write_json(out, res)
    print(f"images vs true class names: {true.mean():.3f} +- {true.std(ddof=ddof):.3f}; vs shuffled names: "
          f"{rand.mean():.3f} +- {rand.std(ddof=ddof):.3f} ({len(items)} images, protocol {args.protocol})")
    print(f"wrote {out}")
    return 0
