"""benchmark-agreement on a small archive in the authors' format."""

import json
import tarfile

import numpy as np
import pandas as pd

from helpers import assert_results_read_back, run_cli
from saevlm import api
from saevlm.metrics.agreement import agreement_table
from saevlm.metrics.ms import MSAccumulator


def _make_archive(tmp_path, world):
    from saevlm.data.store import ActivationStore
    rng = np.random.default_rng(0)
    emb = ActivationStore(world / "embeddings_val").read(0, 400)
    from saevlm.synthetic import load_concepts
    concepts = load_concepts(world / "concepts_val.npz")[:400]
    # 40 "neurons": concept detectors (monosemantic) and random mixtures
    acts = np.concatenate([concepts[:, :20] + 0.01 * rng.standard_normal((400, 20)),
                           rng.standard_normal((400, 20))], 1)
    ids = np.arange(1000, 1040)
    acc = MSAccumulator(40, emb.shape[1])
    acc.add_dense(acts, emb)
    true_ms = acc.scores()
    kx, ky = rng.choice(40, 120), rng.choice(40, 120)
    chose_x = np.where(rng.random(120) < 0.85, true_ms[kx] > true_ms[ky], true_ms[kx] <= true_ms[ky])
    noisy = lambda v: v + 0.02 * rng.standard_normal(len(v))  # noqa: E731
    pairs = pd.DataFrame({"k_x": ids[kx], "k_y": ids[ky], "R_user": chose_x.astype(int),
                          "MS_x_dino": noisy(true_ms[kx]), "MS_y_dino": noisy(true_ms[ky]),
                          "MS_x_clip": noisy(true_ms[kx]), "MS_y_clip": noisy(true_ms[ky])})
    folder = tmp_path / "metric_benchmark"
    folder.mkdir()
    pairs.to_csv(folder / "pairs.csv", index=False)
    pd.DataFrame({"k": ids, **{f"x_{i + 1}": np.argsort(-acts, 0)[i] for i in range(16)}}).to_csv(
        folder / "top16_images.csv", index=False)
    pd.DataFrame(np.concatenate([ids[:, None], acts.T], 1),
                 columns=["k"] + [f"a_{i + 1}" for i in range(400)]).astype({"k": int}).to_csv(
        folder / "activations.csv", index=False)
    with tarfile.open(tmp_path / "metric_benchmark.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="metric_benchmark")
    return folder, pairs, true_ms, ids


def test_agreement_table_by_hand():
    mx = np.array([0.9, 0.1, 0.5, 0.55, 0.3, 0.95])
    my = np.array([0.0, 0.2, 0.5, 0.5, 0.9, 0.05])
    cx = np.array([True, False, True, False, False, True])
    t = agreement_table(mx, my, cx)
    # |diff| = 0.9 (last bin), 0.1 (bin 1), 0 (tie, bin 0), 0.05 (bin 0), 0.6 (bin 6), 0.9 (last bin)
    assert [b["pairs"] for b in t["bins"]] == [2, 1, 0, 0, 0, 0, 1, 0, 2]
    assert t["bins"][0]["agreement"] == 0.25  # tie = 0.5, wrong = 0
    assert t["bins"][8]["agreement"] == 1.0
    assert t["pair_weighted"] == (1 + 1 + 0.5 + 0 + 1 + 1) / 6
    assert t["mean_over_bins"] == np.mean([0.25, 1.0, 1.0, 1.0])


def test_benchmark_agreement_command(tmp_path):
    world = tmp_path / "w"
    assert api.run("synthetic", output_dir=world, num_train=500, num_val=400) == 0
    folder, pairs, true_ms, ids = _make_archive(tmp_path, world)
    np.save(tmp_path / "true.npy", np.concatenate([np.full(1000, np.nan), true_ms]))
    out = tmp_path / "agreement.json"
    for source in (tmp_path / "metric_benchmark.tar.gz", folder):
        assert api.run("benchmark-agreement", benchmark=source, embeddings_path=[world / "embeddings_val"],
                       scores=[f"truth={tmp_path / 'true.npy'}"], output=out, device="cpu") == 0
        res = json.loads(out.read_text())
        assert out in assert_results_read_back(tmp_path, expect=5)  # and the world's classes.json x 4
        assert set(res["metrics"]) == {"MS (dino, shipped)", "MS (clip, shipped)",
                                       "MS (recomputed, synthetic)", "truth"}
        chose_x = pairs["R_user"].to_numpy() > 0.5
        kx, ky = pairs["k_x"].to_numpy() - 1000, pairs["k_y"].to_numpy() - 1000
        for name in ("MS (recomputed, synthetic)", "truth"):  # recomputed MS = the MS of the activations
            ref = agreement_table(true_ms[kx], true_ms[ky], chose_x)
            assert res["metrics"][name]["bins"] == ref["bins"]
        ref = agreement_table(pairs["MS_x_dino"], pairs["MS_y_dino"], chose_x)
        assert res["metrics"]["MS (dino, shipped)"]["pair_weighted"] == ref["pair_weighted"]
        assert sum(b["pairs"] for b in res["metrics"]["truth"]["bins"]) == 120
        assert res["metrics"]["truth"]["pair_weighted"] > 0.75  # users follow the truth 85% of the time


def test_benchmark_errors(tmp_path, capsys):
    assert run_cli("benchmark-agreement", "--benchmark", tmp_path / "nope.tar.gz") == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    pd.DataFrame({"k_x": [1], "k_y": [2]}).to_csv(tmp_path / "b" / "pairs.csv", index=False)
    assert run_cli("benchmark-agreement", "--benchmark", tmp_path / "b") == 2
    assert "lacks columns ['R_user']" in capsys.readouterr().err
