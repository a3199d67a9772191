"""The Monosemanticity Score against the brute-force pairwise definition (arXiv 2504.02821)."""

import json

import numpy as np
import pytest

from helpers import run_cli
from saevlm import api
from saevlm.data.codes import dense_to_csr
from saevlm.metrics.ms import MSAccumulator, summarize


def ms_brute_force(acts_nk: np.ndarray, embeds_nd: np.ndarray) -> np.ndarray:
    """The definition, literally: per-neuron min-max, cosine similarities, sum over pairs n < m."""
    a = acts_nk.astype(np.float64)
    e = embeds_nd.astype(np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    n = len(a)
    iu = np.triu_indices(n, k=1)
    out = np.full(a.shape[1], np.nan)
    for k in range(a.shape[1]):
        lo, hi = a[:, k].min(), a[:, k].max()
        if hi == lo:
            continue
        t = (a[:, k] - lo) / (hi - lo)
        w = np.outer(t, t)[iu]
        den = w.sum()
        if den == 0:
            continue
        out[k] = (w * s[iu]).sum() / den
    return out


def _fast_dense(a, e, chunk=7):
    acc = MSAccumulator(a.shape[1], e.shape[1])
    for s in range(0, len(a), chunk):
        acc.add_dense(a[s:s + chunk], e[s:s + chunk])
    return acc.scores()


def _fast_sparse(a, e, chunk=7):
    acc = MSAccumulator(a.shape[1], e.shape[1])
    for s in range(0, len(a), chunk):
        p, ix, v = dense_to_csr(a[s:s + chunk])
        acc.add_csr(p, ix, v, e[s:s + chunk], rows_per_block=3)
    return acc.scores()


def _assert_same(fast, ref):
    assert np.array_equal(np.isnan(fast), np.isnan(ref)), (fast, ref)
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(fast[ok], ref[ok], rtol=1e-6, atol=0)


def _edge_case_matrix(rng, n=40):
    a = rng.standard_normal((n, 9)) * 3 + 5          # signed, offset raw neurons
    a[:, 0] = 2.5                                     # constant neuron -> NaN
    a[:, 1] = 0.0
    a[7, 1] = 4.0                                     # active on exactly one image -> NaN
    a[:, 2] = 0.0
    a[[3, 9], 2] = [1.0, 2.0]                         # active on two images
    a[:, 3] = -np.abs(a[:, 3])                        # negative activations
    a[:, 4] = np.where(rng.random(n) < 0.3, rng.random(n), 0)  # sparse, non-negative
    a[:, 5] = 0.0                                     # dead
    a[:, 6] = np.round(a[:, 6])                       # ties at the minimum
    return a


def test_dense_random_and_edge_cases():
    rng = np.random.default_rng(0)
    a = _edge_case_matrix(rng)
    e = rng.standard_normal((40, 6))
    e[5] = e[2]  # duplicate images (identical embeddings)
    ref = ms_brute_force(a, e)
    assert np.isnan(ref[[0, 1, 5]]).all() and not np.isnan(ref[[2, 3, 4, 6]]).any()
    _assert_same(_fast_dense(a, e), ref)


def test_sparse_path_matches_definition():
    rng = np.random.default_rng(1)
    n, K = 60, 50
    a = np.zeros((n, K))
    for i in range(n):  # k = 4 active latents per image, non-negative codes
        a[i, rng.choice(K, 4, replace=False)] = rng.random(4) * 3
    a[:, 0] = rng.random(n) + 0.5  # a latent active on every image (min > 0)
    a[:, 1] = 0
    a[11, 1] = 2.0  # exactly one image
    a[:, 2] = 0  # dead
    a[:, 3] = np.where(rng.random(n) < 0.5, -rng.random(n), 0)  # negative stored values
    e = rng.standard_normal((n, 8))
    a = a.astype(np.float32).astype(np.float64)  # code stores hold float32 values
    ref = ms_brute_force(a, e)
    _assert_same(_fast_sparse(a, e), ref)
    _assert_same(_fast_dense(a, e), ref)


def test_n_equals_two_and_large_offsets():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 5))
    e = rng.standard_normal((2, 4))
    ref = ms_brute_force(a, e)
    assert np.isnan(ref).all()  # min-max leaves one non-zero image: no pair
    _assert_same(_fast_dense(a, e), ref)
    # cancellation: a large common offset must not change anything
    a = rng.standard_normal((300, 7)) * 0.01 + 1e4
    e = rng.standard_normal((300, 16)) + 3
    _assert_same(_fast_dense(a, e, chunk=64), ms_brute_force(a, e))


def test_raw_neurons_score_near_mean_similarity():
    """arXiv 2504.02821: min-max makes raw neurons nearly uniform, so their MS is close to the
    encoder's mean pairwise similarity."""
    rng = np.random.default_rng(3)
    e = rng.standard_normal((200, 16)) + 1.0
    a = rng.standard_normal((200, 30))
    ms = _fast_dense(a, e)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = u @ u.T
    mean_sim = s[np.triu_indices(200, 1)].mean()
    assert abs(np.nanmean(ms) - mean_sim) < 0.05


def test_summary():
    s = summarize(np.array([0.5, np.nan, 0.9, 0.1]))
    assert s["dead"] == 1 and s["total"] == 4
    assert s["top10"][0] == [2, 0.9] and s["bottom10"][0] == [3, 0.1]
    assert s["mean"] == pytest.approx(0.5)


def test_ms_command_on_synthetic_world(tmp_path, capsys):
    world = tmp_path / "w"
    assert api.run("synthetic", output_dir=world, num_train=3000, num_val=400) == 0
    assert api.run("train", layout="trainers", activations_dir=world / "train", checkpoints_dir=tmp_path / "ck",
                   expansion_factor=[2], k=4, steps=200, batch_size=256, warmup_steps=10, threshold_start_step=20,
                   device="cpu", no_progress=True) == 0
    assert api.run("encode", sae_path=tmp_path / "ck" / "trainer_0", activations_dir=world / "val",
                   output_dir=tmp_path / "codes", no_progress=True) == 0
    for store in (world / "val", tmp_path / "codes"):
        assert api.run("ms", activations_dir=store, embeddings_path=world / "embeddings_val", chunk_rows=64,
                       device="cpu", no_progress=True) == 0
    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore
    e = ActivationStore(world / "embeddings_val").read(0, 400)
    raw = np.load(world / "val" / "ms_synthetic" / "scores.npy")
    _assert_same(raw, ms_brute_force(ActivationStore(world / "val").read(0, 400), e))
    sae = np.load(tmp_path / "codes" / "ms_synthetic" / "scores.npy")
    _assert_same(sae, ms_brute_force(CodeStore(tmp_path / "codes").read(0, 400), e))
    info = json.loads((tmp_path / "codes" / "ms_synthetic" / "ms.json").read_text())
    assert info["total"] == 128 and set(info) >= {"mean", "std", "dead", "top10", "bottom10"}
    assert (tmp_path / "codes" / "ms_synthetic" / "metric_stats.txt").read_text().startswith("MS over 400")
    # SAE latents are far more monosemantic than raw neurons (the paper's central claim)
    assert np.nanmean(sae) > np.nanmean(raw) + 0.1
    # mismatched images are refused
    capsys.readouterr()
    assert run_cli("ms", "--activations_dir", world / "val", "--embeddings_path",
                   world / "embeddings_train", "--device", "cpu") == 2
    assert "come from different image lists" in capsys.readouterr().err
