"""Fault injection: damaged or mismatched inputs and failing outputs, each through the CLI.

Every case asserts the exit code, that the message is ONE line naming the file or flag and what
differs, that no earlier output changed (SHA-256 of every file before and after) and that nothing
half-written (``.tmp-`` files) is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli

from saevlm.data.atomic import file_checksum


# ----------------------------------------------------------------------------- helpers
def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root`` (lock files are not outputs)."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file() and ".lock" not in f.name}


def stray_tmp(root: Path) -> list[str]:
    return [str(f) for f in root.rglob("*") if ".tmp-" in f.name or "write-test" in f.name]


def one_line_error(capsys, *must_contain: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def run_fails(capsys, root: Path, argv: list, *must_contain: str, rc: int = 2) -> str:
    """Run a command that must fail; nothing under ``root`` may change."""
    capsys.readouterr()
    before = tree_hashes(root)
    assert run_cli(*argv) == rc
    line = one_line_error(capsys, *must_contain)
    assert tree_hashes(root) == before, "an earlier output changed"
    assert not stray_tmp(root), stray_tmp(root)
    return line


def hold_lock(directory: Path) -> subprocess.Popen:
    """Another process holding the output lock of ``directory`` (returns once it holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from saevlm.data.atomic import OutputLock
        lock = OutputLock({str(directory)!r}, "--output_dir")
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def rewrite_manifest(store: Path, edit, keep_seal: bool = False) -> None:
    """Edit a manifest by hand. The seal is recomputed over the edit (as a forger who knows the
    format would), so each test reaches the check it is about; ``keep_seal`` keeps the writer's
    seal, to test the seal itself."""
    from saevlm.data.manifest import manifest_seal

    m = json.loads((store / "manifest.json").read_text())
    edit(m)
    if not keep_seal and "seal_sha256" in m:
        m["seal_sha256"] = manifest_seal(m)
    (store / "manifest.json").write_text(json.dumps(m))


# ----------------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A synthetic world, one trained SAE, its codes, MS of neurons and latents, top images."""
    root = tmp_path_factory.mktemp("faults") / "run"
    w = root / "world"
    assert run_cli("synthetic", "--output_dir", w, "--num_train", "1500", "--num_val", "300") == 0
    assert run_cli("train", "--layout", "trainers", "--activations_dir", w / "train", "--checkpoints_dir",
                   root / "ck", "--expansion_factor", "2", "--k", "4", "--steps", "60", "--batch_size", "128",
                   "--warmup_steps", "5", "--threshold_start_step", "10", "--device", "cpu", "--no_progress") == 0
    assert run_cli("encode", "--sae_path", root / "ck" / "trainer_0", "--activations_dir", w / "val",
                   "--output_dir", root / "codes", "--no_progress") == 0
    for store in (w / "val", root / "codes"):
        assert run_cli("ms", "--activations_dir", store, "--embeddings_path", w / "embeddings_val",
                       "--device", "cpu", "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", root / "codes", "--device", "cpu", "--no_progress") == 0
    return root


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    # provenance records absolute paths; the copy's stores point at themselves through their folders
    return dst


def ms_argv(run: Path, store: Path, *extra) -> list:
    return ["ms", "--activations_dir", store, "--embeddings_path", run / "world" / "embeddings_val",
            "--device", "cpu", "--no_progress", *extra]


# ----------------------------------------------------------------------------- 1. integrity
def test_random_bytes_inside_a_shard(run_copy, capsys):
    shard = run_copy / "world" / "val" / "acts_00000.npy"
    data = bytearray(shard.read_bytes())
    data[4000:5024] = np.random.default_rng(0).integers(0, 256, 1024, dtype=np.uint8).tobytes()
    shard.write_bytes(bytes(data))  # same size: only the checksum can tell
    what = ["world/val", "shard 0 (acts_00000.npy)", "CRC-32"]
    run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "world" / "val", "--overwrite"), *what)
    run_fails(capsys, run_copy, ["inspect", run_copy / "world" / "val", "--verify", "--no_progress"], *what)
    run_fails(capsys, run_copy, ["top-images", "--activations_dir", run_copy / "world" / "val",
                                 "--output_dir", run_copy / "t", "--no_progress"], *what)
    # the same damage in the training store stops training before any checkpoint is written
    tshard = run_copy / "world" / "train" / "acts_00000.npy"
    data = bytearray(tshard.read_bytes())
    data[9000:10024] = bytes(1024)
    tshard.write_bytes(bytes(data))
    run_fails(capsys, run_copy, ["train", "--activations_dir", run_copy / "world" / "train", "--checkpoints_dir",
                                 run_copy / "ck2", "--steps", "5", "--batch_size", "64", "--warmup_steps", "1",
                                 "--device", "cpu", "--no_progress"], "world/train", "acts_00000.npy", "CRC-32")
    assert not (run_copy / "ck2" / "trainer_0" / "ae.pt").exists()


def test_without_checksum_verification_nan_values_are_still_refused(run_copy, capsys, monkeypatch):
    shard = run_copy / "world" / "val" / "acts_00000.npy"
    arr = np.load(shard)
    arr[7, 3], arr[20, 1] = np.nan, np.inf
    np.save(shard, arr)  # same size and header, new bytes
    monkeypatch.setenv("SAEVLM_VERIFY", "0")
    run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "world" / "val", "--overwrite"),
              "2 non-finite values", "first at row 7 (image 7")


def test_nonfinite_values_refused_at_write_and_read_unless_allowed(tmp_path, capsys):
    from saevlm.data.store import ActivationStore
    from saevlm.data.writer import StoreWriter
    from saevlm.errors import UserError

    acts = np.ones((10, 3), np.float32)
    acts[4, 1] = np.nan
    rows = np.stack([np.arange(10), -np.ones(10, np.int64)], 1)
    common = dict(kind="activations", dim=3, dtype="fp32", images_per_shard=10, num_images=10,
                  provenance={"dataset": {"paths_sha256": "x"}}, software={})
    w = StoreWriter(tmp_path / "s", **common)
    with pytest.raises(UserError, match=r"shard 0 would hold 1 non-finite activations .*image 4, token -1"):
        w.write_shard(0, acts, rows, 0, 10)
    w.close()
    assert not list((tmp_path / "s").glob("acts_*"))  # nothing was written for it
    w = StoreWriter(tmp_path / "s", allow_nonfinite=True, **common)
    w.write_shard(0, acts, rows, 0, 10)
    w.finalize()
    with pytest.raises(UserError, match=r"holds 1 non-finite values .*shard 0 \(acts_00000.npy\) at row 4"):
        ActivationStore(tmp_path / "s")
    assert np.isnan(ActivationStore(tmp_path / "s", allow_nonfinite=True).read(0, 10)[4, 1])


def test_manifest_dtype_edited(run_copy, capsys):
    val = run_copy / "world" / "val"
    rewrite_manifest(val, lambda m: m.update(dtype="bfloat16"))
    run_fails(capsys, run_copy, ms_argv(run_copy, val, "--overwrite"), "manifest.json", "bfloat16",
              "storage_dtype")
    rewrite_manifest(val, lambda m: m.update(dtype="bfloat16", storage_dtype="uint16"))
    run_fails(capsys, run_copy, ms_argv(run_copy, val, "--overwrite"), "acts_00000.npy", "float32", "bfloat16")
    rewrite_manifest(val, lambda m: m.update(dtype="int8"))
    run_fails(capsys, run_copy, ms_argv(run_copy, val, "--overwrite"), "dtype 'int8' is not a store dtype")


def test_truncated_shard(run_copy, capsys):
    shard = run_copy / "world" / "val" / "acts_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-1000])
    run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "world" / "val", "--overwrite"),
              "shard 0 (acts_00000.npy)", "bytes", "truncated")
    shard.write_bytes(shard.read_bytes()[:30])  # not even a whole header
    run_fails(capsys, run_copy, ["inspect", run_copy / "world" / "val"], "acts_00000.npy")


def test_shard_row_count_edited(run_copy, capsys):
    rewrite_manifest(run_copy / "world" / "val",
                     lambda m: m["shards"][0].update(num_rows=m["shards"][0]["num_rows"] - 50))
    line = run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "world" / "val", "--overwrite"),
                     "shard 0 (acts_00000.npy) holds 300 rows, the manifest says 250")
    assert "--cls_only" not in line  # not blamed on token selection any more


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object, found a list"),
    (None, "no 'dtype' key"),
])
def test_broken_manifest(run_copy, capsys, content, expected):
    val = run_copy / "world" / "val"
    if content is None:
        rewrite_manifest(val, lambda m: m.pop("dtype"))
    else:
        (val / "manifest.json").write_text(content)
    run_fails(capsys, run_copy, ms_argv(run_copy, val, "--overwrite"), "manifest.json", expected)
    run_fails(capsys, run_copy, ["top-images", "--activations_dir", val, "--output_dir", run_copy / "t",
                                 "--no_progress"], "manifest.json")
    run_fails(capsys, run_copy, ["train", "--activations_dir", val, "--checkpoints_dir", run_copy / "ck3",
                                 "--steps", "5", "--device", "cpu"], "manifest.json")


def test_latent_ids_out_of_range(run_copy, capsys):
    codes = run_copy / "codes"
    m = json.loads((codes / "manifest.json").read_text())
    f = codes / m["shards"][0]["indices"]
    ids = np.load(f)
    ids[17] = 128 + 5  # the dictionary has 128 latents
    np.save(f, ids)
    # a buggy writer would also record the checksum of what it wrote: only the range check can tell
    rewrite_manifest(codes, lambda m: m["shards"][0]["checksums"].update({f.name: file_checksum(f)}))
    what = ["codes", "latent id 133", "outside the dictionary [0, 128)"]
    run_fails(capsys, run_copy, ["top-images", "--activations_dir", codes, "--no_progress"], *what)
    run_fails(capsys, run_copy, ms_argv(run_copy, codes, "--overwrite"), *what)


def test_nan_codes_refused(run_copy, capsys):
    codes = run_copy / "codes"
    m = json.loads((codes / "manifest.json").read_text())
    f = codes / m["shards"][0]["values"]
    values = np.load(f)
    values[30] = np.nan
    np.save(f, values)
    rewrite_manifest(codes, lambda m: m["shards"][0]["checksums"].update({f.name: file_checksum(f)}))
    run_fails(capsys, run_copy, ["top-images", "--activations_dir", codes, "--no_progress"],
              "codes", "1 non-finite codes", "--allow_nonfinite")


def test_inspect_reads_code_stores(finished_run, capsys):
    capsys.readouterr()
    assert run_cli("inspect", finished_run / "codes", "--verify", "--no_progress") == 0
    out = capsys.readouterr().out
    assert "128 latents" in out and "CSR structure and latent ids OK" in out


# ----------------------------------------------------------------------------- 2. pairing by content
def test_other_pictures_with_the_same_file_names_are_refused(tiny_clip_dir, tmp_path, capsys):
    from helpers import make_image_folder

    a = make_image_folder(tmp_path / "a" / "imgs", num_classes=2, per_class=4, size=32, seed=0)
    b = make_image_folder(tmp_path / "b" / "imgs", num_classes=2, per_class=4, size=32, seed=0)
    # one picture differs, same file name
    from PIL import Image
    Image.new("RGB", (32, 32), (250, 10, 10)).save(b / "class_001" / "img_0002.png")
    common = ["--model_name", tiny_clip_dir, "--dataset_name", "imagefolder", "--batch_size", "4",
              "--num_workers", "0", "--device", "cpu", "--no_progress"]
    assert run_cli("extract", "--layer", "last", "--attachment_point", "post_projection", "--data_path", a,
                   "--output_dir", tmp_path / "acts", *common) == 0
    assert run_cli("embed", "--data_path", a, "--embeddings_path", tmp_path / "emb_a", *common) == 0
    # the other copy: same relative paths (so the same paths fingerprint), one picture differs
    shutil.move(str(a), str(tmp_path / "a_moved"))
    shutil.copytree(b, a)
    assert run_cli("embed", "--data_path", a, "--embeddings_path", tmp_path / "emb_b", *common) == 0
    acts = tmp_path / "acts" / "post_projection"
    run_fails(capsys, tmp_path, ["ms", "--activations_dir", acts, "--embeddings_path", tmp_path / "emb_b",
                                 "--device", "cpu", "--no_progress"],
              "hold different pictures under the same file names", "1 of 8 images differ",
              "dataset index 6", "class_001/img_0002.png", str(acts), "emb_b")
    assert run_cli("ms", "--activations_dir", acts, "--embeddings_path", tmp_path / "emb_a",
                   "--device", "cpu", "--no_progress") == 0


def test_stores_without_content_hashes_still_pair_with_a_notice(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for store in (run / "world" / "val", run / "world" / "embeddings_val"):  # as an older saevlm wrote them
        def strip(m):
            m.pop("content_sha256")
            for s in m["shards"]:
                s["checksums"].pop(s.pop("images_file"))
        rewrite_manifest(store, strip)
    capsys.readouterr()
    assert run_cli(*ms_argv(run, run / "world" / "val", "--output_dir", tmp_path / "ms_old")) == 0
    assert "written without image content hashes" in capsys.readouterr().err
    ref = np.load(finished_run / "world" / "val" / "ms_synthetic" / "scores.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ms_old" / "scores.npy"), ref)


# ----------------------------------------------------------------------------- 3. failing outputs
def _fail_writes_under(monkeypatch, root: Path, err: int) -> None:
    """Make every file opened for writing under ``root`` fail with ``err`` (a read-only or full
    file system, as root sees it: permission bits do not stop root)."""
    import builtins

    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(Path(file).resolve()).startswith(str(root.resolve())):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize("err, words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full")])
def test_unwritable_output_fails_before_any_work(run_copy, capsys, monkeypatch, err, words):
    import saevlm.metrics.ms as ms_module

    out = run_copy / "out"
    out.mkdir()
    calls = []
    monkeypatch.setattr(ms_module, "MSAccumulator",
                        lambda *a, **k: calls.append(1) or pytest.fail("MS computed before the check"))
    _fail_writes_under(monkeypatch, out, err)
    run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "codes", "--output_dir", out), "--output_dir",
              str(out), words)
    assert not calls


def test_disk_full_during_a_write_leaves_no_temp_file_and_the_old_file(tmp_path, monkeypatch):
    from saevlm.data.atomic import atomic_save_npy, atomic_write_json
    from saevlm.errors import UserError

    target = tmp_path / "scores.npy"
    atomic_save_npy(target, np.arange(3.0))
    before = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"cannot write .*scores.npy: the disk is full"):
        atomic_save_npy(target, np.arange(1000.0))
    with pytest.raises(UserError, match="disk is full"):
        atomic_write_json(tmp_path / "ms.json", {"a": 1})
    assert target.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["scores.npy"]


def test_a_second_writer_stops_with_the_holder_named(run_copy, capsys):
    out = run_copy / "ms_locked"
    holder = hold_lock(out)
    try:
        run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "codes", "--output_dir", out),
                  "another saevlm process is writing there", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone (even killed), the lock is free: no stale lock
    capsys.readouterr()
    assert run_cli(*ms_argv(run_copy, run_copy / "codes", "--output_dir", out)) == 0


def test_two_extracts_into_one_store(tiny_clip_dir, image_folder, tmp_path, capsys):
    store = tmp_path / "acts" / "post_projection"
    holder = hold_lock(store)
    try:
        run_fails(capsys, tmp_path, ["extract", "--model_name", tiny_clip_dir, "--layer", "last",
                                     "--attachment_point", "post_projection", "--data_path", image_folder,
                                     "--output_dir", tmp_path / "acts", "--num_workers", "0", "--device", "cpu",
                                     "--no_progress"], "post_projection", "another saevlm process")
    finally:
        holder.kill()
        holder.wait()


def test_extract_overwrite_replaces_a_store_with_a_corrupt_manifest(tiny_clip_dir, image_folder, tmp_path, capsys):
    argv = ["extract", "--model_name", tiny_clip_dir, "--layer", "last", "--attachment_point", "post_projection",
            "--data_path", image_folder, "--output_dir", tmp_path / "acts", "--num_workers", "0",
            "--device", "cpu", "--no_progress"]
    assert run_cli(*argv) == 0
    store = tmp_path / "acts" / "post_projection"
    good = tree_hashes(store)
    (store / "manifest.json").write_text("{garbage")
    run_fails(capsys, tmp_path, argv, "manifest.json is damaged", "--overwrite")
    assert run_cli(*argv, "--overwrite") == 0
    new = tree_hashes(store)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["complete"]
    # the same bytes as the first run (the manifest differs only in its timestamps)
    assert {k: v for k, v in new.items() if k != "manifest.json"} == \
        {k: v for k, v in good.items() if k != "manifest.json"}


# ----------------------------------------------------------------------------- 4. impossible flags
@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "-1", "the learning rate must be positive"),
    ("--lr", "nan", "expected a finite number"),
    ("--threshold_beta", "5", "must lie in [0, 1]"),
    ("--auxk_alpha", "-3", "must be >= 0"),
])
def test_impossible_hyperparameters(run_copy, capsys, flag, value, words):
    run_fails(capsys, run_copy, ["train", "--activations_dir", run_copy / "world" / "train", "--checkpoints_dir",
                                 run_copy / "ck_bad", "--steps", "5", "--device", "cpu", flag, value],
              f"{flag} {value}", words)
    assert not (run_copy / "ck_bad").exists()


# ----------------------------------------------------------------------------- 5. never clobber
def test_ms_per_embedder_and_refusal_of_other_inputs(run_copy, capsys):
    codes = run_copy / "codes"
    first = tree_hashes(codes / "ms_synthetic")
    # the same inputs again: allowed (recomputed, same numbers)
    assert run_cli(*ms_argv(run_copy, codes)) == 0
    assert tree_hashes(codes / "ms_synthetic")["scores.npy"] == first["scores.npy"]
    # results from other inputs in the same folder are refused unless --overwrite
    line = run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "world" / "val", "--output_dir",
                                               codes / "ms_synthetic"),
                     "holds MS results computed from other inputs", "--overwrite")
    assert str(codes) in line


def test_report_tells_the_truth(run_copy, capsys):
    # an unfinished training run beside the finished one
    assert run_cli("train", "--layout", "trainers", "--activations_dir", run_copy / "world" / "train",
                   "--checkpoints_dir", run_copy / "ck_killed", "--expansion_factor", "2", "--k", "4",
                   "--steps", "40", "--batch_size", "128", "--warmup_steps", "5", "--threshold_start_step", "10",
                   "--device", "cpu", "--no_progress") == 0
    run_json = run_copy / "ck_killed" / "run.json"
    rj = json.loads(run_json.read_text())
    rj["complete"] = False
    run_json.write_text(json.dumps(rj))
    (run_copy / "ck_killed" / "trainer_0" / "eval.json").unlink()
    assert run_cli("fms", "--activations_dir", run_copy / "codes", "--concepts",
                   run_copy / "world" / "concepts_val.npz", "--max_concepts", "20") == 0
    assert run_cli("uniqueness", "--activations_dir", run_copy / "codes") == 0
    capsys.readouterr()
    assert run_cli("report", "--run_dir", run_copy, "--no_grids") == 0
    err = capsys.readouterr().err
    md = (run_copy / "report.md").read_text()
    assert "training unfinished" in err and "training unfinished" in md
    assert md.index("**Warnings**") < md.index("## Monosemanticity Score")
    info = json.loads((run_copy / "codes" / "ms_synthetic" / "ms.json").read_text())
    n_scored = info["total"] - info["dead"]
    wide = info["uncertainty"]["wide_intervals"]
    assert f"(n={n_scored}/{info['total']}; {info['scored_active_on_fewer_than_16']} rare; {wide} wide)" in md
    lo, hi = info["uncertainty"]["mean_ci95"]
    assert f"{info['mean']:.3f} [{lo:.3f}, {hi:.3f}]" in md  # the mean with its interval over images
    assert f"{n_scored}/{info['total']} (dead {info['dead_constant']} + {info['dead_one_image']} one-image)" in md
    assert "## Feature Monosemanticity Score" in md and "## Uniqueness of top images" in md
    assert "unfinished" in md.split("## Reconstruction and sparsity")[1]
    # a missing scores.npy: the report is still written, with the file named, and the command fails
    (run_copy / "world" / "val" / "ms_synthetic" / "scores.npy").unlink()
    capsys.readouterr()
    assert run_cli("report", "--run_dir", run_copy, "--no_grids") == 1
    line = one_line_error(capsys, "1 result file(s) missing or damaged", "scores.npy is missing")
    assert "world/val/ms_synthetic/ms.json" in line
    # a store rewritten after its MS was computed: the MS is flagged stale
    rewrite_manifest(run_copy / "codes", lambda m: m.update(finished="2030-01-01T00:00:00+00:00"))
    capsys.readouterr()
    run_cli("report", "--run_dir", run_copy, "--no_grids")
    assert "stale" in capsys.readouterr().err


# ----------------------------------------------------------------------------- own input
def test_no_command_writes_over_its_own_input(tmp_path, capsys, tiny_clip_dir, image_folder):
    """encode / train / extract / embed / make-eval-folder with the output = an input: refused
    before any work even with --overwrite, the input byte-unchanged, and the message suggests no
    destructive flag. ms with the same store as activations and embeddings: refused."""
    from helpers import save_random_sae

    common = ["--dataset_name", "imagefolder", "--data_path", image_folder, "--batch_size", "8", "--num_workers", "0",
              "--device", "cpu", "--no_progress"]
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only",
                   "--output_dir", tmp_path / "acts", *common) == 0
    store = tmp_path / "acts" / "post_mlp_residual_1"
    sae = save_random_sae(tmp_path / "sae", 64, 128, layer=1)
    for argv, flag in [
        (["encode", "--sae_path", sae, "--activations_dir", store, "--output_dir", store, "--overwrite",
          "--allow_mismatch", "--no_progress"], "--activations_dir"),
        (["encode", "--sae_path", sae, "--activations_dir", store, "--output_dir", sae, "--overwrite",
          "--allow_mismatch", "--no_progress"], "--sae_path"),
        (["train", "--activations_dir", store, "--checkpoints_dir", store, "--steps", "5",
          "--device", "cpu"], "--activations_dir"),
        (["embed", "--model_name", tiny_clip_dir, "--embeddings_path", image_folder, "--overwrite", *common],
         "--data_path"),
        (["make-eval-folder", "--dataset_name", "imagefolder", "--data_path", image_folder, "--output_dir",
          image_folder], "--data_path"),
    ]:
        for root in (tmp_path, image_folder):
            assert not stray_tmp(root)
        before = tree_hashes(tmp_path), tree_hashes(image_folder)
        capsys.readouterr()
        assert run_cli(*argv) == 2, argv
        line = one_line_error(capsys, "own input", flag)
        assert "--overwrite" not in line
        assert (tree_hashes(tmp_path), tree_hashes(image_folder)) == before, argv
    # extract: a store folder that is the dataset itself
    data_copy = tmp_path / "data"
    shutil.copytree(image_folder, data_copy / "post_mlp_residual_1")
    run_fails(capsys, tmp_path, ["extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only",
                                 "--output_dir", data_copy, "--dataset_name", "imagefolder", "--data_path",
                                 data_copy / "post_mlp_residual_1", "--num_workers", "0", "--device", "cpu",
                                 "--overwrite", "--no_progress"], "own input", "--data_path")
    run_fails(capsys, tmp_path, ["ms", "--activations_dir", store, "--embeddings_path", store, "--device", "cpu"],
              "--embeddings_path", "same folder as --activations_dir")


# ----------------------------------------------------------------------------- flag ranges, no tracebacks
def test_flag_ranges_are_checked_before_work(run_copy, capsys, tiny_clip_dir, image_folder):
    run_fails(capsys, run_copy, ["extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only",
                                 "--output_dir", run_copy / "x", "--dataset_name", "imagefolder", "--data_path",
                                 image_folder, "--num_workers", "-1", "--device", "cpu"], "--num_workers -1")
    run_fails(capsys, run_copy, ["top-images", "--activations_dir", run_copy / "codes", "--output_dir",
                                 run_copy / "t", "--chunk_rows", "0", "--no_progress"], "--chunk_rows 0")
    run_fails(capsys, run_copy, ["explore", "--run_dir", run_copy, "--static", run_copy / "site",
                                 "--latents", "top:-3", "--no_progress"], "--latents top:-3", "positive")
    run_fails(capsys, run_copy, ["explore", "--run_dir", run_copy, "--static", run_copy / "site",
                                 "--latents", "top:0", "--no_progress"], "--latents top:0", "positive")


def test_an_all_zero_embedding_row_is_named(run_copy, capsys, monkeypatch):
    monkeypatch.setenv("SAEVLM_VERIFY", "0")  # the zeros are the point here, not the checksum
    shard = run_copy / "world" / "embeddings_val" / "acts_00000.npy"
    arr = np.load(shard)
    arr[5] = 0
    np.save(shard, arr)
    run_fails(capsys, run_copy, ms_argv(run_copy, run_copy / "world" / "val", "--overwrite"),
              "--embeddings_path", "image 5 (row 5) is all zeros")


# ----------------------------------------------------------------------------- the shard list
@pytest.fixture
def three_shard_store(tmp_path, tiny_clip_dir, image_folder):
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only", "--shard_rows", "8", "--batch_size", "8",
                   "--output_dir", tmp_path / "acts", "--dataset_name", "imagefolder", "--data_path", image_folder,
                   "--num_workers", "0", "--device", "cpu", "--no_progress") == 0
    store = tmp_path / "acts" / "post_mlp_residual_1"
    assert len(json.loads((store / "manifest.json").read_text())["shards"]) == 3
    return store


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["shards"].insert(1, dict(m["shards"][0])), "is numbered 0"),
    (lambda m: m["shards"].pop(1), "is numbered 2"),
    (lambda m: [m["shards"].pop(1), [s.update(index=i) for i, s in enumerate(m["shards"])]], "starts at image 16"),
    (lambda m: [m["shards"].__setitem__(1, {**m["shards"][0], "index": 1})], "which shard 0 lists too"),
])
def test_a_duplicated_or_dropped_shard_entry_is_refused(three_shard_store, tmp_path, capsys, edit, words):
    rewrite_manifest(three_shard_store, edit)
    for argv in (["inspect", three_shard_store, "--verify", "--no_progress"],
                 ["top-images", "--activations_dir", three_shard_store, "--output_dir", tmp_path / "t",
                  "--no_progress"],
                 ["train", "--activations_dir", three_shard_store, "--checkpoints_dir", tmp_path / "ck",
                  "--steps", "5", "--device", "cpu", "--no_progress"]):
        run_fails(capsys, tmp_path, argv, "manifest.json", words)


def test_verify_recomputes_the_image_id_hash(three_shard_store, tmp_path, capsys, monkeypatch):
    """Rows files swapped between two shards of equal size (checksums off, as after a careless copy):
    every count still matches; inspect --verify recomputes image_ids_sha256 and says so."""
    monkeypatch.setenv("SAEVLM_VERIFY", "0")
    a, b = three_shard_store / "rows_00000.npy", three_shard_store / "rows_00001.npy"
    ra, rb = a.read_bytes(), b.read_bytes()
    a.write_bytes(rb)
    b.write_bytes(ra)
    run_fails(capsys, tmp_path, ["inspect", three_shard_store, "--verify", "--no_progress"], "image_ids_sha256")


# ----------------------------------------------------------------------------- weights tied to their run
def test_an_ae_pt_from_another_run_is_refused(run_copy, capsys):
    """Another run's ae.pt (same width, another store) put beside this run's config.json."""
    w = run_copy / "world"
    assert run_cli("train", "--layout", "trainers", "--activations_dir", w / "val", "--checkpoints_dir",
                   run_copy / "other", "--expansion_factor", "2", "--k", "4", "--steps", "20", "--batch_size", "64",
                   "--warmup_steps", "2", "--threshold_start_step", "5", "--device", "cpu", "--no_progress") == 0
    assert json.loads((run_copy / "ck" / "trainer_0" / "weights.json").read_text())["files"]["ae.pt"]["crc32"]
    shutil.copy(run_copy / "other" / "trainer_0" / "ae.pt", run_copy / "ck" / "trainer_0" / "ae.pt")
    run_fails(capsys, run_copy, ["encode", "--sae_path", run_copy / "ck" / "trainer_0", "--activations_dir", w / "val",
                                 "--output_dir", run_copy / "codes2", "--no_progress"],
              "ae.pt: not the weights this trainer directory's run wrote", "weights.json")


def test_a_full_disk_at_the_final_save_loses_no_training(run_copy, capsys, monkeypatch):
    import saevlm.data.atomic as atomic

    real = atomic.atomic_save_torch

    def full_for_ae(path, obj):
        if Path(path).name == "ae.pt":
            raise atomic.UserError(f"{path}: the disk is full; free space or choose another output directory")
        return real(path, obj)

    monkeypatch.setattr(atomic, "atomic_save_torch", full_for_ae)
    argv = ["train", "--layout", "trainers", "--activations_dir", run_copy / "world" / "train", "--checkpoints_dir",
            run_copy / "ck3", "--expansion_factor", "2", "--k", "4", "--steps", "30", "--batch_size", "64",
            "--warmup_steps", "2", "--threshold_start_step", "5", "--device", "cpu", "--no_progress"]
    capsys.readouterr()
    assert run_cli(*argv) == 2
    one_line_error(capsys, "ae.pt", "disk is full")
    import torch
    assert torch.load(run_copy / "ck3" / "trainer_0" / "resume.pt", weights_only=False)["step"] == 30
    monkeypatch.setattr(atomic, "atomic_save_torch", real)
    assert run_cli(*argv) == 0  # the rerun writes the files from the resume point
    assert (run_copy / "ck3" / "trainer_0" / "ae.pt").is_file()
    assert "resuming 1 SAE(s) at step(s) [30]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- said, not silent
def test_gifs_and_empty_class_folders_are_reported(tmp_path, capsys):
    from PIL import Image

    from saevlm.data.images import open_dataset

    from helpers import make_image_folder

    root = make_image_folder(tmp_path / "d", num_classes=2, per_class=2)
    Image.new("RGB", (8, 8)).save(root / "class_000" / "anim.gif")
    (root / "class_zzz").mkdir()
    images = open_dataset("imagefolder", root, None)
    err = capsys.readouterr().err
    assert "skipped 1 files" in err and "1 .gif" in err
    assert "1 class folders hold no images (first: class_zzz)" in err
    assert len(images) == 4 and images.classes[-1] == "class_zzz"


def test_checkpoint_mistakes_are_one_clear_line(run_copy, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(run_copy)
    # a typo inside a local path (ck/ exists here) is not sent to the hub
    run_fails(capsys, run_copy, ["encode", "--sae_path", "ck/trainr_0/ae.pt", "--activations_dir", "world/val",
                                 "--output_dir", "codes9", "--no_progress"],
              "--sae_path ck/trainr_0/ae.pt: no such file or directory", "local path, not a hub repo")
    bad = run_copy / "badsae"
    bad.mkdir()
    (bad / "ae.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    line = run_fails(capsys, run_copy, ["encode", "--sae_path", bad, "--activations_dir", "world/val",
                                        "--output_dir", "codes9", "--no_progress"], "not a readable torch checkpoint")
    assert len(line) < 500


def test_validation_on_the_training_store_is_warned(run_copy, capsys):
    w = run_copy / "world"
    assert run_cli("train", "--activations_dir", w / "train", "--val_activations_dir", w / "train",
                   "--checkpoints_dir", run_copy / "ck4", "--steps", "5", "--batch_size", "64", "--warmup_steps", "1",
                   "--threshold_start_step", "2", "--device", "cpu", "--no_progress") == 0
    assert "holds the same images as --activations_dir" in capsys.readouterr().err


# ----------------------------------------------------------------------------- stale derived results
def test_results_from_before_a_re_encode_are_refused_or_flagged(run_copy, capsys):
    """After `encode --overwrite` with another SAE, the old top images, MS and hierarchy are stale:
    uniqueness / hierarchy / visualize refuse them, the explorer leaves them out with a note, and
    the report warns, in a COPIED run directory too (run_copy is one)."""
    from saevlm.explorer.app import Explorer

    w, codes = run_copy / "world", run_copy / "codes"
    assert run_cli("uniqueness", "--activations_dir", codes) == 0  # fresh: fine
    assert run_cli("train", "--layout", "trainers", "--activations_dir", w / "val", "--checkpoints_dir",
                   run_copy / "other", "--expansion_factor", "2", "--k", "4", "--steps", "20", "--batch_size", "64",
                   "--warmup_steps", "2", "--threshold_start_step", "5", "--device", "cpu", "--no_progress") == 0
    assert run_cli("encode", "--sae_path", run_copy / "other" / "trainer_0", "--activations_dir", w / "val",
                   "--output_dir", codes, "--overwrite", "--no_progress") == 0
    run_fails(capsys, run_copy, ["uniqueness", "--activations_dir", codes], "top_images_16.npy: stale",
              "saevlm top-images --activations_dir")
    run_fails(capsys, run_copy, ["visualize", "--activations_dir", codes, "--output_dir", run_copy / "viz"],
              "stale")
    view = Explorer(run_copy, cache_dir=run_copy / ".cache", log=lambda *a: None).sae("codes")
    assert view.top is None and view.ms == (None, None)
    assert "top_images_16.json" in view.stale and any(k.endswith("ms.json") for k in view.stale)
    capsys.readouterr()
    assert run_cli("report", "--run_dir", run_copy) == 0
    err = capsys.readouterr().err + (run_copy / "report.md").read_text()
    assert "top_images_16.json: stale" in err and "ms.json: stale" in err
    # refreshed: accepted again
    assert run_cli("top-images", "--activations_dir", codes, "--device", "cpu", "--no_progress") == 0
    assert run_cli("uniqueness", "--activations_dir", codes) == 0


# ----------------------------------------------------------------------------- pictures shown are the store's
def test_visualize_and_explore_show_only_the_stores_own_pictures(tiny_clip_dir, tmp_path, capsys):
    """Other pictures under the same file names: visualize refuses them before writing a figure,
    the explorer shows none and says why; a moved dataset: the explorer says where it was and takes
    --data_path, checked the same way."""
    from PIL import Image

    from helpers import make_image_folder, save_random_sae
    from saevlm.explorer.app import Explorer

    run = tmp_path / "run"
    a = make_image_folder(run / "imgs", num_classes=2, per_class=8, size=32, seed=0)
    common = ["--model_name", tiny_clip_dir, "--dataset_name", "imagefolder", "--batch_size", "4",
              "--num_workers", "0", "--device", "cpu", "--no_progress"]
    assert run_cli("extract", "--layer", "1", "--cls_only", "--data_path", a, "--output_dir", run / "acts", *common) == 0
    sae = save_random_sae(tmp_path / "sae", 64, 128, layer=1)
    codes = run / "codes"
    assert run_cli("encode", "--sae_path", sae, "--activations_dir", run / "acts" / "post_mlp_residual_1",
                   "--output_dir", codes, "--allow_mismatch", "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", codes, "--k", "4", "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", codes, "--no_progress") == 0
    assert run_cli("visualize", "--activations_dir", codes, "--k", "4", "--neurons", "0", "1", "2",
                   "--output_dir", tmp_path / "fig_ok") == 0
    # the same names, other pictures (all of them repainted)
    moved = tmp_path / "moved"
    shutil.move(str(a), str(moved))
    shutil.copytree(moved, a)
    for f in a.rglob("*.png"):
        Image.new("RGB", (32, 32), (250, 10, 10)).save(f)
    run_fails(capsys, tmp_path, ["visualize", "--activations_dir", codes, "--k", "4", "--neurons", "0", "1", "2",
                                 "--output_dir", tmp_path / "fig_bad"],
              "is not the picture the store was made from", "other pictures under the same")
    assert not (tmp_path / "fig_bad").exists()
    page = Explorer(run, cache_dir=tmp_path / "c1", log=lambda *x: None).latent_page("codes", 0)
    assert "is not the picture the store was made from" in page and "<img" not in page.split("Top")[1][:2000]
    # the dataset moved away: said, with the way forward; --data_path brings the images back
    shutil.rmtree(a)
    page = Explorer(run, cache_dir=tmp_path / "c2", log=lambda *x: None).latent_page("codes", 0)
    assert "no longer at" in page and "--data_path" in page
    ex = Explorer(run, cache_dir=tmp_path / "c3", log=lambda *x: None, data_path=str(moved))
    page = ex.latent_page("codes", 0)
    assert "no images to show" not in page
    top = np.load(codes / "top_images_16.npy")[0]
    assert ex.thumbnail("codes", int(top[0]))[:2] == b"\xff\xd8"  # a JPEG


def test_report_lists_unscored_codes_rare_latents_and_paper_values_only_where_they_belong(run_copy, capsys):
    w = run_copy / "world"
    assert run_cli("encode", "--sae_path", run_copy / "ck" / "trainer_0", "--activations_dir", w / "train",
                   "--output_dir", run_copy / "codes_train", "--no_progress") == 0
    assert run_cli("ms", *ms_argv(run_copy, run_copy / "codes", "--overwrite")[1:]) == 0  # records 'rare'
    assert run_cli("report", "--run_dir", run_copy) == 0
    md = (run_copy / "report.md").read_text()
    assert "No MS yet" in md and "`codes_train`" in md
    rare = json.loads(next((run_copy / "codes").glob("ms*/ms.json")).read_text())["scored_active_on_fewer_than_16"]
    codes = np.load(run_copy / "codes" / "codes_00000.indices.npy")
    counts = np.bincount(codes, minlength=128)
    ms = np.load(next((run_copy / "codes").glob("ms*/scores.npy")))
    assert rare == int(((counts < 16) & ~np.isnan(ms)).sum())  # recounted from the stored codes
    assert f"; {rare} rare;" in md
    # a synthetic world is not the paper's configuration: no "(paper in parentheses)" headings
    assert "paper in parentheses" not in md and "Best MS over all scored neurons (the paper's definition):" in md


def test_a_run_resumes_after_its_data_moved_and_a_refusal_names_the_key(run_copy, capsys):
    w = run_copy / "world"
    argv = ["train", "--layout", "trainers", "--checkpoints_dir", run_copy / "ck5", "--expansion_factor", "2",
            "--k", "4", "--steps", "30", "--batch_size", "64", "--warmup_steps", "2", "--threshold_start_step", "5",
            "--device", "cpu", "--no_progress"]
    assert run_cli(*argv, "--activations_dir", w / "train") == 0
    shutil.move(str(w / "train"), str(run_copy / "moved_train"))  # the same data, elsewhere
    capsys.readouterr()
    assert run_cli(*argv, "--activations_dir", run_copy / "moved_train") == 0
    assert "other settings" not in capsys.readouterr().err
    bad = [a if a != "4" else "8" for a in map(str, argv)]
    run_fails(capsys, run_copy, [*bad, "--activations_dir", run_copy / "moved_train"],
              "holds a run with other settings: hyperparameters.k was 4, now 8", "pass the same flags")
    run_fails(capsys, run_copy, [*argv, "--activations_dir", w / "val"], "holds a run with other settings")


def test_a_damaged_output_manifest_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, image_folder):
    import saevlm.models as models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(models, "load_encoder", no_model)
    for argv, store in [(["extract", "--layer", "1", "last", "--cls_only", "--output_dir", tmp_path / "acts"],
                         tmp_path / "acts" / "post_projection"),
                        (["embed", "--embeddings_path", tmp_path / "emb"], tmp_path / "emb")]:
        store.mkdir(parents=True)
        (store / "manifest.json").write_text("{ not json")
        run_fails(capsys, tmp_path, [*argv, "--model_name", "whatever", "--dataset_name", "imagefolder",
                                     "--data_path", image_folder, "--num_workers", "0", "--device", "cpu"],
                  "manifest.json is damaged", str(store))


def test_explore_latent_ids_across_saes_of_different_widths(run_copy, capsys):
    w = run_copy / "world"
    assert run_cli("train", "--layout", "trainers", "--activations_dir", w / "train", "--checkpoints_dir",
                   run_copy / "ck1x", "--expansion_factor", "1", "--k", "4", "--steps", "20", "--batch_size", "64",
                   "--warmup_steps", "2", "--threshold_start_step", "5", "--device", "cpu", "--no_progress") == 0
    assert run_cli("encode", "--sae_path", run_copy / "ck1x" / "trainer_0", "--activations_dir", w / "val",
                   "--output_dir", run_copy / "codes64", "--no_progress") == 0
    capsys.readouterr()
    assert run_cli("explore", "--run_dir", run_copy, "--static", run_copy / "site", "--latents", "3,100",
                   "--no_progress") == 0
    out = capsys.readouterr()
    assert "codes64 has 64 latents; skipped 100" in out.err + out.out
    assert (run_copy / "site" / "sae" / "codes" / "latent" / "100.html").is_file()
    assert (run_copy / "site" / "sae" / "codes64" / "latent" / "3.html").is_file()
    assert not (run_copy / "site" / "sae" / "codes64" / "latent" / "100.html").exists()
    run_fails(capsys, run_copy, ["explore", "--run_dir", run_copy, "--static", run_copy / "site2", "--latents", "500",
                                 "--no_progress"], "no SAE of the run has these latents", "codes64: 64")


def test_a_shard_copied_in_from_another_layers_store_with_its_checksum_is_refused(tmp_path, capsys, tiny_clip_dir,
                                                                                   image_folder):
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "2", "--cls_only", "--shard_rows", "8",
                   "--batch_size", "8", "--output_dir", tmp_path / "acts", "--dataset_name", "imagefolder",
                   "--data_path", image_folder, "--num_workers", "0", "--device", "cpu", "--no_progress") == 0
    l1, l2 = tmp_path / "acts" / "post_mlp_residual_1", tmp_path / "acts" / "post_mlp_residual_2"
    shutil.copy(l2 / "acts_00001.npy", l1 / "acts_00001.npy")
    other = json.loads((l2 / "manifest.json").read_text())["shards"][1]["checksums"]["acts_00001.npy"]
    rewrite_manifest(l1, lambda m: m["shards"][1]["checksums"].update({"acts_00001.npy": other}), keep_seal=True)
    for argv in (["inspect", l1, "--verify", "--no_progress"],
                 ["top-images", "--activations_dir", l1, "--output_dir", tmp_path / "t", "--no_progress"]):
        run_fails(capsys, tmp_path, argv, "seal_sha256 mismatch", "copied in from another store")


def test_visualize_does_not_blame_flags_that_were_not_passed(tmp_path, capsys, tiny_clip_dir):
    from helpers import make_image_folder, save_random_sae

    a = make_image_folder(tmp_path / "imgs", num_classes=2, per_class=8, size=32)
    assert run_cli("extract", "--layer", "1", "--cls_only", "--model_name", tiny_clip_dir, "--dataset_name",
                   "imagefolder", "--data_path", a, "--output_dir", tmp_path / "acts", "--batch_size", "4",
                   "--num_workers", "0", "--device", "cpu", "--no_progress") == 0
    sae = save_random_sae(tmp_path / "sae", 64, 128, layer=1)
    codes = tmp_path / "codes"
    assert run_cli("encode", "--sae_path", sae, "--activations_dir", tmp_path / "acts" / "post_mlp_residual_1",
                   "--output_dir", codes, "--allow_mismatch", "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", codes, "--k", "4", "--no_progress") == 0
    shutil.move(str(a), str(tmp_path / "elsewhere"))
    line = run_fails(capsys, tmp_path, ["visualize", "--activations_dir", codes, "--k", "4", "--neurons", "0",
                                        "--output_dir", tmp_path / "figs"],
                     "the dataset it was extracted from", "pass --data_path with its new folder")
    assert "--split" not in line.split("cannot be opened")[0]
    assert run_cli("visualize", "--activations_dir", codes, "--k", "4", "--neurons", "0", "--output_dir",
                   tmp_path / "figs", "--data_path", tmp_path / "elsewhere") == 0


def test_explorer_shows_every_ms_it_has(run_copy, capsys):
    """Two MS results (two embedders) beside a store: one column per embedder, named, never '-'."""
    from saevlm.explorer.app import Explorer

    assert run_cli(*ms_argv(run_copy, run_copy / "codes", "--output_subdir", "ms_second")) == 0
    ex = Explorer(run_copy, cache_dir=run_copy / ".c", log=lambda *a: None)
    table = ex.table_page("codes")
    assert "MS (second)" in table and "MS (synthetic)" in table
    data = json.loads(ex.latents_js("codes").split("=", 1)[1].rstrip().rstrip(";"))
    first = np.load(run_copy / "codes" / "ms_synthetic" / "scores.npy")
    assert data["columns"]["ms"] is not None and data["columns"]["ms1"] is not None
    j = int(np.nanargmax(first))
    assert abs(data["columns"]["ms"][j] - first[j]) < 1e-4
    page = ex.latent_page("codes", j)
    assert "(second)" in page and "(synthetic)" in page
    assert ex.sae("codes").ms[0] is not None  # the run page's MS mean is not '-'


# ----------------------------------------------------------------------------- round 3: silent gaps closed
def _extract_argv(model: Path, images: Path, out: Path, *extra) -> list:
    return ["extract", "--model_name", model, "--layer", "1", "--cls_only", "--data_path", images, "--output_dir",
            out, "--device", "cpu", "--num_workers", "0", "--no_progress", *extra]


def test_weights_of_another_family_or_a_missing_block_are_refused(tiny_clip_dir, tiny_dinov2_dir, image_folder,
                                                                   tmp_path, capsys):
    """S1: a CLIP config over DINOv2 weights loads every weight at random; S2: a CLIP checkpoint
    without block 3 leaves that block random. Both are refused in one line; --allow_missing_weights
    loads them and records what was missing in the manifest."""
    import safetensors.torch as st

    other = tmp_path / "clip-with-dino-weights"
    shutil.copytree(tiny_clip_dir, other)
    shutil.copy(tiny_dinov2_dir / "model.safetensors", other / "model.safetensors")
    run_fails(capsys, tmp_path, _extract_argv(other, image_folder, tmp_path / "a"), "--model_name",
              "not a complete CLIPVisionModelWithProjection", "not in the checkpoint", "--allow_missing_weights")
    holed = tmp_path / "clip-without-block-3"
    shutil.copytree(tiny_clip_dir, holed)
    weights = st.load_file(holed / "model.safetensors")
    gone = [k for k in weights if ".layers.3." in k]
    assert gone
    st.save_file({k: v for k, v in weights.items() if k not in gone}, holed / "model.safetensors",
                 metadata={"format": "pt"})
    line = run_fails(capsys, tmp_path, _extract_argv(holed, image_folder, tmp_path / "b"), "layers.3.")
    assert f"{len(gone)} weight(s) not in the checkpoint" in line
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").rglob("manifest.json"))
    assert run_cli(*_extract_argv(holed, image_folder, tmp_path / "b", "--allow_missing_weights")) == 0
    m = json.loads(next((tmp_path / "b").rglob("manifest.json")).read_text())
    assert m["provenance"]["model"]["missing_weights"]["missing"]["count"] == len(gone)


def test_models_are_identified_by_their_weights_not_their_path(tiny_clip_dir, image_folder, tmp_path):
    """A byte-identical copy of a model folder is the same model; other weights saved under the
    same path are not (the check every stage that pairs stores asks)."""
    from helpers import save_tiny_clip

    from saevlm.data.store import ActivationStore

    copy = tmp_path / "copy-of-clip"
    shutil.copytree(tiny_clip_dir, copy)
    assert run_cli(*_extract_argv(tiny_clip_dir, image_folder, tmp_path / "orig")) == 0
    assert run_cli(*_extract_argv(copy, image_folder, tmp_path / "copy")) == 0
    orig = ActivationStore(tmp_path / "orig" / "post_mlp_residual_1")
    assert orig.provenance.compatible_with(ActivationStore(tmp_path / "copy" / "post_mlp_residual_1").provenance,
                                           aspects=("model", "hook")) is None
    save_tiny_clip(copy, seed=1)  # another model under the same path
    assert run_cli(*_extract_argv(copy, image_folder, tmp_path / "other")) == 0
    diff = orig.provenance.compatible_with(ActivationStore(tmp_path / "other" / "post_mlp_residual_1").provenance,
                                           aspects=("model", "hook"))
    assert diff is not None and diff.key == "weights_sha256"


def test_labels_and_classes_are_checked_like_shards(run_copy, capsys):
    """S3 / C8: labels.npy replaced by random bytes, edited labels, and labels outside classes.json's
    range (with the checksum and seal forged to match) are refused by inspect --verify, fms and encode."""
    val = run_copy / "world" / "val"
    labels_f = val / "labels.npy"
    original = labels_f.read_bytes()
    fms = ["fms", "--activations_dir", run_copy / "codes"]
    encode = ["encode", "--sae_path", run_copy / "ck" / "trainer_0", "--activations_dir", val, "--output_dir",
              run_copy / "codes_again", "--no_progress"]
    labels_f.write_bytes(np.random.default_rng(0).integers(0, 256, 100, dtype=np.uint8).tobytes())
    run_fails(capsys, run_copy, ["inspect", val, "--verify", "--no_progress"], "labels.npy", "bytes")
    run_fails(capsys, run_copy, encode, "labels.npy")
    labels_f.write_bytes(original)
    codes_labels = run_copy / "codes" / "labels.npy"
    edited = np.load(codes_labels)
    edited[:5] = (edited[:5] + 1) % (edited.max() + 1)
    np.save(codes_labels, edited)  # same size, other labels: only the checksum can tell
    run_fails(capsys, run_copy, fms, "labels.npy", "CRC-32")
    out_of_range = np.load(labels_f)
    out_of_range[3] = 10_000
    np.save(labels_f, out_of_range)
    rewrite_manifest(val, lambda m: m["file_checksums"].update({"labels.npy": file_checksum(labels_f)}))
    run_fails(capsys, run_copy, ["inspect", val, "--verify", "--no_progress"], "labels.npy", "10000", "classes")
    np.save(labels_f, np.load(labels_f).astype(np.float32))
    rewrite_manifest(val, lambda m: m["file_checksums"].update({"labels.npy": file_checksum(labels_f)}))
    run_fails(capsys, run_copy, encode, "labels.npy", "float32")


def test_a_check_cannot_be_switched_off_by_deleting_its_evidence(run_copy, capsys):
    """S4: a store without its seal, and an SAE folder without (or with a damaged) weights.json,
    are refused, naming what is missing and how to rebuild it."""
    val = run_copy / "world" / "val"
    m = json.loads((val / "manifest.json").read_text())
    assert m["schema_version"] == 2 and m["seal_sha256"]
    del m["seal_sha256"]
    (val / "manifest.json").write_text(json.dumps(m))
    run_fails(capsys, run_copy, ms_argv(run_copy, val, "--overwrite"), "no seal_sha256", "--overwrite")
    encode = ["encode", "--sae_path", run_copy / "ck" / "trainer_0", "--activations_dir", run_copy / "world" / "train",
              "--output_dir", run_copy / "codes2", "--no_progress"]
    weights_json = run_copy / "ck" / "trainer_0" / "weights.json"
    saved = weights_json.read_bytes()
    weights_json.unlink()
    run_fails(capsys, run_copy, encode, "no weights.json", "Train this SAE again")
    weights_json.write_text("{not json")
    run_fails(capsys, run_copy, encode, "weights.json: damaged")
    weights_json.write_bytes(saved)
    # a version-1 store (before the seal) still opens, with a note
    from saevlm.data.store import ActivationStore
    m["schema_version"] = 1
    (val / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    ActivationStore(val)
    assert "written before stores were sealed" in capsys.readouterr().err


def test_top_images_and_scores_copied_in_from_another_sae_are_refused_or_flagged(run_copy, capsys):
    """S5: top_images_16.npy / scores.npy whose JSON stamp is intact but whose bytes are another
    result's (rows permuted here: what a copy from another SAE of the same width looks like)."""
    codes = run_copy / "codes"
    top_f = codes / "top_images_16.npy"
    np.save(top_f, np.load(top_f)[::-1].copy())
    run_fails(capsys, run_copy, ["uniqueness", "--activations_dir", codes],
              "top_images_16.npy is not the file its JSON recorded")
    run_fails(capsys, run_copy, ["visualize", "--activations_dir", codes, "--output_dir", run_copy / "viz"],
              "top_images_16.npy is not the file its JSON recorded")
    from saevlm.explorer.index import SAEView
    view = SAEView(path=codes, slug="codes", run_dir=run_copy, cache_dir=run_copy.parent / "cache")
    assert "not the file its JSON recorded" in view.stale["top_images_16.json"] and view.top is None
    ms_dir = next(codes.glob("ms*/"))
    scores = np.load(ms_dir / "scores.npy")
    np.save(ms_dir / "scores.npy", scores[::-1].copy())
    run_fails(capsys, run_copy, ["visualize", "--activations_dir", codes, "--output_dir", run_copy / "viz"],
              "scores.npy is not the file its JSON recorded")


def test_training_on_stores_that_cannot_train_is_one_line(tmp_path, capsys):
    """C1-C3: an all-zero store, a store of NaN read with --allow_nonfinite, a one-row store and a
    constant store: refused naming the store, both engines (before: dictionary_learning's
    TypeError in update_threshold)."""
    from saevlm.data.writer import StoreWriter

    def write(name, acts):
        n = len(acts)
        w = StoreWriter(tmp_path / name, kind="activations", dim=acts.shape[1], dtype="fp32", images_per_shard=n,
                        num_images=n, provenance={"dataset": {"paths_sha256": "x"}}, software={},
                        allow_nonfinite=True)
        w.write_shard(0, acts, np.stack([np.arange(n), -np.ones(n, np.int64)], 1), 0, n)
        w.finalize()
        return tmp_path / name

    rng = np.random.default_rng(0)
    nan = rng.standard_normal((300, 8)).astype(np.float32)
    nan[7, 2] = np.nan
    cases = [(write("zero", np.zeros((300, 8), np.float32)), [], "every activation of its 300 rows is 0"),
             (write("nan", nan), ["--allow_nonfinite"], "NaN / inf"),
             (write("one", rng.standard_normal((1, 8)).astype(np.float32)), [], "all the same vector"),
             (write("const", np.ones((300, 8), np.float32)), [], "all the same vector")]
    for store, extra, words in cases:
        for engine in ("sparse", "dictionary_learning"):
            run_fails(capsys, tmp_path, ["train", "--activations_dir", store, "--checkpoints_dir", tmp_path / "ck",
                                         "--steps", "5", "--batch_size", "1", "--warmup_steps", "1",
                                         "--expansion_factor", "2", "--k", "2", "--engine", engine, "--device", "cpu",
                                         "--no_progress", *extra], str(store), words)


@pytest.mark.parametrize("arch", ["batch_top_k", "matryoshka_batch_top_k", "top_k"])
def test_a_batch_where_no_latent_fires_updates_the_threshold(arch):
    """The root cause of C1-C3: dictionary_learning's update_threshold assigns a float to the
    threshold buffer when no code is positive. Guarded: unset -> 0, set -> threshold * beta (the
    library's own rule); batches where something fires go to the library unchanged."""
    import torch

    from saevlm.sae.train import TrainConfig, guard_threshold_update, _trainer_kwargs, SAESpec  # noqa: F401
    from saevlm.sae.archs import trainer_class

    kwargs = dict(steps=10, activation_dim=8, dict_size=16, k=2, layer=0, lm_name="x", device="cpu",
                  warmup_steps=1)
    if arch == "matryoshka_batch_top_k":
        kwargs.update(group_fractions=[0.5, 0.5])
    tr = trainer_class(arch)(**kwargs)
    try:  # the library alone: a TypeError (BatchTopK, Matryoshka) or an infinite threshold (TopK)
        tr.update_threshold(torch.zeros(4, 2))
        assert not np.isfinite(float(tr.ae.threshold))
    except TypeError:
        pass
    tr.ae.threshold.fill_(-1.0)
    guard_threshold_update(tr)
    tr.update_threshold(torch.zeros(4, 2))
    assert float(tr.ae.threshold) == 0.0
    tr.update_threshold(torch.tensor([[0.5, 2.0]]))
    assert float(tr.ae.threshold) == pytest.approx((1 - tr.threshold_beta) * 0.5)
    before = float(tr.ae.threshold)
    tr.update_threshold(torch.zeros(3, 2))
    assert float(tr.ae.threshold) == pytest.approx(before * tr.threshold_beta)


def test_constant_validation_gives_undefined_r2_and_valid_json(tmp_path):
    from saevlm.data.atomic import atomic_write_json
    from saevlm.sae.evaluate import evaluate_sae

    x = np.ones((50, 4), np.float32) * 3
    ev = evaluate_sae(lambda v: v, lambda f: f * 0.5, [x], dict_size=4)
    assert ev["r2"] is None
    atomic_write_json(tmp_path / "e.json", {**ev, "nan": float("nan"), "inf": [float("inf")]})
    text = (tmp_path / "e.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["nan"] is None


def test_no_json_the_package_writes_holds_nan(finished_run):
    """Every JSON file of a finished run parses as strict JSON (no NaN / Infinity tokens)."""
    def refuse(token):
        raise ValueError(f"non-JSON number {token}")

    files = [f for f in finished_run.rglob("*.json")]
    assert len(files) > 5
    for f in files:
        json.loads(f.read_text(), parse_constant=refuse)


def test_training_validated_on_constant_rows_says_r2_is_undefined(run_copy, capsys):
    """U7: validation rows that do not vary printed R2 -12778881477.3 and wrote NaN into eval.json
    (not JSON); now R2 is undefined, said so, and eval.json is strict JSON."""
    from saevlm.data.writer import StoreWriter

    val = run_copy / "world" / "val"
    manifest = json.loads((val / "manifest.json").read_text())
    n, dim = 300, manifest["dim"]
    w = StoreWriter(run_copy / "const", kind="activations", dim=dim, dtype="fp32", images_per_shard=n, num_images=n,
                    provenance={**manifest["provenance"], "dataset": {"paths_sha256": "constant"}}, software={})
    w.write_shard(0, np.full((n, dim), 0.7, np.float32), np.stack([np.arange(n), -np.ones(n, np.int64)], 1), 0, n)
    w.finalize()
    capsys.readouterr()
    assert run_cli("train", "--layout", "trainers", "--activations_dir", run_copy / "world" / "train",
                   "--val_activations_dir", run_copy / "const", "--checkpoints_dir", run_copy / "ckc",
                   "--expansion_factor", "2", "--k", "4", "--steps", "20", "--batch_size", "64", "--warmup_steps", "2",
                   "--device", "cpu", "--no_progress") == 0
    out = capsys.readouterr()
    assert "undefined" in out.out + out.err and "-1" not in (out.out + out.err).split("R2", 1)[-1][:20]

    def refuse(token):
        raise ValueError(f"non-JSON number {token}")
    record = json.loads((run_copy / "ckc" / "trainer_0" / "eval.json").read_text(), parse_constant=refuse)
    assert record["r2"] is None


def test_crashes_of_round_3_are_one_line(run_copy, tiny_clip_dir, tiny_dinov2_dir, image_folder, tmp_path, capsys,
                                         monkeypatch):
    """C4 seeds, C5 a truncated model.safetensors, C6 a huge latent id, C7 naming with a DINOv2
    store, C9 api.config with a ClassVar name, T4 a full disk inside torch.save."""
    w = run_copy / "world"
    for seed in ("-1", str(2 ** 70)):
        run_fails(capsys, run_copy, ["train", "--activations_dir", w / "train", "--checkpoints_dir", run_copy / "s",
                                     "--steps", "5", "--device", "cpu", "--no_progress", "--seed", seed],
                  "--seed", "not a seed")
        run_fails(capsys, tmp_path, _extract_argv(tiny_clip_dir, image_folder, tmp_path / "x", "--random_k", "2",
                                                  "--seed", seed), "--seed")
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_clip_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    run_fails(capsys, tmp_path, _extract_argv(truncated, image_folder, tmp_path / "t"), "--model_name",
              "damaged or truncated")
    run_fails(capsys, run_copy, ["explore", "--run_dir", run_copy, "--static", run_copy / "site", "--latents",
                                 str(2 ** 70)], "--latents", "no SAE of the run has these latents")
    assert run_cli("embed", "--model_name", tiny_dinov2_dir, "--data_path", image_folder, "--embeddings_path",
                   tmp_path / "emb", "--device", "cpu", "--num_workers", "0", "--no_progress") == 0
    assert run_cli("extract", "--model_name", tiny_dinov2_dir, "--layer", "1", "--cls_only", "--data_path",
                   image_folder, "--output_dir", tmp_path / "acts", "--device", "cpu", "--num_workers", "0",
                   "--no_progress") == 0
    acts = tmp_path / "acts" / "post_mlp_residual_1"
    assert run_cli("top-images", "--activations_dir", acts, "--k", "4", "--device", "cpu", "--no_progress") == 0
    run_fails(capsys, tmp_path, ["name", "--codes_dir", acts, "--embeddings_path", tmp_path / "emb", "--k", "4"],
              "--embeddings_path", "text tower", "dinov2")
    from saevlm import api
    from saevlm.errors import UserError
    with pytest.raises(UserError, match="no flag --COMMAND"):
        api.config("top-images", activations_dir="x", COMMAND=3)
    # T4: the disk fills while torch.save writes a checkpoint
    import saevlm.data.atomic as atomic
    real_fsync_write = atomic._fsync_write

    def full_disk(tmp, write):
        class Full:
            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def flush(self):
                pass
        if tmp.name.startswith(".ae.pt"):
            with open(tmp, "wb"):
                pass
            return write(Full())
        return real_fsync_write(tmp, write)
    monkeypatch.setattr(atomic, "_fsync_write", full_disk)
    capsys.readouterr()
    assert run_cli("train", "--layout", "trainers", "--activations_dir", w / "train", "--checkpoints_dir",
                   run_copy / "ck4", "--expansion_factor", "2", "--k", "4", "--steps", "10", "--batch_size", "64",
                   "--warmup_steps", "2", "--device", "cpu", "--no_progress") == 2
    one_line_error(capsys, "ae.pt", "disk is full")
    assert not stray_tmp(run_copy)


# ----------------------------------------------------------------------------- round 3: unclear messages
def _dead_pid() -> int:
    """The pid of a process that has exited (a SIGKILLed writer's leftovers carry such a pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_full_disk_names_the_path_and_leaves_no_probe(run_copy, capsys, monkeypatch):
    """U1: the writability probe on a full disk printed `?` for the path and left a 0-byte
    .saevlm-write-test-<pid> inside the code store (uniqueness writes there by default)."""
    codes = run_copy / "codes"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    line = run_fails(capsys, run_copy, ["uniqueness", "--activations_dir", codes], "--activations_dir", str(codes),
                     "disk is full")
    assert "?" not in line and not list(codes.glob(".saevlm-write-test-*"))


def test_figures_half_written_by_a_killed_run_are_removed(run_copy):
    """U2: a SIGKILLed report left .png.tmp-<pid> files for ever; the next writer of the figure removes
    them (only those of processes that no longer run)."""
    figs = run_copy / "report_figures"
    figs.mkdir()
    orphan = figs / f".ms_hist_00.png.tmp-{_dead_pid()}"
    orphan.write_bytes(b"half a png")
    alive = figs / f".ms_hist_00.png.tmp-{os.getppid()}"  # a running process's: not ours to remove
    alive.write_bytes(b"in progress")
    assert run_cli("report", "--run_dir", run_copy) == 0
    assert not orphan.exists() and alive.exists() and (figs / "ms_hist_00.png").stat().st_size > 1000


@pytest.mark.parametrize("command, flag", [("extract", "--output_dir"), ("embed", "--embeddings_path")])
def test_an_unwritable_output_is_refused_before_the_model_loads(command, flag, tiny_clip_dir, image_folder, tmp_path,
                                                                capsys, monkeypatch):
    """U3: extract and embed loaded the model (minutes for a large one) before finding the output read-only."""
    import saevlm.models

    monkeypatch.setattr(saevlm.models, "load_encoder",
                        lambda *a, **k: pytest.fail("the model loaded before the output was checked"))
    out = tmp_path / "out"
    out.mkdir()
    _fail_writes_under(monkeypatch, out, errno.EROFS)
    argv = [command, "--model_name", tiny_clip_dir, "--data_path", image_folder, flag, out, "--device", "cpu",
            "--num_workers", "0", "--no_progress"] + (["--layer", "1"] if command == "extract" else [])
    run_fails(capsys, tmp_path, argv, flag, str(out), "read-only")


def test_embed_names_its_own_flag_and_make_eval_folder_exits_2(tiny_clip_dir, image_folder, tmp_path, capsys,
                                                               monkeypatch):
    """U4: embed's refusals of its output said output_dir for --embeddings_path; U5: make-eval-folder
    exited 1 with an OSError line on a read-only output where every other command exits 2."""
    emb = tmp_path / "emb"
    base = ["embed", "--model_name", tiny_clip_dir, "--data_path", image_folder, "--embeddings_path", emb,
            "--device", "cpu", "--num_workers", "0", "--no_progress"]
    assert run_cli(*base) == 0
    line = run_fails(capsys, tmp_path, [*base, "--store_dtype", "fp16"], "different settings")
    assert line.startswith("saevlm embed: error: --embeddings_path") and "output_dir" not in line
    out = tmp_path / "eval"
    out.mkdir()
    _fail_writes_under(monkeypatch, out, errno.EROFS)
    run_fails(capsys, tmp_path, ["make-eval-folder", "--dataset_name", "imagefolder", "--data_path", image_folder,
                                 "--output_dir", out], "--output_dir", str(out), "read-only")


def test_a_damaged_preprocessor_config_is_not_called_missing(tiny_clip_dir, image_folder, tmp_path, capsys):
    """U6: a broken preprocessor_config.json was reported as missing (and defaults were used)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, model)
    (model / "preprocessor_config.json").write_text('{"image_mean": [0.5, ')
    line = run_fails(capsys, tmp_path, _extract_argv(model, image_folder, tmp_path / "x"), "--model_name",
                     "preprocessor_config.json is damaged")
    assert "no preprocessor_config.json" not in line
    assert not list((tmp_path / "x").rglob("manifest.json"))


def test_steer_alpha_must_be_finite_and_an_sae_without_provenance_is_noted(tmp_path, capsys):
    """U8: `steer --alpha nan` ran (an empty answer); U12: an SAE without provenance steered without
    a word that its tower could not be checked."""
    from helpers import save_random_sae, save_tiny_llava

    model = save_tiny_llava(tmp_path / "llava")
    sae = save_random_sae(tmp_path / "sae", 64, 128)  # a config without saevlm's provenance
    base = ["steer", "--sae_path", sae, "--model_name", model, "--neuron", "3", "--layer", "1", "--image", "white",
            "--device", "cpu", "--max_new_tokens", "2"]
    for bad in ("nan", "inf"):
        run_fails(capsys, tmp_path, [*base, "--alpha", "0", bad], "--alpha", bad, "finite")
    capsys.readouterr()
    assert run_cli(*base, "--alpha", "30") == 0
    err = capsys.readouterr().err
    assert f"note: --sae_path {sae}" in err and "records no provenance" in err


def test_help_shows_defaults_not_placeholders(capsys):
    """U10: `--prompt PROMPT (default: %(default)r)` was printed literally."""
    from saevlm.cli import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(command, "--help")
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "%(" not in text and "usage:" in text, command


def test_demo_checks_its_settings_before_writing(tmp_path, capsys):
    """U11: `demo --steps 0` was refused only after writing a 28-file world."""
    for argv, flag in ((["--steps", "0"], "--steps"), (["--expansion_factor", "0"], "--expansion_factor")):
        run_fails(capsys, tmp_path, ["demo", "--output_dir", tmp_path / "d", *argv], flag)
        assert not (tmp_path / "d").exists()


def test_dinov3_without_a_pil_backend_says_so(tmp_path, image_folder, capsys):
    """U13: DINOv3's PIL backend silently fell back to torchvision (about one grey level apart)."""
    from helpers import save_tiny_family

    from saevlm.models.hf import _auto_processor

    model = save_tiny_family("dinov3", tmp_path / "d3")
    cls = type(_auto_processor(str(model), "pil"))
    # 5.x: a TorchvisionBackend class; 4.x: a BaseImageProcessorFast one
    has_torchvision_only = any(k.__name__ in ("TorchvisionBackend", "BaseImageProcessorFast") for k in cls.__mro__)
    assert run_cli(*_extract_argv(model, image_folder, tmp_path / "x")) == 0
    err = capsys.readouterr().err
    assert ("has no PIL backend" in err) == has_torchvision_only, err


def test_every_refusal_spells_the_flag_with_dashes(run_copy, capsys):
    """U14: refusals said `--activations_dir` in some messages and bare `activations_dir` in others
    (those raised without naming their field). A message that begins with one of the command's
    fields now always names it by its flag."""
    import dataclasses

    from saevlm.cli import config_class, flag_mapping
    from saevlm.errors import UserError

    assert UserError("activations_dir runs/x: not a store").with_flags(flag_mapping("ms")) \
        == "--activations_dir runs/x: not a store"
    assert UserError("a store holds activations_dir").with_flags(flag_mapping("ms")) == "a store holds activations_dir"
    cases = [(["uniqueness", "--activations_dir", run_copy / "world" / "val", "--k", "4"], "uniqueness"),
             (["train", "--activations_dir", run_copy / "nowhere", "--checkpoints_dir", run_copy / "c"], "train"),
             (["top-images", "--activations_dir", run_copy / "codes", "--k", "100000"], "top-images"),
             (ms_argv(run_copy, run_copy / "nowhere"), "ms"),
             (["hierarchy", "--activations_dir", run_copy / "codes"], "hierarchy")]
    for argv, command in cases:
        capsys.readouterr()
        assert run_cli(*argv) == 2
        line = one_line_error(capsys)
        first = line.split("error: ", 1)[1].split(" ")[0].rstrip(":")
        fields = {f.name for f in dataclasses.fields(config_class(command))}
        assert first not in fields, line


def test_the_report_tells_the_truth_about_the_run(run_copy, capsys):
    """Item 6: best latents under the explorer's active-images rule (said), the paper's unfiltered best
    beside them, dead fractions warned, and a note when E is the scored encoder itself."""
    from saevlm.data.codes import CodeStore

    codes = run_copy / "codes"
    store = CodeStore(codes)
    active = np.zeros(store.num_neurons, np.int64)
    for chunk in store.iter_csr(128):
        np.add.at(active, chunk.indices[chunk.values > 0], 1)
    ms_dir = next(codes.glob("ms_*"))
    scores = np.load(ms_dir / "scores.npy")
    ok = (active >= 16) & ~np.isnan(scores)
    best_active, best_all = float(scores[ok].max()), float(np.nanmax(scores))
    # E = a copy of the world's validation activations: the very encoder whose neurons are scored
    shutil.copytree(run_copy / "world" / "val", run_copy / "val_as_e")
    assert run_cli("ms", "--activations_dir", run_copy / "world" / "val", "--embeddings_path", run_copy / "val_as_e",
                   "--output_subdir", "ms_self", "--device", "cpu", "--no_progress") == 0
    assert "same encoder" in capsys.readouterr().err
    assert run_cli("report", "--run_dir", run_copy) == 0
    report = (run_copy / "report.md").read_text()
    assert "active (> 0) on at least 16 images, the rule of the explorer's table" in report
    assert f"| {best_active:.2f} [" in report.split("rule of the explorer's table")[1].split("\n\n")[1]
    assert f"| {best_all:.2f} [" in report.split("the paper's definition")[1].split("\n\n")[1]
    assert "Note on the embedder E" in report and "same encoder" in report
    assert "Warning:" not in report.split("## Monosemanticity Score")[1].split("\n## ")[0]
    # most latents dead: warned, with the numbers
    record = json.loads((ms_dir / "ms.json").read_text())
    record.update(dead=record["total"] - 3, scored=3)
    (ms_dir / "ms.json").write_text(json.dumps(record))
    assert run_cli("report", "--run_dir", run_copy) == 0
    report = (run_copy / "report.md").read_text()
    assert f"Warning: {record['total'] - 3} of {record['total']} neurons" in report and "codes are dead" in report
