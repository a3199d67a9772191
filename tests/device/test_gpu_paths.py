"""The GPU paths (issue: ready for the GPU): one-line refusals that must come before any work,
an out-of-memory that leaves the run resumable, and, marked ``cuda``, the CUDA-only checks that
``benchmarks/gpu_check.py`` runs on a GPU machine (skipped here with the reason shown)."""

import json

import pytest
import torch

from helpers import ENGINE_ARCHS, engine_batches, engine_trainer, kill_a_third, rel_diff, run_cli
from saevlm.errors import UserError


def _train(world, out, *extra, device="cpu"):
    return run_cli("train", "--layout", "trainers", "--activations_dir", world / "train", "--val_activations_dir",
                   world / "val", "--checkpoints_dir", out, "--device", device, "--no_progress", *extra)


TRAIN_ARGS = ["--sae_model", "batch_top_k", "--expansion_factor", "2", "--k", "4", "--steps", "60",
              "--batch_size", "256", "--warmup_steps", "5", "--threshold_start_step", "10",
              "--checkpoint_every", "20", "--log_steps", "30", "--seed", "3"]


def test_device_cuda_without_a_gpu_is_one_line_before_any_work(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _train(world, tmp_path / "ck", *TRAIN_ARGS, device="cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saevlm train: error: --device cuda: CUDA was requested but torch "
                                               "sees no GPU"), err
    assert not (tmp_path / "ck").exists()  # nothing was written


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch):
    """A pre-Ampere GPU (a V100, a T4) has no bf16: --autocast bf16 says so, naming the card."""
    from saevlm.device import autocast_context, check_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    with pytest.raises(UserError, match=r"autocast bf16: Tesla V100-SXM2-16GB has no bf16 arithmetic .* use "
                                        r"autocast fp16 or none"):
        check_bf16(torch.device("cuda", 0))
    with pytest.raises(UserError, match="has no bf16"):
        autocast_context(torch.device("cuda", 0), "bf16")
    check_bf16(torch.device("cpu"))  # no GPU, nothing to check


def test_data_on_device_that_does_not_fit_is_refused_before_any_work(world, tmp_path, capsys, monkeypatch):
    """--data_on_device yes with a store larger than the GPU's free memory: one line with both
    sizes, before the norm factor or any SAE is built (a stand-in GPU with 1 MiB free)."""
    from saevlm.distributed import init_distributed

    gpu = torch.device("cuda", 0)
    single = init_distributed("cpu")[0]
    monkeypatch.setattr("saevlm.distributed.init_distributed", lambda spec: (single, gpu))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 80 * 2**30))
    assert _train(world, tmp_path / "ck", *TRAIN_ARGS, "--data_on_device", "yes") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("saevlm train: error: --data_on_device yes: the training store (") and \
        "x 64, fp32) takes 9.8 MiB, and cuda:0 has 1.0 MiB free of 80.0 GiB; use --data_on_device no (or auto)" in err, err
    assert not (tmp_path / "ck" / "trainer_0").exists()


def test_out_of_memory_is_one_line_and_the_run_resumes(world, tmp_path, capsys, monkeypatch):
    """A device out-of-memory at step 47: one line naming --batch_size, the SAE and the step a
    rerun resumes from (40, the last resume point); the rerun ends where an uninterrupted run ends."""
    from saevlm.sae.sparse_engine import SparseEngine

    assert _train(world, tmp_path / "ref", *TRAIN_ARGS) == 0
    real_update = SparseEngine.update

    def oom_update(self, step, x):
        if step == 47:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_update(self, step, x)

    monkeypatch.setattr(SparseEngine, "update", oom_update)
    capsys.readouterr()
    assert _train(world, tmp_path / "run", *TRAIN_ARGS) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("saevlm train: error: --batch_size 256: training ran out of cpu memory at step 47 with "
                          "1 SAE(s) on it: ") and "(128 latents)" in err and \
        "rerun the same command to resume from step 40" in err, err
    monkeypatch.setattr(SparseEngine, "update", real_update)
    assert _train(world, tmp_path / "run", *TRAIN_ARGS) == 0
    ref = torch.load(tmp_path / "ref" / "trainer_0" / "ae.pt")
    got = torch.load(tmp_path / "run" / "trainer_0" / "ae.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["complete"] is True


# ------------------------------------------------------------------ CUDA only (benchmarks/gpu_check.py)


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_sparse_engine_on_cuda_equals_dictionary_learning_and_its_cpu_result(arch):
    """5 steps with AuxK on: the sparse engine on CUDA against dictionary_learning's update on
    CUDA (weights, threshold, dead counters, Adam moments) and against its own CPU run (TF32 off,
    so the comparison is of fp32 arithmetic)."""
    from saevlm.sae.sparse_engine import SparseEngine

    torch.backends.cuda.matmul.allow_tf32 = False
    F = 384
    ref, ours, cpu = (engine_trainer(arch, device="cuda"), engine_trainer(arch, device="cuda"), engine_trainer(arch))
    engine, engine_cpu = SparseEngine(ours, arch), SparseEngine(cpu, arch)
    for step, x in enumerate(engine_batches(5)):
        for t in (ref, ours, cpu):
            kill_a_third(t, F)
        loss_ref = ref.update(step, x.cuda())
        loss = engine.update(step, x.cuda())
        engine_cpu.update(step, x.clone())
        assert loss.device.type == "cuda" and float(loss) == pytest.approx(loss_ref, rel=1e-4)
        assert ours.dead_features == ref.dead_features
    assert torch.equal(ours.num_tokens_since_fired, ref.num_tokens_since_fired)
    for key, value in ref.ae.state_dict().items():
        assert rel_diff(ours.ae.state_dict()[key].cpu(), value.cpu()) < 1e-3, key
        assert rel_diff(ours.ae.state_dict()[key].cpu(), cpu.ae.state_dict()[key]) < 1e-3, key
    for p_ref, p_ours in zip(ref.ae.parameters(), ours.ae.parameters()):
        for moment in ("exp_avg", "exp_avg_sq"):
            a, b = ref.optimizer.state[p_ref][moment], ours.optimizer.state[p_ours][moment]
            assert rel_diff(b.cpu(), a.cpu()) < 1e-3, moment


@pytest.mark.cuda
def test_a_cuda_step_does_not_wait_for_the_host_more_than_counted():
    """torch's own sync detector on the GPU: a BatchTopK step synchronises at most 10 times
    (tests/sae/test_sparse_engine.py counts the same calls with a CPU stand-in)."""
    import warnings

    from saevlm.sae.sparse_engine import SparseEngine

    tr = engine_trainer("batch_top_k", device="cuda")
    engine = SparseEngine(tr, "batch_top_k")
    xs = engine_batches(4)
    for step in range(3):
        engine.update(step, xs[step].cuda())
    x = xs[3].cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.update(3, x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 10, [str(w.message)[:80] for w in syncs]


@pytest.mark.cuda
@pytest.mark.parametrize("options", [["--autocast", "bf16"], ["--data_on_device", "yes"], ["--no-tf32"],
                                     ["--engine", "dictionary_learning"]])
def test_train_command_on_cuda(world, tmp_path, options):
    """The command end to end on the GPU with each precision / data option (pinned-memory batches
    in all but --data_on_device yes): it completes and reaches the R^2 of the CPU run within 0.05."""
    assert _train(world, tmp_path / "cpu", *TRAIN_ARGS) == 0
    assert _train(world, tmp_path / "gpu", *TRAIN_ARGS, *options, device="cuda") == 0
    cpu = json.loads((tmp_path / "cpu" / "trainer_0" / "eval.json").read_text())
    gpu = json.loads((tmp_path / "gpu" / "trainer_0" / "eval.json").read_text())
    assert gpu["r2"] == pytest.approx(cpu["r2"], abs=0.05)
    run = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert run["precision"]["device"] == "cuda"


@pytest.mark.cuda
@pytest.mark.parametrize("autocast", ["fp16", "bf16"])
def test_extract_under_autocast_on_cuda(tiny_clip_dir, image_folder, tmp_path, autocast):
    """extract with --autocast fp16 / bf16 on the GPU against fp32 on the CPU: same rows, close values."""
    import numpy as np

    from saevlm.data.store import ActivationStore

    common = ["--model_name", tiny_clip_dir, "--dataset_name", "imagefolder", "--data_path", image_folder,
              "--layer", "2", "--cls_only", "--num_workers", "2", "--no_progress"]
    assert run_cli("extract", *common, "--output_dir", tmp_path / "cpu", "--device", "cpu") == 0
    assert run_cli("extract", *common, "--output_dir", tmp_path / "gpu", "--device", "cuda",
                   "--autocast", autocast) == 0
    cpu = ActivationStore(tmp_path / "cpu" / "post_mlp_residual_2")
    gpu = ActivationStore(tmp_path / "gpu" / "post_mlp_residual_2")
    x, y = cpu.read(0, cpu.num_rows), gpu.read(0, gpu.num_rows)
    assert x.shape == y.shape
    assert float(np.abs(x - y).max() / np.abs(x).max()) < 0.05
