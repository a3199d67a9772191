"""Top-activating images and uniqueness against naive references."""

import json
from itertools import combinations

import numpy as np

from helpers import assert_results_read_back, run_cli
from saevlm import api
from saevlm.data.codes import CSRChunk, dense_to_csr
from saevlm.metrics.top_images import top_k_csr, top_k_dense
from saevlm.metrics.uniqueness import uniqueness_stats


def naive_top_k(acts_nk, k):
    """argsort per neuron: value descending, then row ascending."""
    out_r, out_v = [], []
    for j in range(acts_nk.shape[1]):
        order = np.lexsort((np.arange(len(acts_nk)), -acts_nk[:, j]))[:k]
        out_r.append(order)
        out_v.append(acts_nk[order, j])
    return np.array(out_r), np.array(out_v, dtype=np.float32)


def test_dense_running_top_k_matches_argsort():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((103, 17)).astype(np.float32)
    chunks = [(s, a[s:s + 10]) for s in range(0, 103, 10)]
    rows, vals = top_k_dense(chunks, 17, 5)
    ref_r, ref_v = naive_top_k(a, 5)
    assert np.array_equal(rows, ref_r) and np.array_equal(vals, ref_v)


def test_sparse_top_k_with_ties_and_padding():
    rng = np.random.default_rng(1)
    a = np.zeros((90, 12), dtype=np.float32)
    for i in range(90):
        a[i, rng.choice(12, 2, replace=False)] = rng.integers(1, 4, 2)  # many ties
    a[:, 3] = 0
    a[[40, 7], 3] = [2.0, 1.0]  # fewer than k non-zeros: padded with zero rows, lowest first
    a[:, 4] = 0  # dead
    chunks = []
    for s in range(0, 90, 13):
        p, ix, v = dense_to_csr(a[s:s + 13])
        chunks.append(CSRChunk(s, p, ix, v, 12))
    rows, vals = top_k_csr(chunks, 12, 90, 6)
    ref_r, ref_v = naive_top_k(a, 6)
    assert np.array_equal(vals, ref_v)
    assert np.array_equal(rows, ref_r)  # ties by lower row, zero rows padded in row order
    assert rows[3].tolist() == [40, 7, 0, 1, 2, 3]


def naive_uniqueness(top):
    out = {}
    for a, b in combinations(range(len(top)), 2):
        sa, sb = set(top[a]), set(top[b])
        out[(a, b)] = len(sa & sb) / len(sa | sb)
    return out


def test_uniqueness_matches_pair_loop():
    rng = np.random.default_rng(2)
    top = np.stack([rng.choice(60, 8, replace=False) for _ in range(40)])
    top[5] = top[9]  # identical sets: J = 1
    kth = np.ones(40)
    kth[[0, 1]] = 0  # near-dead: left out
    s = uniqueness_stats(top, kth)
    keep = [i for i in range(40) if i not in (0, 1)]
    ref = naive_uniqueness(top[keep])
    assert s["neurons"] == 38 and s["pairs"] == len(ref)
    for t, count in s["pairs_above"].items():
        assert count == sum(v > float(t) for v in ref.values()), t
    assert s["most_similar"][0] == [5, 9, 1.0]
    best = sorted(ref.values(), reverse=True)[:10]
    assert [x[2] for x in s["most_similar"]] == best


def test_commands_on_synthetic_world(tmp_path):
    w = tmp_path / "w"
    assert api.run("synthetic", output_dir=w, num_train=2000, num_val=300) == 0
    assert api.run("top-images", activations_dir=w / "val", k=16, chunk_rows=70, device="cpu", no_progress=True) == 0
    from saevlm.data.store import ActivationStore
    a = ActivationStore(w / "val").read(0, 300)
    top = np.load(w / "val" / "top_images_16.npy")
    ref_r, ref_v = naive_top_k(a, 16)
    assert np.array_equal(top, ref_r)  # one row per image, ids = rows
    assert np.array_equal(np.load(w / "val" / "top_images_16_kth_value.npy"), ref_v[:, -1])
    assert api.run("uniqueness", activations_dir=w / "val", k=16) == 0
    stats = json.loads((w / "val" / "uniqueness_16.json").read_text())
    assert stats["pairs"] == 64 * 63 // 2
    assert {"top_images_16.json", "uniqueness_16.json"} <= {p.name for p in assert_results_read_back(w / "val")}
    assert run_cli("uniqueness", "--activations_dir", w / "train", "--k", "16") == 2


def test_pooled_top_images_on_token_stores(tiny_clip_dir, image_folder, tmp_path):
    """--pool mean ranks images by the mean of their token codes (the steering SAE's protocol)."""
    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore
    from helpers import save_random_sae

    assert api.run("extract", model_name=tiny_clip_dir, layer=[2], random_k=3, dataset_name="imagefolder",
                   data_path=image_folder, batch_size=4, num_workers=0, device="cpu", no_progress=True,
                   shard_rows=24, output_dir=tmp_path / "acts") == 0
    store = tmp_path / "acts" / "post_mlp_residual_2"
    assert run_cli("top-images", "--activations_dir", store, "--device", "cpu", "--no_progress") == 2
    sae = save_random_sae(tmp_path / "sae", 64, 96, k=6)
    assert api.run("encode", sae_path=sae, activations_dir=store, output_dir=tmp_path / "codes", allow_mismatch=True,
                   no_progress=True) == 0
    for s, reader in ((store, ActivationStore), (tmp_path / "codes", CodeStore)):
        assert api.run("top-images", activations_dir=s, k=8, pool="mean", device="cpu", no_progress=True) == 0
        dense = reader(s).read(0, reader(s).num_rows)
        pooled = dense.reshape(24, 3, -1).mean(1)  # 24 images x 3 tokens, image-major
        ref_r, ref_v = naive_top_k(pooled, 8)
        np.testing.assert_allclose(np.load(s / "top_images_8_values.npy"), ref_v, rtol=1e-5, atol=1e-6)
        got = np.load(s / "top_images_8.npy")
        assert (got == ref_r).mean() > 0.95  # equal up to near-ties in float sums


def test_uniqueness_with_no_live_neurons_reports_zero_pairs():
    """Every neuron near-dead (k-th value 0) leaves nothing to pair: zero pairs, not a crash
    (found by the scripts test with a tiny SAE)."""
    import numpy as np

    from saevlm.metrics.uniqueness import uniqueness_stats

    top = np.tile(np.arange(16), (5, 1))
    stats = uniqueness_stats(top, np.zeros(5))
    assert stats["neurons"] == 0 and stats["pairs"] == 0 and stats["left_out_near_dead"] == 5
    assert stats["most_similar"] == [] and all(v == 0 for v in stats["pairs_above"].values())
