"""Neuron grids and MS histograms from a real (tiny) image pipeline."""

import json

import numpy as np
from PIL import Image

from helpers import run_cli
from saevlm import api


def test_pipeline_grids_and_histogram(tiny_clip_dir, tmp_path):
    from helpers import make_image_folder

    root = make_image_folder(tmp_path / "imgs", num_classes=4, per_class=10, size=48)
    common = ["--dataset_name", "imagefolder", "--data_path", root, "--batch_size", "8",
              "--num_workers", "0", "--device", "cpu", "--no_progress"]
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "last", "--attachment_point",
                   "post_projection", "--output_dir", tmp_path / "acts", *common) == 0
    assert run_cli("embed", "--model_name", tiny_clip_dir, "--embeddings_path", tmp_path / "emb", *common) == 0
    store = tmp_path / "acts" / "post_projection"
    assert api.run("train", layout="trainers", activations_dir=store, checkpoints_dir=tmp_path / "ck",
                   sae_model=["matryoshka_batch_top_k"], expansion_factor=[2], k=4, steps=30, batch_size=16,
                   warmup_steps=2, threshold_start_step=5, group_fractions=[0.25, 0.75], device="cpu",
                   no_progress=True) == 0
    assert api.run("encode", sae_path=tmp_path / "ck" / "trainer_0", activations_dir=store,
                   output_dir=tmp_path / "codes", no_progress=True) == 0
    for s in (store, tmp_path / "codes"):
        assert api.run("ms", activations_dir=s, embeddings_path=tmp_path / "emb", device="cpu", no_progress=True) == 0
        assert api.run("top-images", activations_dir=s, device="cpu", no_progress=True) == 0
    assert api.run("visualize", activations_dir=tmp_path / "codes", per_group=2, raw_ms=store) == 0
    figs = tmp_path / "codes" / "figures"
    names = json.loads((figs / "index.json").read_text())
    # the first 2 LIVE neurons of each of the 2 groups (sizes 16 and 48) plus the histogram: dead
    # latents (never active, so their "top images" are just the first images) are left out
    best = np.load(tmp_path / "codes" / "top_images_16_values.npy")[:, 0]
    assert (best == 0).sum() > 0  # the tiny SAE does have dead latents, so the rule is exercised
    expected = [int(n) for lo, hi in ((0, 16), (16, 64)) for n in (np.flatnonzero(best[lo:hi] > 0)[:2] + lo)]
    assert names == ["ms_histogram.png"] + [f"neuron_{n:06d}.png" for n in expected]
    assert all(best[n] > 0 for n in expected)
    for n in names:
        with Image.open(figs / n) as im:
            assert im.format == "PNG" and im.size[0] > 300
            assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    # errors are clear and leave the figures alone
    before = (figs / "ms_histogram.png").read_bytes()
    assert run_cli("visualize", "--activations_dir", tmp_path / "codes", "--neurons", "999") == 2
    assert (figs / "ms_histogram.png").read_bytes() == before
    w = tmp_path / "w"
    assert api.run("synthetic", output_dir=w, num_train=100, num_val=50) == 0
    assert api.run("top-images", activations_dir=w / "val", device="cpu", no_progress=True) == 0
    assert run_cli("visualize", "--activations_dir", w / "val") == 2
