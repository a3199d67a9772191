"""Benchmark: the paper's models at their real sizes with random weights, on CPU, a few images.

Catches what tiny models hide (shapes, dtypes, memory). Each case runs the real command in a
subprocess and records wall time and peak RSS (``resource.getrusage`` of the child):

1. CLIP ViT-L/14-336 (24 blocks, width 1024, 577 tokens, projection 768): ``saevlm extract``
   at blocks 11 17 22 23 + the projection, CLS, in one pass.
2. SigLIP so400m/14-384 (27 blocks, width 1152, 729 tokens): ``extract`` at 11 16 21 + the
   pooled output (no CLS: 2 random tokens).
3. The steering top-16 protocol at its real shape: block 22 of CLIP-L (577 tokens x 1024) through
   a 65,536-latent Matryoshka SAE, ``extract --sae_path --mean_pool --top_k 16`` (mean_t
   encode(x_t), running top-16), against the naive route on the same images: all tokens stored,
   every token encoded densely, pooled, then argsort per latent; images/s as a ratio.
4. LLaVA-1.5 with the real vision tower (CLIP-L-336), projector 1024 -> 4096,
   vision_feature_layer -2, and a 4096-wide Llama cut to 2 layers: ``saevlm steer`` with the SAE
   hook at block 22 (x64 Matryoshka), 5 new tokens. Then, in one process and one model object,
   two latents steered in a row at block 22: the benchmark ASSERTS that each changes the logits
   (the block LLaVA reads; transformers 5 records it with hooks of its own, which once made every
   latent after the first a no-op).

    python benchmarks/bench_real_shapes.py [--images 4] [--cases extract top16 steer] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers (tiny models)
from bench_extract_multipoint import _write_section  # noqa: E402

import saevlm  # noqa: E402,F401


def run_cmd(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB of the child) of ``python -m saevlm argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "saevlm", *map(str, argv)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"saevlm {argv[0]} failed:\n{r.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 2**20


def clip_l_config():
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


def save_models(root: Path) -> dict:
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionModelWithProjection, SiglipImageProcessor,
                              SiglipVisionConfig, SiglipVisionModel)

    torch.manual_seed(0)
    out = {}
    clip = root / "clip-l-336"
    CLIPVisionModelWithProjection(clip_l_config()).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(clip)
    out["clip"] = clip
    sig = root / "siglip-so400m-384"
    SiglipVisionModel(SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                         num_attention_heads=16, image_size=384, patch_size=14)).save_pretrained(sig)
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(sig)
    out["siglip"] = sig
    out["llava"] = save_llava_shape(root / "llava-1.5-shape")
    return out


def save_llava_shape(llava: Path) -> Path:
    """LLaVA-1.5's real vision tower (CLIP-L/336) and projector with a 4096-wide Llama cut to 2
    layers, fp16, random weights, with its processor."""
    from transformers import (CLIPImageProcessor, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    from helpers import LLAVA_CHAT_TEMPLATE, tiny_tokenizer

    cfg = LlavaConfig(vision_config=clip_l_config(),
                      text_config=LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                              num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32),
                      image_token_id=999, vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg).half()
    model.generation_config.pad_token_id = 3
    model.save_pretrained(llava)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                      crop_size={"height": 336, "width": 336}),
                   tokenizer=tiny_tokenizer(), patch_size=14, vision_feature_select_strategy="default",
                   image_token="<image>", num_additional_image_tokens=1,
                   chat_template=LLAVA_CHAT_TEMPLATE).save_pretrained(llava)
    return llava


def save_sae(path: Path, dim: int = 1024, expansion: int = 64) -> Path:
    import torch
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE

    from saevlm.sae.archs import group_sizes

    n = dim * expansion
    torch.manual_seed(1)
    ae = MatryoshkaBatchTopKSAE(dim, n, 20, group_sizes([0.0625, 0.125, 0.25, 0.5625], n))
    with torch.no_grad():
        ae.b_enc.fill_(-0.5)  # a few hundred latents fire per token, as a trained SAE's do
        ae.threshold.fill_(0.3)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(ae.state_dict(), path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "MatroyshkaBatchTopKSAE",
                                                              "trainer_class": "MatroyshkaBatchTopKTrainer"}}))
    return path


def naive_pooled_top16(store_dir: Path, sae_dir: Path) -> float:
    """All tokens stored -> each image's tokens encoded densely -> mean -> argsort per latent."""
    import numpy as np
    import torch

    from saevlm.data.store import ActivationStore
    from saevlm.sae.inference import encode_batch
    from saevlm.sae.checkpoint import load_sae

    t0 = time.time()
    store = ActivationStore(store_dir)
    sae = load_sae(str(sae_dir))
    rows = store.row_index()
    n_img = int(rows[:, 0].max()) + 1
    pooled = np.zeros((n_img, sae.dict_size), np.float32)
    with torch.no_grad():
        for i in range(n_img):
            idx = np.flatnonzero(rows[:, 0] == i)
            x = torch.from_numpy(store.read(int(idx[0]), int(idx[-1]) + 1))
            pooled[i] = encode_batch(sae, x).mean(0).numpy()
    np.argsort(pooled, axis=0, kind="stable")[-16:]
    return time.time() - t0


def assert_steering_takes_effect(llava_dir: Path, sae_dir: Path, latents=(3, 11), alpha: float = 100.0) -> str:
    """Two latents in a row at block 22 of one LLaVA object: each steered forward must differ from
    the unsteered one (and from each other). Returns a one-line account for the README."""
    import torch

    from saevlm.sae.checkpoint import load_sae
    from saevlm.steering.intervention import sae_intervention
    from saevlm.models.mllm import load_image, load_mllm

    llava = load_mllm(str(llava_dir), torch.device("cpu"), "fp32")
    sae = load_sae(str(sae_dir))
    image = load_image("white", 336)
    prompt = "What is shown in this image?"
    ref = llava.logits(prompt, image)  # the first forward installs transformers' recording hooks
    steered = []
    for latent in latents:
        with sae_intervention(llava, sae, 22, {latent: alpha}):
            steered.append(llava.logits(prompt, image))
    deltas = [float((s - ref).abs().max()) for s in steered]
    between = float((steered[0] - steered[1]).abs().max())
    if min(deltas) <= 1e-3 or between <= 1e-3:
        raise SystemExit(f"steering at block 22 had no effect: max |logit change| {deltas} vs unsteered, "
                         f"{between:.3g} between the two latents")
    return (f"Steering at block 22, latents {latents[0]} then {latents[1]} in one model object (alpha {alpha:g}): "
            f"max |logit change| vs unsteered {deltas[0]:.3g} and {deltas[1]:.3g}, {between:.3g} between them "
            f"(asserted > 1e-3).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--cases", nargs="+", default=["extract", "top16", "steer"],
                    choices=["extract", "top16", "steer"], help="which cases to run (default: all)")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    if args.write_readme and len(args.cases) < 3:
        raise SystemExit("--write-readme needs every case (the table is written whole)")
    from helpers import make_image_folder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_image_folder(tmp / "imgs", num_classes=1, per_class=max(args.images, 16), size=400)
        models = save_models(tmp / "models")
        common = ["--dataset_name", "imagefolder", "--data_path", data, "--batch_size", "2", "--num_workers", "0",
                  "--device", "cpu", "--no_progress", "--max_images", args.images]
        if "extract" in args.cases:
            wall, rss = run_cmd(["extract", "--model_name", models["clip"], "--layer", "11", "17", "22", "23",
                                 "last", "--cls_only", "--output_dir", tmp / "clip", *common])
            rows.append(("CLIP ViT-L/14-336: extract 11 17 22 23 + projection, CLS", args.images, wall, rss))
            wall, rss = run_cmd(["extract", "--model_name", models["siglip"], "--layer", "11", "16", "21", "last",
                                 "--cls_only", "--output_dir", tmp / "siglip", *common])
            rows.append(("SigLIP so400m/14-384: extract 11 16 21 + pooled (2 random tokens)", args.images, wall, rss))
        sae = save_sae(tmp / "sae")
        n_top = 16
        common16 = [c if c != str(args.images) else str(n_top) for c in map(str, common)]
        wall_top = wall_naive = float("nan")
        if "top16" in args.cases:
            wall_top, rss = run_cmd(["extract", "--model_name", models["clip"], "--layer", "22", "--mean_pool",
                                     "--sae_path", sae, "--top_k", "16", "--output_dir", tmp / "top", *common16])
            rows.append(("steering top-16: block 22 (577 tok) -> x64 SAE (65,536) -> mean_t encode(x_t) -> top-16",
                         n_top, wall_top, rss))
            wall_all, _ = run_cmd(["extract", "--model_name", models["clip"], "--layer", "22",
                                   "--output_dir", tmp / "alltok", *common16])
            wall_naive = wall_all + naive_pooled_top16(tmp / "alltok" / "post_mlp_residual_22", sae)
            rows.append(("naive: all tokens stored, then encode + dense pooling + argsort", n_top, wall_naive,
                         float("nan")))
        steering_line = ""
        if "steer" in args.cases:
            wall, rss = run_cmd(["steer", "--sae_path", sae, "--llava_model", models["llava"], "--layer", "22",
                                 "--neuron", "3", "--alpha", "100", "--prompt", "What is shown in this image?",
                                 "--image", "white", "--max_new_tokens", "5", "--device", "cpu", "--dtype", "fp32"])
            rows.append(("LLaVA-1.5 shape (CLIP-L tower, 4096-wide Llama x 2 layers): steer at block 22, fp32", 1,
                         wall, rss))
            steering_line = assert_steering_takes_effect(models["llava"], sae)
    lines = ["Real shapes, random weights, CPU (`python benchmarks/bench_real_shapes.py --write-readme`; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores):", "",
             "| case | images | wall (s) | peak RSS (GiB) |", "|---|---|---|---|"]
    for name, n, wall, rss in rows:
        lines.append(f"| {name} | {n} | {wall:.1f} | {'-' if rss != rss else f'{rss:.2f}'} |")
    if "top16" in args.cases:
        lines += ["", f"Steering top-16 at the paper's shape: **{wall_naive / wall_top:.2f}x** faster than the "
                  f"naive route ({n_top / wall_top:.2f} vs {n_top / wall_naive:.2f} images/s, model load included "
                  f"in both), and it never stores per-token activations (577 x 1024 floats per image) or pooled "
                  f"codes (65,536 per image)."]
    if steering_line:
        lines += ["", steering_line]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "real-shapes", text)


if __name__ == "__main__":
    main()
