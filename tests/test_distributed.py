"""extract / embed under torchrun (2 processes, gloo on CPU)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from test_extract import _store_bytes
from saevlm.data.store import ActivationStore

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, nproc=2, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_port()}", "--master_addr=127.0.0.1", "-m", "saevlm", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def _single(args):
    return subprocess.run([sys.executable, "-m", "saevlm", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_two_rank_extract_and_embed_equal_one_process(tiny_clip_dir, big_image_folder, tmp_path):
    common = ["--model_name", tiny_clip_dir, "--dataset_name", "imagefolder", "--data_path", big_image_folder,
              "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--no_progress", "--shard_rows", "24"]
    extract = ["extract", "--layer", "1", "3", "last", "--random_k", "3", *common]
    r = _single([*extract, "--output_dir", tmp_path / "one"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun([*extract, "--output_dir", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    for slug in ("post_mlp_residual_1", "post_mlp_residual_3", "post_projection"):
        one, two = _store_bytes(tmp_path / "one" / slug), _store_bytes(tmp_path / "two" / slug)
        assert list(one) == list(two), slug
        for name in one:
            assert one[name] == two[name], f"{slug}/{name}"
        assert len(ActivationStore(tmp_path / "two" / slug).shards) >= 4  # both ranks wrote shards
        assert not list((tmp_path / "two" / slug).glob("manifest.rank*.json"))
    r1 = _single(["embed", "--embeddings_path", tmp_path / "e1", *common])
    r2 = _torchrun(["embed", "--embeddings_path", tmp_path / "e2", *common])
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr[-3000:]
    assert _store_bytes(tmp_path / "e1") == _store_bytes(tmp_path / "e2")


def test_killed_rank_leaves_store_incomplete_and_rerun_completes(tmp_path, big_image_folder):
    from helpers import save_tiny_clip

    model = save_tiny_clip(tmp_path / "clip", num_layers=6, hidden=128, size=96)
    args = ["extract", "--model_name", model, "--layer", "1", "4", "--cls_only", "--dataset_name", "imagefolder",
            "--data_path", big_image_folder, "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
            "--no_progress", "--shard_rows", "2"]
    r = _single([*args, "--output_dir", tmp_path / "ref"])
    assert r.returncode == 0, r.stderr[-3000:]
    proc = _torchrun([*args, "--output_dir", tmp_path / "run"], wait=False)
    rank1 = tmp_path / "run" / "post_mlp_residual_4" / "manifest.rank1.json"
    killed = False
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            info = json.loads(rank1.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.01)
            continue
        if len(info["shards"]) >= 2:
            os.kill(info["pid"], signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait(timeout=120)
    assert killed, "the run finished before rank 1 could be killed; make it longer"
    assert proc.returncode != 0
    manifest = json.loads((tmp_path / "run" / "post_mlp_residual_4" / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(Exception, match="incomplete"):
        ActivationStore(tmp_path / "run" / "post_mlp_residual_4")
    r = _torchrun([*args, "--output_dir", tmp_path / "run"])
    assert r.returncode == 0, r.stderr[-3000:]
    for slug in ("post_mlp_residual_1", "post_mlp_residual_4"):
        assert _store_bytes(tmp_path / "ref" / slug) == _store_bytes(tmp_path / "run" / slug)


def test_train_sweep_split_over_two_ranks_equals_one_process(tmp_path):
    """One launcher, two processes, each training its share of the sweep on the same batches:
    the SAEs equal those of a single-process run; a rerun after completion does nothing."""
    import torch

    assert _single(["synthetic", "--output_dir", tmp_path / "w", "--num_train", "3000", "--num_val", "500"]).returncode == 0
    args = ["train", "--activations_dir", tmp_path / "w" / "train", "--val_activations_dir", tmp_path / "w" / "val",
            "--sae_model", "batch_top_k", "matryoshka_batch_top_k", "--expansion_factor", "1", "2", "--k", "4",
            "--steps", "40", "--batch_size", "256", "--warmup_steps", "5", "--threshold_start_step", "10",
            "--checkpoint_every", "20", "--device", "cpu", "--no_progress"]
    r = _single([*args, "--checkpoints_dir", tmp_path / "one"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun([*args, "--checkpoints_dir", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 4 SAE(s)" in r.stdout
    assert json.loads((tmp_path / "two" / "run.json").read_text())["complete"]
    for t in ("trainer_0", "trainer_1", "trainer_2", "trainer_3"):
        a, b = torch.load(tmp_path / "one" / t / "ae.pt"), torch.load(tmp_path / "two" / t / "ae.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), t
