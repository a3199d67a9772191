"""Synthetic world, SAE training / loading / encoding, code stores (issue: SAE training)."""

import json

import numpy as np
import pytest
import torch

from helpers import run_cli
from saevlm import api
from saevlm.data.codes import CodeStore, dense_to_csr
from saevlm.data.store import ActivationStore, check_same_images
from saevlm.errors import UserError
from saevlm.sae.inference import encode_batch
from saevlm.sae.checkpoint import load_sae


def _train(world, out, *extra):
    return run_cli("train", "--layout", "trainers", "--activations_dir", world / "train", "--val_activations_dir", world / "val",
                   "--checkpoints_dir", out, "--device", "cpu", "--no_progress", *extra)


def test_synthetic_world_is_deterministic_and_structured(world, tmp_path):
    assert api.run("synthetic", output_dir=tmp_path / "again") == 0
    a, b = ActivationStore(world / "train"), ActivationStore(tmp_path / "again" / "train")
    assert np.array_equal(a.read(0, a.num_rows), b.read(0, b.num_rows))
    assert api.run("synthetic", output_dir=tmp_path / "other", seed=1) == 0
    assert not np.array_equal(a.read(0, 100), ActivationStore(tmp_path / "other" / "train").read(0, 100))
    info = json.loads((world / "world.json").read_text())
    directions = np.load(world / "directions.npy")
    assert directions.shape == (info["num_concepts"], a.dim) and info["num_concepts"] > a.dim  # superposition
    from saevlm.synthetic import load_concepts
    z = load_concepts(world / "concepts_val.npz")
    labels = np.load(world / "val" / "labels.npy")
    leaves = np.asarray(info["leaves"])
    parent = np.asarray([c["parent"] for c in info["concepts"]])
    for i in range(50):  # the labelled leaf and all its ancestors are active, ancestors weaker
        c = leaves[labels[i]]
        chain = []
        while c >= 0:
            chain.append(c)
            c = parent[c]
        assert all(z[i, c] > 0 for c in chain)
    usage = (z[:, leaves] > 0).mean(0)
    assert usage.max() > 10 * np.median(usage)  # heavy-tailed
    assert (z > 0).mean() < 0.1  # sparse
    classes = json.loads((world / "val" / "classes.json").read_text())
    assert len(classes["taxonomy"][0]) == 3 and classes["taxonomy"][0][-1] == classes["classes"][0]
    check_same_images(ActivationStore(world / "val"), ActivationStore(world / "embeddings_val"))


def _decoder_directions(sae) -> np.ndarray:
    ae = sae.ae
    w = ae.W_dec.detach().numpy() if hasattr(ae, "W_dec") else ae.decoder.weight.detach().numpy().T
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def test_sae_recovers_ground_truth_directions(world, tmp_path):
    """Both architectures find the planted concept directions.

    Threshold: a random dictionary of the same size reaches a mean max |cos| of about 0.34 in 64
    dimensions (computed below); runs of this configuration reached 0.79 (BatchTopK) and 0.67
    (Matryoshka), leaves 0.82 / 0.72 (ancestors are partly absorbed into their leaves, a known
    SAE behaviour). We require 0.6 overall for both, 0.7 for BatchTopK, and 0.65 on leaves:
    far above chance, with a margin for seed and platform variation.
    """
    assert _train(world, tmp_path / "ck", "--sae_model", "batch_top_k", "matryoshka_batch_top_k",
                  "--expansion_factor", "2", "--k", "4", "--steps", "2000", "--batch_size", "1024",
                  "--warmup_steps", "100", "--threshold_start_step", "200", "--log_steps", "1000",
                  "--group_fractions", "0.05", "0.2", "0.75") == 0
    truth = np.load(world / "directions.npy")
    info = json.loads((world / "world.json").read_text())
    leaves = np.asarray(info["leaves"])
    rng = np.random.default_rng(99)
    rand = rng.standard_normal((128, truth.shape[1]))
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    chance = np.abs(truth @ rand.T).max(1).mean()
    assert chance < 0.45
    scores = {}
    for trainer in ("trainer_0", "trainer_1"):
        sae = load_sae(str(tmp_path / "ck" / trainer))
        best = np.abs(truth @ _decoder_directions(sae).T).max(1)
        scores[sae.arch] = (best.mean(), best[leaves].mean())
        ev = json.loads((tmp_path / "ck" / trainer / "eval.json").read_text())
        assert ev["r2"] > 0.8 and 2 <= ev["l0"] <= 10
    assert scores["batch_top_k"][0] > 0.7, scores
    for arch, (overall, leaf) in scores.items():
        assert overall > 0.6 and leaf > 0.65, (arch, scores)


def test_train_outputs_layout_eval_and_reload(world, tmp_path):
    ck = tmp_path / "ck"
    assert _train(world, ck, "--sae_model", "matryoshka_batch_top_k", "--expansion_factor", "1", "2",
                  "--k", "4", "--steps", "40", "--batch_size", "256", "--warmup_steps", "5",
                  "--threshold_start_step", "10", "--save_steps", "20", "--log_steps", "20",
                  "--checkpoint_every", "20") == 0
    for i, size in ((0, 64), (1, 128)):
        d = ck / f"trainer_{i}"
        for f in ("ae.pt", "config.json", "eval.json", "checkpoints/ae_20.pt", "checkpoints/ae_20_eval.json"):
            assert (d / f).is_file(), f
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["trainer"]["dict_class"] == "MatryoshkaBatchTopKSAE" and cfg["trainer"]["dict_size"] == size
        assert cfg["trainer"]["lr"] == pytest.approx(2e-4 / np.sqrt(size / 2 ** 14))  # the authors' rule
        sae = load_sae(str(d))
        assert sae.group_sizes() == [int(0.0625 * size), int(0.125 * size), int(0.25 * size),
                                     size - int(0.0625 * size) - int(0.125 * size) - int(0.25 * size)]
        # eval.json equals a brute-force computation on the validation store
        ev = json.loads((d / "eval.json").read_text())
        x = torch.from_numpy(ActivationStore(world / "val").read(0, 8000))
        with torch.no_grad():
            f = encode_batch(sae, x)
            x_hat = sae.ae.decode(f)
        r2 = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert ev["r2"] == pytest.approx(float(r2), abs=1e-4)
        assert ev["l0"] == pytest.approx(float((f != 0).sum(1).float().mean()), abs=1e-4)
        assert ev["dead_fraction"] == pytest.approx(float(((f != 0).sum(0) == 0).float().mean()))
    # a finished run is not redone
    mtime = (ck / "trainer_0" / "ae.pt").stat().st_mtime_ns
    assert _train(world, ck, "--sae_model", "matryoshka_batch_top_k", "--expansion_factor", "1", "2",
                  "--k", "4", "--steps", "40", "--batch_size", "256", "--warmup_steps", "5",
                  "--threshold_start_step", "10", "--save_steps", "20", "--log_steps", "20",
                  "--checkpoint_every", "20") == 0
    assert (ck / "trainer_0" / "ae.pt").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("engine", ["sparse", "dictionary_learning"])
def test_interrupted_training_resumes_to_the_same_end(world, tmp_path, monkeypatch, engine):
    args = ["--sae_model", "batch_top_k", "matryoshka_batch_top_k", "--expansion_factor", "2", "--k", "4",
            "--steps", "60", "--batch_size", "256", "--warmup_steps", "5", "--threshold_start_step", "10",
            "--checkpoint_every", "20", "--log_steps", "30", "--seed", "3", "--engine", engine]
    assert _train(world, tmp_path / "ref", *args) == 0
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer

    from saevlm.sae.sparse_engine import SparseEngine
    owner = SparseEngine if engine == "sparse" else BatchTopKTrainer
    real_update = owner.update
    calls = []

    def dying_update(self, step, x):
        calls.append(step)
        if step == 47:
            raise KeyboardInterrupt
        return real_update(self, step, x)

    monkeypatch.setattr(owner, "update", dying_update)
    assert _train(world, tmp_path / "run", *args) == 130
    assert 47 in calls  # the update under test is the one that ran
    assert torch.load(tmp_path / "run" / "trainer_0" / "resume.pt", weights_only=False)["step"] == 40
    monkeypatch.setattr(owner, "update", real_update)
    assert _train(world, tmp_path / "run", *args) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["engine"] == {"trainer_0": engine, "trainer_1": engine}
    for t in ("trainer_0", "trainer_1"):
        ref = torch.load(tmp_path / "ref" / t / "ae.pt")
        got = torch.load(tmp_path / "run" / t / "ae.pt")
        assert ref.keys() == got.keys()
        for k in ref:
            assert torch.equal(ref[k], got[k]), f"{t}/{k} differs after resume"


def test_dictionary_learning_checkpoint_loads_and_encodes_identically(world, tmp_path):
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import (MatryoshkaBatchTopKSAE,
                                                                     MatryoshkaBatchTopKTrainer)
    from dictionary_learning.training import trainSAE

    acts = torch.from_numpy(ActivationStore(world / "train").read(0, 4096))
    data = iter([acts[i:i + 256] for i in range(0, 4096, 256)] * 4)
    cfgs = [dict(trainer=BatchTopKTrainer, steps=40, activation_dim=64, dict_size=128, k=4, layer=0,
                 lm_name="synthetic", warmup_steps=5, threshold_start_step=10, device="cpu"),
            dict(trainer=MatryoshkaBatchTopKTrainer, steps=40, activation_dim=64, dict_size=128, k=4,
                 layer=0, lm_name="synthetic", warmup_steps=5, threshold_start_step=10, device="cpu",
                 group_fractions=[0.25, 0.75])]
    trainSAE(data, cfgs, steps=40, save_dir=str(tmp_path / "dl"), save_steps=[20], device="cpu")
    x = torch.from_numpy(ActivationStore(world / "val").read(0, 500))
    for i, cls in ((0, BatchTopKSAE), (1, MatryoshkaBatchTopKSAE)):
        ours = load_sae(str(tmp_path / "dl" / f"trainer_{i}"))
        theirs = cls.from_pretrained(str(tmp_path / "dl" / f"trainer_{i}" / "ae.pt"))
        assert ours.dict_class == cls.__name__
        with torch.no_grad():
            assert torch.equal(encode_batch(ours, x), theirs.encode(x))
        # an intermediate checkpoint file loads too (config from the trainer directory)
        assert load_sae(str(tmp_path / "dl" / f"trainer_{i}" / "checkpoints" / "ae_20.pt")).dict_size == 128


def test_encode_store_round_trip_and_csr(world, tmp_path):
    assert _train(world, tmp_path / "ck", "--expansion_factor", "2", "--k", "4", "--steps", "30",
                  "--batch_size", "256", "--warmup_steps", "5", "--threshold_start_step", "10") == 0
    sae_dir = tmp_path / "ck" / "trainer_0"
    assert api.run("encode", sae_path=sae_dir, activations_dir=world / "val", output_dir=tmp_path / "codes",
                   encode_rows=777, no_progress=True) == 0
    codes = CodeStore(tmp_path / "codes")
    assert codes.shape == (8000, 128)
    sae = load_sae(str(sae_dir))
    x = torch.from_numpy(ActivationStore(world / "val").read(0, 8000))
    with torch.no_grad():
        ref = encode_batch(sae, x).numpy()
    dense = np.concatenate([c.to_dense() for c in codes.iter_csr(1000)])
    np.testing.assert_allclose(dense, ref, rtol=1e-6, atol=1e-6)
    assert np.array_equal(dense != 0, ref != 0)
    assert codes.nnz == int((ref != 0).sum())
    assert codes.provenance.sae.dict_class == "BatchTopKSAE"
    check_same_images(codes, ActivationStore(world / "embeddings_val"))
    p, ix, v = dense_to_csr(torch.tensor([[0, 2.0, 0], [0, 0, 0], [1.0, 0, 3.0]]))
    assert p.tolist() == [0, 1, 1, 3] and ix.tolist() == [1, 0, 2] and v.tolist() == [2.0, 1.0, 3.0]


def test_extract_with_sae_equals_extract_then_encode(tiny_clip_dir, image_folder, tmp_path):
    common = ["--model_name", tiny_clip_dir, "--layer", "2", "--random_k", "3", "--dataset_name",
              "imagefolder", "--data_path", image_folder, "--batch_size", "4", "--num_workers", "0",
              "--device", "cpu", "--no_progress"]
    assert run_cli("extract", *common, "--output_dir", tmp_path / "acts") == 0
    store = tmp_path / "acts" / "post_mlp_residual_2"
    assert api.run("train", layout="trainers", activations_dir=store, checkpoints_dir=tmp_path / "ck",
                   expansion_factor=[2], k=3, steps=20, batch_size=16, warmup_steps=2, threshold_start_step=5,
                   device="cpu", no_progress=True) == 0
    sae = tmp_path / "ck" / "trainer_0"
    assert api.run("encode", sae_path=sae, activations_dir=store, output_dir=tmp_path / "codes_a", no_progress=True) == 0
    assert run_cli("extract", *common, "--sae_path", sae, "--sae_model", "batch_top_k",
                   "--output_dir", tmp_path / "direct") == 0
    a = CodeStore(tmp_path / "codes_a")
    b = CodeStore(tmp_path / "direct" / "post_mlp_residual_2_codes")
    assert np.array_equal(a.row_index(), b.row_index())
    np.testing.assert_allclose(a.read(0, a.num_rows), b.read(0, b.num_rows), rtol=1e-5, atol=1e-6)
    assert np.array_equal(a.read(0, a.num_rows) != 0, b.read(0, b.num_rows) != 0)


@pytest.mark.parametrize("extra,expected", [
    (["--k", "200", "--expansion_factor", "1"], "--k 200: larger than the dictionary (64 latents"),
    (["--sae_model", "matryoshka_batch_top_k", "--group_fractions", "0.5", "0.4"], "must be positive and sum to 1"),
    (["--warmup_steps", "50", "--steps", "50"], "--warmup_steps 50: must be >= 0 and below --steps 50"),
    (["--decay_start", "3"], "--decay_start 3: must lie after --warmup_steps"),
    (["--device", "cuda"], "CUDA was requested"),
])
def test_invalid_training_flags(world, tmp_path, capsys, extra, expected):
    base = {"--steps": "20", "--warmup_steps": "5", "--batch_size": "64"}
    for i in range(0, len(extra)):
        if extra[i] in base and i + 1 < len(extra):
            base.pop(extra[i])
    flat = [x for kv in base.items() for x in kv]
    rc = _train(world, tmp_path / "ck", *flat, *extra)
    err = capsys.readouterr().err
    if expected == "CUDA was requested" and torch.cuda.is_available():
        return
    assert rc == 2 and expected in err and "Traceback" not in err, err


def test_train_val_width_mismatch_and_sae_store_mismatch(world, tmp_path, capsys):
    assert api.run("synthetic", output_dir=tmp_path / "w32", dim=32, num_train=500, num_val=100) == 0
    rc = run_cli("train", "--layout", "trainers", "--activations_dir", world / "train", "--val_activations_dir", tmp_path / "w32" / "val",
                 "--checkpoints_dir", tmp_path / "ck", "--steps", "10", "--warmup_steps", "2", "--device", "cpu")
    assert rc == 2 and "width 32, but --activations_dir" in capsys.readouterr().err
    assert _train(world, tmp_path / "ck2", "--expansion_factor", "1", "--k", "4", "--steps", "10",
                  "--batch_size", "64", "--warmup_steps", "2") == 0
    rc = run_cli("encode", "--sae_path", tmp_path / "ck2" / "trainer_0", "--activations_dir",
                 tmp_path / "w32" / "val", "--output_dir", tmp_path / "c", "--no_progress")
    assert rc == 2 and "takes 64-d inputs" in capsys.readouterr().err
    rc = run_cli("encode", "--sae_path", tmp_path / "nope", "--activations_dir", world / "val",
                 "--output_dir", tmp_path / "c", "--no_progress")
    assert rc == 2 and "no such file or directory" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"encoder.weight": torch.zeros(4, 4)}, bad / "ae.pt")
    (bad / "config.json").write_text(json.dumps({"trainer": {"dict_class": "GatedAutoEncoder"}}))
    rc = run_cli("encode", "--sae_path", bad, "--activations_dir", world / "val", "--output_dir",
                 tmp_path / "c", "--no_progress")
    assert rc == 2 and "'GatedAutoEncoder' (from" in capsys.readouterr().err


def test_each_architecture_row_lists_the_train_flags_its_trainer_reads(tmp_path, capsys):
    """archs.ArchSpec.config_fields is true: changing each listed flag changes the trainer's
    arguments, and a flag that no chosen architecture reads is refused."""
    import dataclasses
    from pathlib import Path

    from saevlm.data.manifest import Provenance
    from saevlm.sae.archs import ARCH_SPECS
    from saevlm.sae.train import SAESpec, TrainConfig, _trainer_kwargs, unread_flags

    prov = Provenance.from_json({"model": {"name": "m", "source": "m"},
                                 "hook": {"attachment_point": "post_mlp_residual", "layer": 3}})
    changed = {"k": 7, "auxk_alpha": 0.5, "threshold_beta": 0.5, "threshold_start_step": 11, "group_fractions": [0.5, 0.5],
               "l1_penalty": 0.3, "sparsity_penalty": 0.3, "bandwidth": 0.01}
    for arch, spec in ARCH_SPECS.items():
        base = TrainConfig(activations_dir="a", checkpoints_dir="c", sae_model=[arch])
        sae = SAESpec(arch, 2, 32, 1e-3, Path(tmp_path))
        before = _trainer_kwargs(base, sae, 16, "cpu", prov, 99)
        for field in spec.config_fields:
            after = _trainer_kwargs(dataclasses.replace(base, **{field: changed[field]}), sae, 16, "cpu", prov, 99)
            assert after != before, (arch, field)
        assert unread_flags(base) == []
    assert base.sae_options(arch) == spec.options(**{f: getattr(base, f) if f != "group_fractions" else
                                                     tuple(base.group_fractions) for f in spec.config_fields})
    # an architecture's option given to architectures that do not read it is an error naming both
    with pytest.raises(UserError, match=r"--group_fractions 0.5 0.5: an option of matryoshka_batch_top_k only; "
                                        r"--sae_model batch_top_k does not read it"):
        TrainConfig(activations_dir="a", checkpoints_dir="c", sae_model=["batch_top_k"], group_fractions=[0.5, 0.5])
    with pytest.raises(UserError, match=r"--l1_penalty 5.0: an option of standard only; --sae_model batch_top_k "
                                        r"matryoshka_batch_top_k does not read it"):
        TrainConfig(activations_dir="a", sae_model=["batch_top_k", "matryoshka_batch_top_k"], l1_penalty=5)
    both = TrainConfig(activations_dir="a", sae_model=["batch_top_k", "matryoshka_batch_top_k"],
                       group_fractions=[0.5, 0.5])  # read by one of the two: allowed
    assert unread_flags(both) == [] and both.sae_options("matryoshka_batch_top_k").group_fractions == (0.5, 0.5)


def test_a_finished_encode_is_skipped_from_the_checkpoint_alone(world, tmp_path, capsys):
    """A rerun whose code store is complete skips before building the SAE: its description, read
    from the weights alone, is the loaded SAE's for every architecture, and a process that skips
    never imports dictionary_learning (whose import costs seconds per step of a script)."""
    import subprocess
    import sys

    from saevlm.sae.archs import ARCH_SPECS
    from saevlm.sae.checkpoint import describe_checkpoint

    archs = sorted(ARCH_SPECS)
    assert _train(world, tmp_path / "ck", "--sae_model", *archs, "--expansion_factor", "2", "--k", "4",
                  "--steps", "12", "--batch_size", "256", "--warmup_steps", "2", "--threshold_start_step", "4") == 0
    trainers = sorted((tmp_path / "ck").glob("trainer_*"))
    assert len(trainers) == len(archs)
    for t in trainers:
        loaded = load_sae(str(t))
        assert describe_checkpoint(str(t)) == loaded.describe(), t
    assert {load_sae(str(t)).arch for t in trainers} == set(archs)
    sae, out = trainers[0], tmp_path / "codes"
    argv = ["encode", "--sae_path", str(sae), "--activations_dir", str(world / "val"), "--output_dir", str(out),
            "--no_progress"]
    assert run_cli(*argv) == 0
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    probe = ("import sys; from saevlm.cli import main; rc = main(sys.argv[1:]); "
             "print('DL', 'dictionary_learning' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
    assert r.returncode == 0 and "complete already, skipped" in r.stderr, r.stderr
    assert "DL False" in r.stdout
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before
    # another SAE over the same folder is not taken as done: the writer refuses it, naming the difference
    assert run_cli(*argv[:2], trainers[1], *argv[3:]) == 2
    assert "different settings" in capsys.readouterr().err


def test_a_legacy_format_checkpoint_is_described_as_it_loads(tmp_path):
    """A checkpoint in torch's pre-zip format cannot be memory-mapped; describe_checkpoint reads it
    whole instead of refusing it, and gives what load_sae gives."""
    from helpers import save_random_sae
    from saevlm.sae.checkpoint import describe_checkpoint

    sae = save_random_sae(tmp_path / "s", 16, 32, k=4)
    weights = sae / "ae.pt" if sae.is_dir() else sae
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(weights, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError):
        torch.load(legacy, weights_only=True, mmap=True)
    assert describe_checkpoint(str(legacy)) == load_sae(str(legacy)).describe()
