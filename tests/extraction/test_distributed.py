"""extract / embed under torchrun (2 processes, gloo on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import SUBPROCESS_ENV, saevlm_single, saevlm_torchrun, store_bytes
from saevlm.data.store import ActivationStore




def test_two_rank_extract_and_embed_equal_one_process(tiny_clip_dir, big_image_folder, tmp_path):
    common = ["--model_name", tiny_clip_dir, "--dataset_name", "imagefolder", "--data_path", big_image_folder,
              "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--no_progress", "--shard_rows", "24"]
    extract = ["extract", "--layer", "1", "3", "last", "--random_k", "3", *common]
    r = saevlm_single([*extract, "--output_dir", tmp_path / "one"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = saevlm_torchrun([*extract, "--output_dir", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    for slug in ("post_mlp_residual_1", "post_mlp_residual_3", "post_projection"):
        one, two = store_bytes(tmp_path / "one" / slug), store_bytes(tmp_path / "two" / slug)
        assert list(one) == list(two), slug
        for name in one:
            assert one[name] == two[name], f"{slug}/{name}"
        assert len(ActivationStore(tmp_path / "two" / slug).shards) >= 4  # both ranks wrote shards
        assert not list((tmp_path / "two" / slug).glob("manifest.rank*.json"))
    r1 = saevlm_single(["embed", "--embeddings_path", tmp_path / "e1", *common])
    r2 = saevlm_torchrun(["embed", "--embeddings_path", tmp_path / "e2", *common])
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr[-3000:]
    assert store_bytes(tmp_path / "e1") == store_bytes(tmp_path / "e2")


def test_killed_rank_leaves_store_incomplete_and_rerun_completes(tmp_path, big_image_folder):
    from helpers import save_tiny_clip

    model = save_tiny_clip(tmp_path / "clip", num_layers=6, hidden=128, size=96)
    args = ["extract", "--model_name", model, "--layer", "1", "4", "--cls_only", "--dataset_name", "imagefolder",
            "--data_path", big_image_folder, "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
            "--no_progress", "--shard_rows", "2"]
    r = saevlm_single([*args, "--output_dir", tmp_path / "ref"])
    assert r.returncode == 0, r.stderr[-3000:]
    proc = saevlm_torchrun([*args, "--output_dir", tmp_path / "run"], wait=False)
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
    r = saevlm_torchrun([*args, "--output_dir", tmp_path / "run"])
    assert r.returncode == 0, r.stderr[-3000:]
    for slug in ("post_mlp_residual_1", "post_mlp_residual_4"):
        assert store_bytes(tmp_path / "ref" / slug) == store_bytes(tmp_path / "run" / slug)


def test_train_sweep_split_over_two_ranks_equals_one_process(tmp_path):
    """One launcher, two processes, each training its share of the sweep on the same batches:
    the SAEs equal those of a single-process run; a rerun after completion does nothing."""
    import torch

    assert saevlm_single(["synthetic", "--output_dir", tmp_path / "w", "--num_train", "3000", "--num_val", "500"]).returncode == 0
    args = ["train", "--activations_dir", tmp_path / "w" / "train", "--val_activations_dir", tmp_path / "w" / "val",
            "--sae_model", "batch_top_k", "matryoshka_batch_top_k", "--expansion_factor", "1", "2", "--k", "4",
            "--steps", "40", "--batch_size", "256", "--warmup_steps", "5", "--threshold_start_step", "10",
            "--checkpoint_every", "20", "--device", "cpu", "--no_progress"]
    r = saevlm_single([*args, "--checkpoints_dir", tmp_path / "one"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = saevlm_torchrun([*args, "--checkpoints_dir", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 4 SAE(s)" in r.stdout
    assert json.loads((tmp_path / "two" / "run.json").read_text())["complete"]
    for t in ("trainer_0", "trainer_1", "trainer_2", "trainer_3"):
        a, b = torch.load(tmp_path / "one" / t / "ae.pt"), torch.load(tmp_path / "two" / t / "ae.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), t


def test_pooled_top_k_store_with_two_ranks_and_resumed_equals_one_process(tiny_clip_dir, big_image_folder, tmp_path):
    """``extract --sae_path --mean_pool --top_k`` is a writer kind of the extraction engine: two
    torchrun ranks, and a run interrupted after its first shards and resumed, write the same
    top-images files as one uninterrupted process; every file is checksummed in the manifest, and a
    second writer is kept out by the store's lock."""
    import numpy as np

    from helpers import save_random_sae
    from saevlm.data.atomic import file_checksum
    from saevlm.data.topimages import TopImagesStore

    sae = save_random_sae(tmp_path / "sae", 64, 96, k=6, layer=1)
    common = ["extract", "--model_name", tiny_clip_dir, "--dataset_name", "imagefolder", "--data_path",
              big_image_folder, "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--no_progress",
              "--shard_rows", "8", "--layer", "1", "--mean_pool", "--sae_path", sae, "--allow_mismatch",
              "--top_k", "5"]
    r = saevlm_single([*common, "--output_dir", tmp_path / "one"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = saevlm_torchrun([*common, "--output_dir", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (tmp_path / d / "post_mlp_residual_1_codes" for d in ("one", "two"))
    files = ["top_images_5.npy", "top_images_5_values.npy", "top_images_5_kth_value.npy", "hai_indices_5.npy",
             "hai_indices_5_worst.npy", "image_ids.npy"]
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    m = json.loads((one / "manifest.json").read_text())
    assert m["complete"] and m["k"] == 5 and len(m["shards"]) == 60 // 8 + 1 == 8
    for name in files[:5]:
        assert m["file_checksums"][name] == file_checksum(one / name), name
    for entry in m["shards"]:
        for name, checksum in entry["checksums"].items():
            assert file_checksum(one / name) == checksum, name
    assert TopImagesStore(two).num_rows == 60 and TopImagesStore(two).k == 5
    # brute force from the pooled code store of the same run
    assert saevlm_single([c for c in common if c not in ("--top_k", "5")] + ["--output_dir", tmp_path / "codes"]).returncode == 0
    from saevlm.data.codes import CodeStore
    codes = CodeStore(tmp_path / "codes" / "post_mlp_residual_1_codes")
    dense = codes.read(0, codes.num_rows)
    vals = np.load(one / "top_images_5_values.npy")
    np.testing.assert_allclose(vals, -np.sort(-dense, axis=0)[:5].T, atol=1e-6)

    # interrupted after some shards, then resumed: the same files. The process dies with os._exit
    # right after recording its second shard (no cleanup runs, as under SIGKILL); a watcher that
    # SIGKILLs on seeing the manifest raced a fast run on a loaded machine and sometimes lost.
    three = tmp_path / "three" / "post_mlp_residual_1_codes"
    die = ("import os, sys; from saevlm.data.topimages import TopImagesWriter as W; f = W.write_shard\n"
           "def g(self, *a, **k):\n    f(self, *a, **k)\n    g.n = getattr(g, 'n', 0) + 1\n"
           "    if g.n == 2: os._exit(9)\n"
           "W.write_shard = g; from saevlm.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", die, *map(str, common), "--output_dir", tmp_path / "three"],
                       env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 9, p.stderr[-3000:]
    before = json.loads((three / "manifest.json").read_text())
    assert not before["complete"] and 2 <= len(before["shards"]) < 8, len(before["shards"])
    # while another process holds the store's lock, a second writer is refused and changes nothing
    from saevlm.data.atomic import OutputLock
    from saevlm.data.store import LOCK
    held = OutputLock(three, "--output_dir", name=LOCK)
    r = saevlm_single([*common, "--output_dir", tmp_path / "three"])
    held.release()
    assert r.returncode == 2 and "another saevlm process is writing there" in r.stderr
    assert json.loads((three / "manifest.json").read_text()) == before
    # the killed run's lock went with it: the rerun resumes
    r = saevlm_single([*common, "--output_dir", tmp_path / "three"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after" in r.stderr
    for name in files:
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
