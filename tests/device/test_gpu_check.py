"""benchmarks/gpu_check.py, the prepared device check, runs end to end at tiny shapes on CPU, so
the script that will meet a GPU machine once in a while cannot rot in between."""

import json
import os
import subprocess
import sys
from helpers import REPO

ROOT = REPO


def test_gpu_check_quick_on_cpu_runs_every_part(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--device", "cpu",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["errors"] == {}
    # every part ran and measured something
    assert res["extract"]["runs"]["none"]["images_s"] > 0 and res["extract"]["decode_only_images_s"] > 0
    assert res["extract"]["runs"]["none"]["max_rel_err_vs_fp32"] == 0.0
    engines = {(row["engine"], row["expansion"]) for row in res["train"]["rows"]}
    assert engines == {("sparse", 2), ("sparse", 8), ("dictionary_learning", 2), ("dictionary_learning", 8)}
    assert all(row["steps_s"] > 0 for row in res["train"]["rows"])
    # the README's roofline estimate was found (its table is what the GPU numbers are set beside)
    assert set(res["train"]["readme_estimate"]) >= {"sparse/tf32", "dictionary_learning/fp32"}
    assert res["ms"]["ms_cpu_s"] > 0 and res["ms"]["top16_cpu_s"] > 0
    assert min(res["steer"]["logit_change"]) > 1e-3  # the check asserts the steering took effect
    assert res["tests"] == {"skipped": "no GPU: the cuda-marked tests run only on one"}
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| x8 (512) | sparse | fp32 |" in md and "Steering at block 2" in md
