"""The prepared device check (issue: ready for the GPU): one command, under 8 minutes on one H100.

It runs every GPU path a user takes first and writes one JSON and one markdown table:

1. extract: CLIP ViT-L/14-336 shapes (random weights), generated JPEGs on local disk, 16 decoding
   workers, block 22 CLS: images/s in fp32, ``--autocast fp16`` and ``--autocast bf16``; each
   store against fp32 (max relative error); the images/s of decoding alone (no model), so the
   share of time spent waiting for decoding can be read off.
2. train: the paper's SAE (d=1024, k=20, batch 4096) at x16 and x64: steps/s and peak GPU memory
   of the sparse engine (TF32 on, off, bf16 encoder GEMM) and of dictionary_learning's update;
   the projected minutes for 110,000 steps beside the README's roofline estimate.
3. ms: MS and top-16 at 50,000 images x 65,536 latents (k=20) through ``saevlm ms`` /
   ``saevlm top-images`` on the device and on the CPU (ratio).
4. steer: LLaVA-1.5 shape (CLIP-L/336 tower, a 2-layer 4096-wide Llama, fp16): two latents in a
   row at block 22 change the logits (asserted), and the hook's cost per generated token.
5. tests: the ``cuda``-marked tests (the sparse engine on CUDA against dictionary_learning's
   update and its CPU result, autocast extraction, data on device, pinned batches, sync count).

``--quick --device cpu`` runs every part at tiny shapes (tests/device/test_gpu_check.py runs it in the
suite, so this script cannot rot). On a bare GPU machine (docs/install.md):

    bash scripts/device_wheels.sh            # here: the wheels the device image lacks -> .whl/
    python3 benchmarks/gpu_check.py --out $OUT   # there, after installing .whl/ (see the docs)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the test helpers (tiny models, image folders)
sys.path.insert(0, str(Path(__file__).parent))

import saevlm  # noqa: E402,F401  (the torchvision fix before anything imports torchvision)

PARTS = ("extract", "train", "ms", "steer", "tests")
STEPS_110K = 110_000


# ------------------------------------------------------------------------------------ helpers
def saevlm_cmd(*argv, env=None) -> float:
    """Wall seconds of ``python -m saevlm argv`` in a fresh process; a failure stops the check."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "saevlm", *map(str, argv)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), **(env or {})})
    if r.returncode:
        raise RuntimeError(f"saevlm {argv[0]} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ------------------------------------------------------------------------------------ 1 extract
def part_extract(work: Path, device, quick: bool) -> dict:
    import numpy as np

    from bench_real_shapes import clip_l_config
    from helpers import make_image_folder, save_tiny_clip
    from saevlm.data.store import ActivationStore

    n = 48 if quick else 2048
    workers = 2 if quick else 16
    folder = make_image_folder(work / "png", num_classes=4, per_class=n // 4, size=40 if quick else 400)
    jpg = work / "jpg"  # JPEG on local disk, as ImageNet is
    from PIL import Image
    for p in sorted(folder.rglob("*.png")):
        out = jpg / p.parent.name / (p.stem + ".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(out, quality=90)
    if quick:
        model = save_tiny_clip(work / "clip", num_layers=4)
        layer = 2
    else:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
        model = work / "clip-l-336"
        CLIPVisionModelWithProjection(clip_l_config()).save_pretrained(model)
        CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(model)
        layer = 22
    common = ["extract", "--model_name", model, "--dataset_name", "imagefolder", "--data_path", jpg, "--layer", layer,
              "--cls_only", "--batch_size", 16 if quick else 256, "--num_workers", workers, "--device", device.type,
              "--no_progress"]
    result: dict = {"images": n, "workers": workers, "runs": {}}
    precisions = ["none", "fp16", "bf16"] if device.type == "cuda" else ["none"]
    stores = {}
    for autocast in precisions:
        out = work / f"acts_{autocast}"
        wall = saevlm_cmd(*common, "--output_dir", out, *(["--autocast", autocast] if autocast != "none" else []))
        stores[autocast] = ActivationStore(out / f"post_mlp_residual_{layer}")
        result["runs"][autocast] = {"wall_s": wall, "images_s": n / wall}
    ref = stores["none"].read(0, stores["none"].num_rows)
    for autocast, store in stores.items():
        got = store.read(0, store.num_rows)
        result["runs"][autocast]["max_rel_err_vs_fp32"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    # decoding alone: the same files, transforms and workers, no model (the ceiling of the loader)
    result["decode_only_images_s"] = decode_rate(jpg, model, workers, 16 if quick else 256)
    best = max(r["images_s"] for r in result["runs"].values())
    result["decode_bound_share"] = min(1.0, best / result["decode_only_images_s"])
    return result


def decode_rate(folder: Path, model: Path, workers: int, batch: int) -> float:
    """Images/s of the command's own loader (open_dataset + batches) with the model's transforms."""
    import numpy as np

    from saevlm.data.images import open_dataset
    from saevlm.models import load_encoder

    encoder = load_encoder(str(model), warn=lambda msg: None)
    images = open_dataset("imagefolder", folder, None)
    t0 = time.perf_counter()
    count = 0
    for good, *_ in images.batches(np.arange(len(images)), encoder.preprocess, batch, workers):
        count += len(good)
    return count / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ 2 train
def part_train(device, quick: bool) -> dict:
    import torch

    from saevlm.sae.archs import trainer_class
    from saevlm.sae.sparse_engine import SparseEngine

    d, k, batch = (64, 4, 256) if quick else (1024, 20, 4096)
    expansions = (2, 8) if quick else (16, 64)
    timed = 3 if quick else 20
    rows = []
    configs = [("sparse", "tf32"), ("sparse", "fp32"), ("sparse", "bf16"), ("dictionary_learning", "tf32"),
               ("dictionary_learning", "fp32")]
    if device.type != "cuda":
        configs = [("sparse", "fp32"), ("dictionary_learning", "fp32")]
    for expansion in expansions:
        F = d * expansion
        for engine, precision in configs:
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.manual_seed(0)
            _peak_reset(device)
            tr = trainer_class("batch_top_k")(steps=STEPS_110K, activation_dim=d, dict_size=F, k=k, layer=0,
                                              lm_name="gpu_check", warmup_steps=1, decay_start=STEPS_110K - 1,
                                              threshold_start_step=1, seed=0, device=str(device))
            update = (SparseEngine(tr, "batch_top_k", torch.bfloat16 if precision == "bf16" else None).update
                      if engine == "sparse" else tr.update)
            xs = [torch.randn(batch, d, device=device) for _ in range(4)]
            dead = F // 20  # 5 % dead before every step: AuxK runs, as mid-training
            for step in range(2):
                tr.num_tokens_since_fired[:dead] = tr.dead_feature_threshold + 1
                update(step, xs[step % 4])
            _sync(device)
            t0 = time.perf_counter()
            for step in range(2, 2 + timed):
                tr.num_tokens_since_fired[:dead] = tr.dead_feature_threshold + 1
                loss = update(step, xs[step % 4])
            float(loss)
            _sync(device)
            steps_s = timed / (time.perf_counter() - t0)
            rows.append({"expansion": expansion, "dict_size": F, "engine": engine, "precision": precision,
                         "steps_s": steps_s, "peak_gib": _peak_gib(device),
                         "minutes_110k": STEPS_110K / steps_s / 60})
            del tr, update, xs
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"d": d, "k": k, "batch": batch, "rows": rows, "readme_estimate": readme_estimate()}


def readme_estimate() -> dict:
    """The roofline minutes for one x64 SAE that benchmarks/README.md states (train-engine)."""
    text = (Path(__file__).with_name("README.md")).read_text()
    found = {}
    for engine, precision, minutes in re.findall(r"\| (sparse|dictionary_learning) \| (tf32|fp32) \| [^|]+ \| "
                                                 r"([\d.]+) min \|", text):
        found[f"{engine}/{precision}"] = float(minutes)
    return found


# ------------------------------------------------------------------------------------ 3 ms
def part_ms(work: Path, device, quick: bool) -> dict:
    from bench_ms import write_full_size

    n, latents = (2000, 1024) if quick else (50_000, 65_536)
    codes, emb = write_full_size(work, n=n, latents=latents, k=20, d=768)
    out = {"images": n, "latents": latents}
    for dev in dict.fromkeys([device.type, "cpu"]):
        out[f"ms_{dev}_s"] = saevlm_cmd("ms", "--activations_dir", codes, "--embeddings_path", emb, "--device", dev,
                                        "--no_progress", "--overwrite", "--no-uncertainty")
        out[f"ms_intervals_{dev}_s"] = saevlm_cmd("ms", "--activations_dir", codes, "--embeddings_path", emb,
                                                  "--device", dev, "--no_progress", "--overwrite")
        out[f"top16_{dev}_s"] = saevlm_cmd("top-images", "--activations_dir", codes, "--k", "16", "--device", dev,
                                           "--no_progress", "--output_dir", work / f"top_{dev}")
    return out


# ------------------------------------------------------------------------------------ 4 steer
def part_steer(work: Path, device, quick: bool) -> dict:
    import torch

    from saevlm.sae.checkpoint import load_sae
    from saevlm.steering.intervention import sae_intervention
    from saevlm.models.mllm import load_image, load_mllm

    if quick:
        from helpers import save_random_sae, save_tiny_llava
        llava_dir = save_tiny_llava(work / "llava")
        sae_dir = save_random_sae(work / "sae", 64, 256, layer=2)
        layer, size, dtype, tokens = 2, 32, "fp32", 8
    else:
        import torch as _torch

        from bench_real_shapes import save_llava_shape, save_sae
        _torch.manual_seed(0)
        llava_dir = save_llava_shape(work / "llava-1.5-shape")
        sae_dir = save_sae(work / "sae")
        layer, size, dtype, tokens = 22, 336, "fp16" if device.type == "cuda" else "fp32", 32
    llava = load_mllm(str(llava_dir), device, dtype)
    sae = load_sae(str(sae_dir))
    image, prompt = load_image("white", size), "What is shown in this image?"
    ref = llava.logits(prompt, image)  # the first forward (transformers may install hooks of its own)
    steered = []
    for latent in (3, 11):  # two latents in a row, one model object
        with sae_intervention(llava, sae, layer, {latent: 100.0}):
            steered.append(llava.logits(prompt, image))
    deltas = [float((s - ref).abs().max()) for s in steered]
    between = float((steered[0] - steered[1]).abs().max())
    if min(deltas) <= 1e-3 or between <= 1e-3:
        raise RuntimeError(f"steering at block {layer} had no effect: |logit change| {deltas}, {between} between")

    def generate_s(hooked: bool) -> float:
        import contextlib
        ctx = sae_intervention(llava, sae, layer, {3: 100.0}) if hooked else contextlib.nullcontext()
        with ctx:
            llava.generate(prompt, image, 2)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                inputs = llava.build_inputs(prompt, image)
                llava.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            _sync(device)
            return time.perf_counter() - t0

    plain, hooked = generate_s(False), generate_s(True)
    return {"layer": layer, "dtype": dtype, "logit_change": deltas, "between_latents": between, "tokens": tokens,
            "ms_per_token_plain": 1e3 * plain / tokens, "ms_per_token_hooked": 1e3 * hooked / tokens,
            "hook_ms_per_token": 1e3 * (hooked - plain) / tokens}


# ------------------------------------------------------------------------------------ 5 tests
def part_tests(device) -> dict:
    if device.type != "cuda":
        return {"skipped": "no GPU: the cuda-marked tests run only on one"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                        "tests/device/test_gpu_paths.py"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")})
    summary = (r.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": r.returncode, "summary": summary, "failures": r.stdout[-4000:] if r.returncode else ""}


# ------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"Device check (`python benchmarks/gpu_check.py{' --quick' if res['quick'] else ''} --device "
             f"{env['device']}`): {env['device_name']}, torch {env['torch']}, transformers {env['transformers']}, "
             f"Python {env['python']}; {res['total_s']:.0f} s in all.", ""]
    if "extract" in res:
        e = res["extract"]
        lines += [f"Extraction ({e['images']} JPEGs, {e['workers']} decoding workers, block CLS):", "",
                  "| precision | images/s | max rel. error vs fp32 |", "|---|---|---|"]
        for name, r in e["runs"].items():
            lines.append(f"| {'fp32' if name == 'none' else name} | {r['images_s']:.1f} | "
                         f"{r['max_rel_err_vs_fp32']:.2e} |")
        lines += ["", f"Decoding alone: {e['decode_only_images_s']:.1f} images/s; the fastest extraction runs at "
                  f"{100 * e['decode_bound_share']:.0f} % of it (near 100 %: the model waits for decoding).", ""]
    if "train" in res:
        t = res["train"]
        est = t["readme_estimate"]
        lines += [f"Training (BatchTopK, d={t['d']}, k={t['k']}, batch {t['batch']}, 5 % dead latents):", "",
                  "| SAE | engine | matmul | steps/s | peak GPU memory | minutes for 110k steps | README estimate |",
                  "|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            guess = est.get(f"{r['engine']}/{'tf32' if r['engine'] == 'sparse' else 'fp32'}") \
                if r["expansion"] == 64 and r["precision"] in ("tf32", "fp32") else None
            mem = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
            lines.append(f"| x{r['expansion']} ({r['dict_size']:,}) | {r['engine']} | {r['precision']} | "
                         f"{r['steps_s']:.2f} | {mem} | {r['minutes_110k']:.1f} | "
                         f"{'-' if guess is None else f'{guess:.1f} min (roofline)'} |")
        lines.append("")
    if "ms" in res:
        m = res["ms"]
        devs = [k[3:-2] for k in m if k.startswith("ms_") and not k.startswith("ms_intervals") and k.endswith("_s")]
        lines += [f"MS and top-16 at {m['images']:,} images x {m['latents']:,} latents (k=20), whole commands:", "",
                  "| command | " + " | ".join(devs) + " |", "|---|" + "---|" * len(devs)]
        for label, key in (("ms --no-uncertainty", "ms"), ("ms (with intervals)", "ms_intervals"),
                           ("top-images --k 16", "top16")):
            lines.append(f"| {label} | " + " | ".join(f"{m[f'{key}_{d}_s']:.1f} s" for d in devs) + " |")
        lines.append("")
    if "steer" in res:
        s = res["steer"]
        lines += [f"Steering at block {s['layer']} ({s['dtype']}): two latents in a row change the logits by "
                  f"{s['logit_change'][0]:.3g} and {s['logit_change'][1]:.3g} ({s['between_latents']:.3g} between "
                  f"them); {s['ms_per_token_plain']:.1f} ms per generated token without the hook, "
                  f"{s['ms_per_token_hooked']:.1f} ms with it ({s['hook_ms_per_token']:+.2f} ms).", ""]
    if "tests" in res:
        tst = res["tests"]
        lines.append("CUDA tests: " + (tst.get("skipped") or f"{tst['summary']} (rc {tst['returncode']})"))
    if res.get("errors"):
        lines += ["", "Errors: " + "; ".join(f"{k}: {v.splitlines()[0][:200]}" for k, v in res["errors"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a minute on CPU)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "_work"),
                    help="where gpu_check.json and gpu_check.md go (default: $OUT, else benchmarks/_work)")
    args = ap.parse_args(argv)
    import torch
    import transformers

    from saevlm.device import resolve_device
    from saevlm.errors import UserError

    try:
        device = resolve_device(args.device, "--device")
    except UserError as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    res: dict = {"quick": args.quick, "environment": {
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "python": platform.python_version()}, "errors": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for part in args.parts:
            start = time.perf_counter()
            print(f"gpu_check: {part} ...", file=sys.stderr, flush=True)
            try:  # one part failing must not hide the others' numbers
                if part == "extract":
                    res[part] = part_extract(work / part, device, args.quick)
                elif part == "train":
                    res[part] = part_train(device, args.quick)
                elif part == "ms":
                    res[part] = part_ms(work / part, device, args.quick)
                elif part == "steer":
                    res[part] = part_steer(work / part, device, args.quick)
                else:
                    res[part] = part_tests(device)
            except Exception as err:  # noqa: BLE001 - recorded, reported, and the exit status says so
                import traceback
                res["errors"][part] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"
            print(f"gpu_check: {part} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    res["total_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    from saevlm.data.atomic import atomic_write_json, atomic_write_text
    atomic_write_json(args.out / "gpu_check.json", res)
    text = markdown(res)
    atomic_write_text(args.out / "gpu_check.md", text)
    print(text)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    failed = bool(res["errors"]) or res.get("tests", {}).get("returncode", 0) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
