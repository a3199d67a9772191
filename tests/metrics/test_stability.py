"""Seed stability (issue: numbers with error bars, item 3): `train --seed 0 1 2` trains one SAE per
seed in one data pass, and `saevlm stability` matches their latents (decoder cosine and
co-activation) against the dense Hungarian solution and planted permutations."""

import json

import numpy as np
import pytest
import torch

from helpers import assert_results_read_back, run_cli
from saevlm import api

TRAIN = ["--sae_model", "batch_top_k", "--expansion_factor", "2", "--k", "4", "--steps", "40", "--batch_size", "256",
         "--warmup_steps", "5", "--threshold_start_step", "10", "--log_steps", "40", "--checkpoint_every", "20"]


def _train(world, out, *extra):
    return run_cli("train", "--layout", "trainers", "--activations_dir", world / "train", "--val_activations_dir",
                   world / "val", "--checkpoints_dir", out, "--device", "cpu", "--no_progress", *extra)


def test_assignment_equals_the_dense_hungarian_solution():
    from scipy.optimize import linear_sum_assignment

    from saevlm.metrics.stability import assign, top_partners

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.standard_normal((60, 8)), rng.standard_normal((60, 8))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        sim = a @ b.T
        match = assign(*top_partners(a, b, 60), 60)
        rows, cols = linear_sum_assignment(-sim)
        assert sorted(match) == list(range(60))  # one to one
        assert sim[np.arange(60), match].sum() == pytest.approx(sim[rows, cols].sum(), abs=1e-4)


def test_several_seeds_train_in_one_pass(world, tmp_path):
    """--seed 0 1: trainer_0 is bit-identical to a --seed 0 run (the first seed keeps the batch
    order and initialisation it always had); trainer_1 starts from seed 1's initialisation (the
    trainer's own, checked against dictionary_learning built with seed 1) on the same batches."""
    from saevlm.sae.archs import trainer_class

    assert _train(world, tmp_path / "one", *TRAIN, "--seed", "0") == 0
    assert _train(world, tmp_path / "two", *TRAIN, "--seed", "0", "1", "--save_at", "0") == 0
    ref = torch.load(tmp_path / "one" / "trainer_0" / "ae.pt")
    got = torch.load(tmp_path / "two" / "trainer_0" / "ae.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    other = torch.load(tmp_path / "two" / "trainer_1" / "ae.pt")
    assert not torch.equal(other["encoder.weight"], got["encoder.weight"])
    cfg = json.loads((tmp_path / "two" / "trainer_1" / "config.json").read_text())
    assert cfg["trainer"]["seed"] == 1 and cfg["saevlm"]["seed"] == 1
    dim = cfg["trainer"]["activation_dim"]
    fresh = trainer_class("batch_top_k")(steps=40, activation_dim=dim, dict_size=2 * dim, k=4, layer=0, lm_name="x",
                                         warmup_steps=5, threshold_start_step=10, seed=1, device="cpu")
    start = torch.load(tmp_path / "two" / "trainer_1" / "checkpoints" / "ae_0.pt")
    torch.testing.assert_close(start["decoder.weight"], fresh.ae.decoder.weight.detach(), atol=0, rtol=0)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert [t["seed"] for t in run["identity"]["trainers"]] == [0, 1]
    assert run["identity"]["hyperparameters"]["seed"] == [0, 1]
    # stability on the two trained SAEs: the command runs and reports a share in [0, 1]
    assert api.run("stability", sae_path=[tmp_path / "two" / "trainer_0", tmp_path / "two" / "trainer_1"]) == 0
    res = json.loads((tmp_path / "two" / "stability.json").read_text())
    assert tmp_path / "two" / "stability.json" in assert_results_read_back(tmp_path / "two", expect=4)
    assert res["saes"][1]["seed"] == 1 and 0 <= res["pairs"][0]["matched_share"] <= 1
    # the report shows it (a typed record), with the matched share as written
    assert api.run("report", run_dir=tmp_path / "two", no_grids=True, output_dir=tmp_path / "rep") == 0
    text = "\n".join(f.read_text() for f in (tmp_path / "rep").glob("*.md"))
    assert "Seed stability" in text and "seeds 0, 1" in text
    assert f"| 0 vs 1 | {100 * res['pairs'][0]['matched_share']:.1f} % |" in text


def test_repeated_seeds_are_refused(world, tmp_path, capsys):
    assert _train(world, tmp_path / "x", *TRAIN, "--seed", "3", "3") == 2
    assert "--seed 3 3: each seed once" in capsys.readouterr().err


def _save(path, dec_kd, b_enc=None):
    """A BatchTopK SAE with decoder rows ``dec_kd`` (and the matching encoder)."""
    from helpers import save_random_sae

    K, d = dec_kd.shape
    save_random_sae(path, d, K)
    state = torch.load(path / "ae.pt")
    state["decoder.weight"] = torch.from_numpy(dec_kd.T.astype(np.float32)).contiguous()
    state["encoder.weight"] = torch.from_numpy(dec_kd.astype(np.float32)).contiguous()
    torch.save(state, path / "ae.pt")
    return path


def _codes(path, active_nk):
    from saevlm.data.codes import CodeStoreWriter, CSRParts

    N, K = active_nk.shape
    prov = {"model": {"name": "planted", "source": "planted"}, "hook": {"attachment_point": "x", "layer": -1},
            "tokens": {"selection": "pooled"},
            "dataset": {"name": "planted", "split": "val", "paths_sha256": "planted", "num_selected": N}}
    w = CodeStoreWriter(path, encode=None, input_dim=8, kind="codes", dim=K, dtype="fp32", images_per_shard=N,
                        num_images=N, provenance=prov, software={})
    nz = active_nk > 0
    w.write_shard(0, CSRParts([(np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64),
                             np.nonzero(nz)[1].astype(np.int32), active_nk[nz].astype(np.float32))]),
                        np.stack([np.arange(N), -np.ones(N, np.int64)], 1), 0, N)
    w.finalize()
    return path


def test_planted_permutation_is_recovered_by_both_matchings(tmp_path, capsys):
    """SAE B = SAE A's latents permuted (decoders perturbed a little, half of them much more):
    the decoder matching and the co-activation matching find the permutation, the share matched
    at cosine 0.7 is the unperturbed half, and MS of matched pairs correlates perfectly."""
    rng = np.random.default_rng(0)
    K, d, N = 128, 32, 500
    dec_a = rng.standard_normal((K, d))
    dec_a /= np.linalg.norm(dec_a, axis=1, keepdims=True)
    perm = rng.permutation(K)  # B's latent i is A's latent perm[i]
    dec_b = dec_a[perm] + 0.02 * rng.standard_normal((K, d))
    dec_b[: K // 2] += 1.5 * rng.standard_normal((K // 2, d)) / np.sqrt(d)
    _save(tmp_path / "a", dec_a)
    _save(tmp_path / "b", dec_b)
    codes_a = (rng.random((N, K)) < 0.05) * rng.exponential(1.0, (N, K))
    _codes(tmp_path / "ca", codes_a)
    _codes(tmp_path / "cb", codes_a[:, perm])
    ms_a = rng.random(K)
    np.save(tmp_path / "ms_a.npy", ms_a)
    np.save(tmp_path / "ms_b.npy", ms_a[perm])
    assert api.run("stability", sae_path=[tmp_path / "a", tmp_path / "b"],
                   codes_dir=[tmp_path / "ca", tmp_path / "cb"],
                   scores=[tmp_path / "ms_a.npy", tmp_path / "ms_b.npy"], output=tmp_path / "s.json") == 0
    res = json.loads((tmp_path / "s.json").read_text())
    pair = res["pairs"][0]
    inverse = np.argsort(perm)  # A's latent j sits at B's inverse[j]
    # the share at cosine >= 0.7 is the share of A's latents whose B partner was not moved far
    cos = np.einsum("kd,kd->k", dec_a, dec_b[inverse] / np.linalg.norm(dec_b[inverse], axis=1, keepdims=True))
    assert pair["matched_share"] == pytest.approx(float(np.mean(cos >= 0.7)))
    assert 0.3 < pair["matched_share"] < 0.7
    assert pair["coactivation_agreement"] == 1.0  # the two matchings agree, and both are the planted one
    assert pair["ms_pearson"] == pytest.approx(1.0) and pair["ms_spearman"] == pytest.approx(1.0)
    assert res["mean_ms_seed_std"] == pytest.approx(0.0, abs=1e-12)
    assert "% of latents matched at decoder cosine >= 0.7" in capsys.readouterr().out
    from saevlm.metrics.stability import match_pair
    match, _ = match_pair(dec_a, dec_b, 16)
    assert (match == inverse).all()


def test_saes_of_other_widths_are_one_line(tmp_path, capsys):
    from helpers import save_random_sae

    save_random_sae(tmp_path / "a", 16, 64)
    save_random_sae(tmp_path / "b", 16, 128)
    assert run_cli("stability", "--sae_path", tmp_path / "a", tmp_path / "b") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has 64 latents over 16 dims" not in err and "compares SAEs of one width" in err and \
        err.startswith("saevlm stability: error: --sae_path"), err
    assert run_cli("stability", "--sae_path", tmp_path / "a", tmp_path / "a", "--scores", tmp_path / "x.npy") == 2
    assert "--scores: 1 given for 2 SAEs" in capsys.readouterr().err
