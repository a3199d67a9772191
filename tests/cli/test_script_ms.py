"""scripts/monosemanticity_score.sh end to end (reduced configuration, tiny random models), and
every script's refusal of a missing dataset."""

import json
from pathlib import Path

import numpy as np

from helpers import REPO, SCRIPT_TRAIN, run_script
from saevlm.data.store import ActivationStore, check_same_images


def test_missing_dataset_stops_at_once(tmp_path):
    r = run_script("monosemanticity_score.sh", {"OUT_DIR": tmp_path}, expect_ok=False)
    assert r.returncode == 2 and "set IMAGENET_PATH" in r.stderr
    r = run_script("matryoshka_hierarchy.sh", {"INAT_PATH": tmp_path / "nope"}, expect_ok=False)
    assert r.returncode == 2 and "no such directory" in r.stderr
    (tmp_path / "in").mkdir()
    r = run_script("mllm_steering.sh", {"IMAGENET_PATH": tmp_path / "in"}, expect_ok=False)
    assert r.returncode == 2 and "has no train/ folder" in r.stderr


def test_monosemanticity_score_script(imagenet, tiny_clip_dir, tiny_dinov2_dir, tmp_path):
    import yaml

    out = tmp_path / "ms"
    # one change in the config changes what the script runs: k through the script's own default
    # (no K in the environment), auxk_alpha through `--config` alone
    config = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    config["commands"]["train"].update(k=3, auxk_alpha=0.05)
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config))
    env = {**{k: v for k, v in SCRIPT_TRAIN.items() if k != "K"}, "CONFIG": tmp_path / "paper.yaml",
           "IMAGENET_PATH": imagenet, "OUT_DIR": out, "MODEL": tiny_clip_dir, "LAYERS": "1 last",
           "EXPANSION_FACTORS": "2", "EMBEDDERS": tiny_dinov2_dir}
    run_script("monosemanticity_score.sh", env)
    hyper = json.loads((out / "sae" / Path(tiny_clip_dir).name / "post_projection" / "run.json").read_text())[
        "identity"]["hyperparameters"]
    assert hyper["k"] == 3 and hyper["auxk_alpha"] == 0.05
    mt, et = Path(tiny_clip_dir).name, Path(tiny_dinov2_dir).name
    emb = ActivationStore(out / "embeddings" / et / "imagenet_val")
    for slug, width in (("post_mlp_residual_1", 64), ("post_projection", 32)):
        train = ActivationStore(out / "activations" / mt / "imagenet_train" / slug)
        val = ActivationStore(out / "activations" / mt / "imagenet_val" / slug)
        assert train.shape == (32, width) and val.shape == (20, width)
        check_same_images(val, emb)
        raw = json.loads((val.path / f"ms_{et}" / "ms.json").read_text())
        assert raw["total"] == width
        run = json.loads((out / "sae" / mt / slug / "run.json").read_text())
        assert run["complete"] and [t["arch"] for t in run["identity"]["trainers"]] == \
            ["batch_top_k", "matryoshka_batch_top_k"]
        for t in ("trainer_0", "trainer_1"):
            codes = out / "codes" / mt / "imagenet_val" / slug / t
            m = json.loads((codes / f"ms_{et}" / "ms.json").read_text())
            assert m["total"] == 2 * width and m["sae"]["path"].endswith("checkpoints/ae_20.pt")
            assert abs(m["std"] - np.nanstd(np.load(codes / f"ms_{et}" / "scores.npy"), ddof=1)) < 1e-9
            # top images and uniqueness on TRAIN codes, as the paper
            tcodes = out / "codes" / mt / "imagenet_train" / slug / t
            top = np.load(tcodes / "top_images_16.npy")
            assert top.shape == (2 * width, 16) and top.max() < 32  # train has 32 images, val 20
            assert json.loads((tcodes / "uniqueness_16.json").read_text())["neurons"] <= 2 * width
    report = (out / "report.md").read_text()
    assert "Best MS over all scored neurons" in report and "| 1 |" in report and "| last |" in report and "R² authors (%)" in report
    assert (out / "report.html").read_text().count("data:image/png;base64") >= 4  # histograms and grids
    # a rerun skips every finished step and leaves the outputs alone
    shard = out / "activations" / mt / "imagenet_train" / "post_mlp_residual_1" / "acts_00000.npy"
    before = (shard.stat().st_mtime_ns, (out / "sae" / mt / "post_projection" / "trainer_0" / "ae.pt").stat().st_mtime_ns)
    r = run_script("monosemanticity_score.sh", env)
    assert "complete already, skipped" in r.stderr and "training complete already" in r.stdout
    after = (shard.stat().st_mtime_ns, (out / "sae" / mt / "post_projection" / "trainer_0" / "ae.pt").stat().st_mtime_ns)
    assert before == after
