"""The sparse training engine (issue: fast training): dictionary_learning's update, computed with
sparse codes. The reference is dictionary_learning's own ``trainer.update`` on the same batches."""

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import ENGINE_ARCHS, engine_batches, engine_trainer, kill_a_third, rel_diff, run_cli
from saevlm.sae import sparse_engine
from saevlm.sae.archs import dict_class
from saevlm.sae.sparse_engine import SparseEngine

@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_five_steps_equal_dictionary_learning(arch):
    """Every weight, the threshold and the dead-latent counters after 5 steps agree with
    dictionary_learning's update to 1e-3 (relative norm), with AuxK active and the threshold
    EMA running; AuxK changes the weights by far more than that, so it was computed."""
    F = 384
    ref, ours, no_aux = engine_trainer(arch), engine_trainer(arch), engine_trainer(arch, auxk_alpha=0.0)
    engine, engine_no_aux = SparseEngine(ours, arch), SparseEngine(no_aux, arch)
    for step, x in enumerate(engine_batches(5)):
        for t in (ref, ours, no_aux):  # latents that do not fire in this batch stay dead: AuxK every step
            kill_a_third(t, F)
        loss_ref = ref.update(step, x.clone())
        loss_ours = float(engine.update(step, x.clone()))
        engine_no_aux.update(step, x.clone())
        assert loss_ours == pytest.approx(loss_ref, rel=1e-4), step
        assert ours.dead_features == ref.dead_features > 10, step
    assert torch.equal(ours.num_tokens_since_fired, ref.num_tokens_since_fired)
    ref_state, our_state, no_aux_state = ref.ae.state_dict(), ours.ae.state_dict(), no_aux.ae.state_dict()
    assert ref_state.keys() == our_state.keys()
    assert float(ref.ae.threshold) > 0
    for name in ref_state:
        assert rel_diff(our_state[name].float(), ref_state[name].float()) < 1e-3, name
    assert max(rel_diff(no_aux_state[n].float(), ref_state[n].float()) for n in ref_state) > 1e-2
    # the Adam moments too (they carry the run on after a resume)
    for p_ref, p_ours in zip(ref.ae.parameters(), ours.ae.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel_diff(ours.optimizer.state[p_ours][key], ref.optimizer.state[p_ref][key]) < 1e-3


@pytest.mark.parametrize("arch", ["batch_top_k", "matryoshka_batch_top_k"])
def test_bf16_encoder_gemm_stays_close(arch):
    """--autocast bf16 with the sparse engine: only the encoder GEMM is bf16; weights stay fp32."""
    ref, ours = engine_trainer(arch), engine_trainer(arch)
    engine = SparseEngine(ours, arch, matmul_dtype=torch.bfloat16)
    for step, x in enumerate(engine_batches(3)):
        ref.update(step, x.clone())
        engine.update(step, x.clone())
    for (name, a), b in zip(ours.ae.named_parameters(), ref.ae.parameters()):
        assert a.dtype == torch.float32 and rel_diff(a.detach(), b.detach()) < 5e-2, name


def test_batch_topk_entries_equal_the_full_topk():
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(300, 500, generator=g).relu(),                          # dense positives
             (torch.randn(64, 4096, generator=g) - 2.5).relu(),                  # sparse positives
             torch.zeros(50, 200).index_fill_(1, torch.tensor([7]), 1.0),        # ties, one column
             (torch.randn(40, 256, generator=g) - 3.5).relu()]                   # fewer positives than n
    cases[2][:, 9] = torch.rand(50, generator=g)
    for pre in cases:
        for n in (1, 37, pre.shape[0] * 8):
            rows, cols, vals = sparse_engine.batch_topk_entries(pre, n)
            top = pre.flatten().topk(n)
            expected = torch.zeros_like(pre).flatten().scatter_(0, top.indices, top.values).view_as(pre)
            got = torch.zeros_like(pre)
            got[rows, cols] = vals
            assert torch.equal(vals, pre[rows, cols])
            # the same values; the same entries where the n-th largest value is not tied
            assert torch.equal(got.flatten().sort().values, expected.flatten().sort().values)
            if int((pre == top.values.min()).sum()) == 1:
                assert torch.equal(got, expected)
            assert bool((vals > 0).all())
            key = rows * pre.shape[1] + cols
            assert torch.equal(key, key.sort().values)  # (row, col) order, as the CSR products need


def test_row_topk_and_sddmm_match_brute_force():
    g = torch.Generator().manual_seed(0)
    pre = torch.rand(70, 90, generator=g)
    allowed = torch.tensor([3, 10, 11, 50, 89])
    rows, cols, vals = sparse_engine.row_topk_entries(pre, 3, allowed)
    masked = torch.full_like(pre, -1.0)
    masked[:, allowed] = pre[:, allowed]
    top = masked.topk(3, dim=1)
    assert torch.equal(torch.zeros_like(pre).index_put_((rows, cols), vals),
                       torch.zeros_like(pre).scatter_(1, top.indices, top.values))
    a, b = torch.randn(70, 16, generator=g), torch.randn(90, 16, generator=g)
    dense = a @ b.t()
    assert torch.allclose(sparse_engine.sddmm(rows, cols, a, b), dense[rows, cols], atol=1e-5)
    assert torch.allclose(sparse_engine.sddmm_gather(rows, cols, a, b), dense[rows, cols], atol=1e-5)
    x = sparse_engine.spmm(rows, cols, vals, b, 70)
    assert torch.allclose(x, torch.zeros(70, 90).index_put_((rows, cols), vals) @ b, atol=1e-5)


class _LargeOutputs(TorchDispatchMode):
    """Records the storages of op outputs with at least ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.storages = numel, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() >= self.numel:
                self.storages.add(t.untyped_storage().data_ptr())
        return out


@pytest.mark.parametrize("arch", ["batch_top_k", "matryoshka_batch_top_k"])
def test_no_dense_batch_by_dict_tensor_beyond_the_pre_activations(arch, monkeypatch):
    """One batch x dict_size buffer per step (the encoder's pre-activations, ReLU in place);
    dictionary_learning's update makes several (the detector is not blind)."""
    monkeypatch.setattr(sparse_engine, "_SCAN_ROWS", 64)
    B, D, F = 1024, 16, 512
    x = engine_batches(2, B=B, D=D)
    for engine in ("sparse", "dictionary_learning"):
        tr = engine_trainer(arch, D=D, F=F, k=4)
        kill_a_third(tr, F)
        update = SparseEngine(tr, arch).update if engine == "sparse" else tr.update
        update(0, x[0])
        kill_a_third(tr, F)
        with _LargeOutputs(B * F // 4) as seen:
            update(1, x[1])
        if engine == "sparse":
            assert len(seen.storages) == 1
        else:
            assert len(seen.storages) > 3


# -- saevlm train --engine ---------------------------------------------------------------------

def _train(world, out, *extra, top_k_options: bool = True):
    """``saevlm train`` on the world; ``top_k_options``: with this file's --k and threshold start
    (an architecture without them, e.g. standard, refuses them)."""
    options = ["--k", "4", "--threshold_start_step", "20"] if top_k_options else []
    return run_cli("train", "--layout", "trainers", "--activations_dir", world / "train",
                   "--val_activations_dir", world / "val", "--checkpoints_dir", out, "--device", "cpu",
                   "--no_progress", "--batch_size", "256", "--warmup_steps", "10", "--val_rows", "4000",
                   *options, *extra)


def test_engines_agree_after_hundreds_of_steps_and_checkpoints_load_into_dictionary_learning(world, tmp_path):
    """R2, L0 and dead fraction of 300-step runs agree within noise; the sparse engine's files are
    dictionary_learning's (its classes load them and encode identically)."""
    args = ["--sae_model", "batch_top_k", "matryoshka_batch_top_k", "--expansion_factor", "4",
            "--steps", "300", "--log_steps", "300", "--save_at", "150"]
    assert _train(world, tmp_path / "dl", *args, "--engine", "dictionary_learning") == 0
    assert _train(world, tmp_path / "sp", *args) == 0
    x = torch.randn(300, 64) * 0.5
    for t, arch in (("trainer_0", "batch_top_k"), ("trainer_1", "matryoshka_batch_top_k")):
        a = json.loads((tmp_path / "dl" / t / "eval.json").read_text())
        b = json.loads((tmp_path / "sp" / t / "eval.json").read_text())
        assert b["r2"] == pytest.approx(a["r2"], abs=0.01)
        assert b["l0"] == pytest.approx(a["l0"], rel=0.05)
        assert b["dead_fraction"] == pytest.approx(a["dead_fraction"], abs=0.02)
        assert a["r2"] > 0.5  # both learnt something
        for f in ("ae.pt", "checkpoints/ae_150.pt"):
            path = tmp_path / "sp" / t / f
            state = torch.load(path)
            assert all(v.is_contiguous() for v in state.values())
            theirs = dict_class(arch).from_pretrained(str(path))
            from saevlm.sae.checkpoint import load_sae
            from saevlm.sae.inference import encode_batch
            ours = load_sae(str(path))
            with torch.no_grad():
                assert torch.equal(encode_batch(ours, x), theirs.encode(x))
        cfg = json.loads((tmp_path / "sp" / t / "config.json").read_text())
        assert cfg["saevlm"]["engine"] == "sparse"
        assert cfg["trainer"]["trainer_class"] == json.loads(
            (tmp_path / "dl" / t / "config.json").read_text())["trainer"]["trainer_class"]


def test_a_run_started_with_one_engine_resumes_with_the_other(world, tmp_path, monkeypatch):
    """dictionary_learning's engine to step 40, then the sparse engine to 60: the same end as a run
    on one engine (to float rounding), and run.json says which engine computed."""
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer

    args = ["--sae_model", "batch_top_k", "--expansion_factor", "2", "--steps", "60", "--checkpoint_every", "20",
            "--log_steps", "60", "--seed", "5"]
    assert _train(world, tmp_path / "ref", *args, "--engine", "dictionary_learning") == 0
    real = BatchTopKTrainer.update

    def dying(self, step, x):
        if step == 45:
            raise KeyboardInterrupt
        return real(self, step, x)

    monkeypatch.setattr(BatchTopKTrainer, "update", dying)
    assert _train(world, tmp_path / "run", *args, "--engine", "dictionary_learning") == 130
    monkeypatch.setattr(BatchTopKTrainer, "update", real)
    assert torch.load(tmp_path / "run" / "trainer_0" / "resume.pt", weights_only=False)["step"] == 40
    assert _train(world, tmp_path / "run", *args) == 0
    ref, got = (torch.load(tmp_path / d / "trainer_0" / "ae.pt") for d in ("ref", "run"))
    for name in ref:
        assert rel_diff(got[name].float(), ref[name].float()) < 1e-3, name
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["complete"] and run["engine"] == {"trainer_0": "sparse"}


def test_data_on_device_gives_the_same_batches(world, tmp_path):
    args = ["--sae_model", "batch_top_k", "--expansion_factor", "2", "--steps", "30", "--log_steps", "30"]
    assert _train(world, tmp_path / "a", *args, "--data_on_device", "no") == 0
    assert _train(world, tmp_path / "b", *args, "--data_on_device", "yes") == 0
    a, b = (torch.load(tmp_path / d / "trainer_0" / "ae.pt") for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_uncovered_architecture_falls_back_with_a_note(world, tmp_path, capsys):
    assert _train(world, tmp_path / "ck", "--sae_model", "standard", "--expansion_factor", "1",
                  "--steps", "20", "--log_steps", "20", top_k_options=False) == 0
    err = capsys.readouterr().err
    assert "the sparse engine covers top_k, batch_top_k, matryoshka_batch_top_k; standard trains with " \
           "dictionary_learning's update" in err
    run = json.loads((tmp_path / "ck" / "run.json").read_text())
    assert run["engine"] == {"trainer_0": "dictionary_learning"}
    assert run["precision"] == {"autocast": "none", "tf32": None, "device": "cpu"}


def _count_host_reads(fn):
    """Calls that make the host wait for the device on a GPU, counted on CPU (a stand-in for
    torch.cuda.set_sync_debug_mode): item / float / int / bool / tolist of a tensor, nonzero,
    and indexing by a boolean mask (its result's size is only known on the device)."""
    from collections import Counter

    from torch.overrides import TorchFunctionMode as Mode

    class Count(Mode):
        def __init__(self):
            super().__init__()
            self.calls = Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero"):
                self.calls[name] += 1
            elif name == "__getitem__" and len(args) > 1:
                index = args[1] if isinstance(args[1], tuple) else (args[1],)
                if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                    self.calls["mask"] += 1
            return func(*args, **(kwargs or {}))

    with Count() as counter:
        out = fn()
    return out, counter.calls


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_a_step_waits_for_the_device_only_where_the_sizes_need_it(arch):
    """Per step (AuxK on, threshold EMA running): at most 10 host reads, the loss returned as a
    device tensor (not float: dictionary_learning's update waits every step to return one), and
    the same step as before (the loss still equals dictionary_learning's). Before this count was
    kept, a step made 18 (BatchTopK), 24 (Matryoshka) and 12 (TopK) such reads."""
    F = 384
    ref, ours = engine_trainer(arch), engine_trainer(arch)
    engine = SparseEngine(ours, arch)
    for step, x in enumerate(engine_batches(4)):
        for t in (ref, ours):
            kill_a_third(t, F)
        loss_ref = ref.update(step, x.clone())
        loss, calls = _count_host_reads(lambda: engine.update(step, x.clone()))
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0
        assert float(loss) == pytest.approx(loss_ref, rel=1e-4)
        if step >= 2:  # past the geometric-median start and the threshold's first step
            assert sum(calls.values()) <= 10, dict(calls)
            assert calls["__float__"] <= 1 and calls["item"] == 0, dict(calls)
