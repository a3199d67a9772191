"""The experiment scripts end to end, in a reduced configuration on tiny random models.

Each script runs as users run it (bash, environment variables), on a generated ImageFolder /
iNat tree and tiny models saved to disk; every stage's outputs are checked, and a rerun resumes
(finished steps skipped, outputs unchanged).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image_folder
from saevlm.data.store import ActivationStore, check_same_images

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"K": "4", "STEPS": "30", "BATCH_SIZE": "16", "WARMUP_STEPS": "2", "THRESHOLD_START_STEP": "5",
         "SAVE_STEP": "20", "DEVICE": "cpu", "EXTRACT_BATCH_SIZE": "8", "NUM_WORKERS": "0"}


def _run(script, env, expect_ok=True):
    r = subprocess.run(["bash", str(ROOT / "scripts" / script)], env={**os.environ, "HF_HUB_OFFLINE": "1",
                       "PYTHON": sys.executable, **{k: str(v) for k, v in env.items()}},
                       capture_output=True, text=True, timeout=1200)
    if expect_ok:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    make_image_folder(root / "train", num_classes=4, per_class=8, class_names=[f"n0{i}" for i in range(4)])
    make_image_folder(root / "val", num_classes=4, per_class=5, seed=3, class_names=[f"n0{i}" for i in range(4)])
    return root


def test_missing_dataset_stops_at_once(tmp_path):
    r = _run("monosemanticity_score.sh", {"OUT_DIR": tmp_path}, expect_ok=False)
    assert r.returncode == 2 and "set IMAGENET_PATH" in r.stderr
    r = _run("matryoshka_hierarchy.sh", {"INAT_PATH": tmp_path / "nope"}, expect_ok=False)
    assert r.returncode == 2 and "no such directory" in r.stderr
    (tmp_path / "in").mkdir()
    r = _run("mllm_steering.sh", {"IMAGENET_PATH": tmp_path / "in"}, expect_ok=False)
    assert r.returncode == 2 and "has no train/ folder" in r.stderr


def test_monosemanticity_score_script(imagenet, tiny_clip_dir, tiny_dinov2_dir, tmp_path):
    import yaml

    out = tmp_path / "ms"
    # one change in the config changes what the script runs: k through the script's own default
    # (no K in the environment), auxk_alpha through `--config` alone
    config = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    config["commands"]["train"].update(k=3, auxk_alpha=0.05)
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config))
    env = {**{k: v for k, v in TRAIN.items() if k != "K"}, "CONFIG": tmp_path / "paper.yaml",
           "IMAGENET_PATH": imagenet, "OUT_DIR": out, "MODEL": tiny_clip_dir, "LAYERS": "1 last",
           "EXPANSION_FACTORS": "2", "EMBEDDERS": tiny_dinov2_dir}
    _run("monosemanticity_score.sh", env)
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
    r = _run("monosemanticity_score.sh", env)
    assert "complete already, skipped" in r.stderr and "training complete already" in r.stdout
    after = (shard.stat().st_mtime_ns, (out / "sae" / mt / "post_projection" / "trainer_0" / "ae.pt").stat().st_mtime_ns)
    assert before == after


def test_matryoshka_hierarchy_script(tiny_clip_dir, tmp_path):
    names = [f"{i:05d}_Animalia_Chordata_{c}_Ord{o}_Fam{o}_Gen{i}_sp{i}"
             for i, (c, o) in enumerate([("Aves", 1), ("Aves", 1), ("Aves", 2), ("Mammalia", 3)])]
    make_image_folder(tmp_path / "inat" / "train", num_classes=4, per_class=8, class_names=names)
    out = tmp_path / "h"
    _run("matryoshka_hierarchy.sh", {**TRAIN, "INAT_PATH": tmp_path / "inat", "OUT_DIR": out,
                                      "MODEL": tiny_clip_dir, "GROUP_FRACTIONS": "0.25 0.75"})
    codes = out / "codes" / Path(tiny_clip_dir).name / "inat_train" / "post_projection" / "trainer_0"
    h = json.loads((codes / "hierarchy_16.json").read_text())
    assert [g["size"] for g in h["groups"]] == [16, 48] and h["taxonomy_depth"] == 7
    assert "Matryoshka hierarchy" in (out / "report.md").read_text()


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_mllm_steering_script(family, imagenet, tmp_path):
    """LLaVA-1.5 with the tower given as MODEL and STEER_LAYER (the paper's form), and Qwen2.5-VL
    given only as LLAVA_MODEL: the script extracts through its tower at the block it reads."""
    from helpers import save_tiny_clip_model, save_tiny_mllm
    llava = save_tiny_mllm(family, tmp_path / "llava")
    clip = save_tiny_clip_model(tmp_path / "clip")
    out = tmp_path / "s"
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(i): [f"n0{i}", f"thing_{i}"] for i in range(4)}))
    # the SAE must come from the MLLM's own tower (another tower's SAE is refused)
    tower = {"MODEL": llava, "STEER_LAYER": "1"} if family == "llava" else {}
    _run("mllm_steering.sh", {**TRAIN, "IMAGENET_PATH": imagenet, "OUT_DIR": out, **tower,
                              "CLASS_NAMES": names,
                              "LLAVA_MODEL": llava, "CLIP_MODEL": clip,
                              "EXPANSION_FACTOR": "2", "NEURONS_WHITE": "3", "NEURONS_IMAGENET": "2",
                              "GROUP_FRACTIONS": "0.25 0.75"})
    layer = 1 if family == "llava" else 3  # Qwen2.5-VL reads the last of its 4 blocks
    for setting, n, images in (("white", 3, 1), ("imagenet", 2, 4)):
        for mode in ("steered", "unsteered"):
            s = json.loads((out / "steering_score" / f"{setting}_{mode}" / "steering_score.json").read_text())
            assert s["neurons"] == n and s["images"] == images and s["steered"] == (mode == "steered")
            assert s["protocol"] == "authors" and s["layer"] == layer
    top = np.load(out / "top_images" / Path(llava).name / "imagenet_train_meanpool"
                  / f"post_mlp_residual_{layer}_codes" / "top_images_16.npy")
    assert top.shape[1] == 16 and top.max() < 32
    bounds = json.loads((out / "eval_first_image_per_class" / "similarity_baseline.json").read_text())
    assert bounds["images"] == 4 and bounds["protocol"] == "authors"
    report = (out / "report.md").read_text()
    assert "Steering LLaVA" in report and "bound: true class names" in report


def test_monosemanticity_score_script_streams_a_hub_dataset(imagenet, tiny_clip_dir, tiny_dinov2_dir, tmp_path):
    """IMAGENET_PATH=hf:<dataset> (here a local copy in the hub's parquet layout, through the same
    code as hf:ILSVRC/imagenet-1k): the script's val split is the dataset's validation split."""
    from saevlm.data.hub import write_parquet_dataset
    from saevlm.data.images import open_dataset

    splits = {}
    for folder, split in (("train", "train"), ("val", "validation")):
        images = open_dataset("imagefolder", imagenet / folder, None)
        splits[split] = ([images.read_bytes(i) for i in range(len(images))], images.labels.tolist())
    hub = write_parquet_dataset(tmp_path / "hub", splits, ["tench", "goldfish", "shark", "ray"], row_group_rows=7)
    out = tmp_path / "ms"
    env = {**TRAIN, "IMAGENET_PATH": f"hf:{hub}", "OUT_DIR": out, "MODEL": tiny_clip_dir, "LAYERS": "last",
           "EXPANSION_FACTORS": "2", "EMBEDDERS": tiny_dinov2_dir}
    _run("monosemanticity_score.sh", env)
    mt, et = Path(tiny_clip_dir).name, Path(tiny_dinov2_dir).name
    val = ActivationStore(out / "activations" / mt / "imagenet_val" / "post_projection")
    train = ActivationStore(out / "activations" / mt / "imagenet_train" / "post_projection")
    assert (val.num_rows, train.num_rows) == (20, 32)
    assert (val.provenance.dataset.root, val.provenance.dataset.split) == (f"hf:{hub}", "validation")
    check_same_images(val, ActivationStore(out / "embeddings" / et / "imagenet_val"))
    codes = out / "codes" / mt / "imagenet_val" / "post_projection" / "trainer_0"
    assert json.loads((codes / f"ms_{et}" / "ms.json").read_text())["total"] == 64
    assert (out / "report.md").is_file()
