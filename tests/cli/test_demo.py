"""The built-in demo (make demo), with fewer steps: every stage runs and the report shows SAE
latents far above raw neurons, as in the paper."""

import json

from helpers import assert_results_read_back, run_cli


def test_demo_end_to_end(tmp_path, capsys):
    assert run_cli("demo", "--output_dir", tmp_path / "d", "--steps", "400", "--expansion_factor", "1", "2") == 0
    out = capsys.readouterr().out
    assert "report:" in out and str(tmp_path / "d" / "report.html") in out
    raw = json.loads((tmp_path / "d" / "world" / "val" / "ms_synthetic" / "ms.json").read_text())
    for t in ("trainer_0", "trainer_1", "trainer_2", "trainer_3"):
        sae = json.loads((tmp_path / "d" / "codes" / t / "ms_synthetic" / "ms.json").read_text())
        assert sae["mean"] > raw["mean"] + 0.15, (t, sae["mean"], raw["mean"])
    # ms.json x 5, top_images_16.json x 4, hierarchy_16.json x 2, run.json, eval.json x 4, classes.json: writer
    # and reader agree on every key
    checked = {p.name for p in assert_results_read_back(tmp_path / "d", expect=17)}
    assert {"ms.json", "top_images_16.json", "hierarchy_16.json", "run.json", "eval.json"} <= checked
    report = (tmp_path / "d" / "report.md").read_text()
    assert "Monosemanticity Score" in report and "Matryoshka hierarchy" in report and "Sources" in report
    # the demo ends with the command that opens its run in the explorer, and that command works
    assert f"saevlm explore --run_dir {tmp_path / 'd'}" in out
    assert run_cli("explore", "--run_dir", tmp_path / "d", "--static", tmp_path / "site", "--latents", "top:5",
                   "--no_progress") == 0
    assert len(list((tmp_path / "site" / "sae").glob("codes--trainer_*/latent/*.html"))) == 4 * 5
