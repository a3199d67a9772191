"""FMS: the Gini split search against brute force, the score's components, and SAE vs raw."""

import json

import numpy as np

from helpers import assert_results_read_back
from saevlm import api
from saevlm.metrics.fms import _gini_best_splits, concept_fms, fit_tree


def brute_gini(x, y):
    best = (np.inf, None)
    n = len(y)
    for t in np.unique(x)[:-1]:
        left, right = y[x <= t], y[x > t]
        g = sum(len(s) / n * 2 * s.mean() * (1 - s.mean()) for s in (left, right))
        if g < best[0] - 1e-12:
            best = (g, t)
    return best


def test_split_search_matches_brute_force():
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((60, 7)), 1)  # ties
    x[:, 3] = 1.0  # constant: no split
    y = rng.random(60) < 0.4
    gini, thr = _gini_best_splits(x, y)
    for f in range(7):
        g, t = brute_gini(x[:, f], y)
        if t is None:
            assert np.isinf(gini[f])
            continue
        assert abs(gini[f] - g) < 1e-12
        # the midpoint threshold splits the same samples as the brute-force value
        assert np.array_equal(x[:, f] <= thr[f], x[:, f] <= t)


def test_components_on_planted_latents():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    noise = rng.standard_normal((400, 5))
    mono = np.c_[y * 2.0 + 0.01 * rng.standard_normal(400), noise]  # one latent carries the concept
    tr, te = slice(0, 280), slice(280, 400)
    r = concept_fms(mono[tr], y[tr], mono[te], y[te], p=1, n=3)
    assert r["root"] == 0 and r["acc0"] == 1.0
    assert r["local"] > 0.8 and r["global"] == 1.0 and r["fms"] > 0.9
    split = np.c_[y * 2.0, y * 2.0, noise]  # duplicated: removing the root changes nothing
    r2 = concept_fms(split[tr], y[tr], split[te], y[te], p=1, n=3)
    assert r2["local"] == 0.0 and r2["fms"] < 0.6
    tree = fit_tree(mono, y, 2)
    assert (tree.predict(mono) == y).mean() == 1.0


def test_fms_sae_latents_above_raw_neurons(tmp_path):
    w = tmp_path / "w"
    assert api.run("synthetic", output_dir=w, num_train=12000, num_val=2000, zipf=0, ancestor_scale=0.9) == 0
    assert api.run("train", layout="trainers", activations_dir=w / "train", checkpoints_dir=tmp_path / "ck",
                   expansion_factor=[2], k=4, steps=800, batch_size=1024, warmup_steps=50, threshold_start_step=100,
                   val_rows=2000, device="cpu", no_progress=True) == 0
    assert api.run("encode", sae_path=tmp_path / "ck" / "trainer_0", activations_dir=w / "val",
                   output_dir=tmp_path / "codes", no_progress=True) == 0
    scores = {}
    for name, store in (("sae", tmp_path / "codes"), ("raw", w / "val")):
        assert api.run("fms", activations_dir=store, concepts=w / "concepts_val.npz", max_positives=200) == 0
        scores[name] = json.loads((store / "fms" / "fms.json").read_text())
        assert_results_read_back(store / "fms")
    assert scores["sae"]["concepts"] == 126
    assert scores["sae"]["fms"] > scores["raw"]["fms"] + 0.05, (scores["sae"]["fms"], scores["raw"]["fms"])
    assert scores["sae"]["mean_acc0"] > scores["raw"]["mean_acc0"]
