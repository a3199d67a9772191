"""scripts/mllm_steering.sh end to end on tiny random MLLMs."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import SCRIPT_TRAIN, run_script


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
    run_script("mllm_steering.sh", {**SCRIPT_TRAIN, "IMAGENET_PATH": imagenet, "OUT_DIR": out, **tower,
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
