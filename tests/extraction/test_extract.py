"""``saevlm extract`` / ``embed`` end to end on tiny random models saved to disk."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import run_cli, store_bytes
from saevlm.data.images import open_dataset
from saevlm.data.store import ActivationStore, check_same_images
from saevlm.errors import UserError


def _reference_hidden(model_dir, image_dir, indices=None):
    """Hidden states and image_embeds straight from transformers, images in dataset order."""
    from PIL import Image
    import transformers
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    # the PIL image processor: saevlm's default (--processor_backend pil), the authors' path
    proc = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor).from_pretrained(model_dir)
    ds = open_dataset("imagefolder", image_dir, None)
    indices = range(len(ds)) if indices is None else indices
    px = torch.stack([proc(images=Image.open(ds.path(i)).convert("RGB"), return_tensors="pt")["pixel_values"][0]
                      for i in indices])
    with torch.no_grad():
        out = model(pixel_values=px, output_hidden_states=True)
    return out.hidden_states, out.image_embeds


def _common(image_folder, batch_size=4):
    return ["--dataset_name", "imagefolder", "--data_path", image_folder, "--batch_size", batch_size,
            "--num_workers", "0", "--device", "cpu", "--no_progress"]



def test_extract_several_points_matches_transformers(tiny_clip_dir, image_folder, tmp_path):
    rc = run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "-1", "last", "--cls_only",
                 "--output_dir", tmp_path / "acts", *_common(image_folder))
    assert rc == 0
    hidden, embeds = _reference_hidden(tiny_clip_dir, image_folder)
    s1 = ActivationStore(tmp_path / "acts" / "post_mlp_residual_1")
    s3 = ActivationStore(tmp_path / "acts" / "post_mlp_residual_3")
    sp = ActivationStore(tmp_path / "acts" / "post_projection")
    np.testing.assert_allclose(s1.read(0, 24), hidden[2][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(s3.read(0, 24), hidden[4][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(sp.read(0, 24), embeds.numpy(), atol=1e-5)
    assert s1.row_index().tolist() == [[i, 0] for i in range(24)]
    assert sp.row_index()[:, 1].tolist() == [-1] * 24
    prov = s3.provenance.to_json()
    assert prov["hook"] == {"attachment_point": "post_mlp_residual", "layer": 3}
    assert prov["tokens"] == {"selection": "cls"}
    assert prov["model"]["class"] == "CLIPVisionModelWithProjection"
    assert prov["dataset"]["num_selected"] == 24 and s3.manifest.num_images == 24
    labels = np.load(tmp_path / "acts" / "post_mlp_residual_1" / "labels.npy")
    assert labels.tolist() == sorted([c for c in range(4) for _ in range(6)])
    check_same_images(s1, sp)


def test_all_tokens_random_k_mean_and_take_every(tiny_clip_dir, image_folder, tmp_path):
    hidden, _ = _reference_hidden(tiny_clip_dir, image_folder, indices=range(0, 24, 5))
    ref = hidden[3]  # block 2
    tokens = ref.shape[1]
    for flag, name in ((["--mean_pool"], "mean"), (["--random_k", "2", "--seed", "3"], "rk"), ([], "all")):
        out = tmp_path / name
        assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "2", *flag,
                       "--take_every", "5", "--output_dir", out, *_common(image_folder, 2)) == 0
        s = ActivationStore(out / "post_mlp_residual_2")
        rows = s.row_index()
        assert sorted(set(rows[:, 0].tolist())) == [0, 5, 10, 15, 20]
        acts = s.read(0, s.num_rows)
        if name == "mean":
            np.testing.assert_allclose(acts, ref.mean(1).numpy(), atol=1e-5)
        else:
            per = 2 if name == "rk" else tokens
            assert s.num_rows == 5 * per
            for r in range(s.num_rows):
                np.testing.assert_allclose(acts[r], ref[rows[r, 0] // 5, rows[r, 1]].numpy(), atol=1e-5)
    # random tokens do not depend on the batch size
    out2 = tmp_path / "rk_b3"
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "2", "--random_k", "2",
                   "--seed", "3", "--take_every", "5", "--output_dir", out2,
                   *_common(image_folder, 3)) == 0
    assert np.array_equal(ActivationStore(out2 / "post_mlp_residual_2").row_index(),
                          ActivationStore(tmp_path / "rk" / "post_mlp_residual_2").row_index())


def test_interrupted_extract_resumes_byte_identical(tiny_clip_dir, big_image_folder, tmp_path, monkeypatch):
    from saevlm.data import writer as store_mod

    args = ["--model_name", tiny_clip_dir, "--layer", "0", "2", "last", "--random_k", "3",
            "--shard_rows", "12", *_common(big_image_folder, 4)]
    assert run_cli("extract", *args, "--output_dir", tmp_path / "ref") == 0
    real_write = store_mod.StoreWriter.write_shard
    calls = {"n": 0}

    def dying_write(self, *a, **k):
        if calls["n"] == 7:  # die mid-run, after some shards of some stores are on disk
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(self, *a, **k)

    monkeypatch.setattr(store_mod.StoreWriter, "write_shard", dying_write)
    assert run_cli("extract", *args, "--output_dir", tmp_path / "run") == 130
    monkeypatch.setattr(store_mod.StoreWriter, "write_shard", real_write)
    partial = tmp_path / "run" / "post_mlp_residual_0"
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["complete"] is False and 0 < len(manifest["shards"])
    with pytest.raises(UserError, match="incomplete"):
        ActivationStore(partial)
    # leftovers of a crash between writing a shard and listing it
    (partial / "acts_00099.npy").write_bytes(b"junk")
    assert run_cli("extract", *args, "--output_dir", tmp_path / "run") == 0
    for slug in ("post_mlp_residual_0", "post_mlp_residual_2", "post_projection"):
        ref, got = store_bytes(tmp_path / "ref" / slug), store_bytes(tmp_path / "run" / slug)
        assert list(ref) == list(got)
        for name in ref:
            assert ref[name] == got[name], f"{slug}/{name} differs after resume"
        assert len(ActivationStore(tmp_path / "run" / slug).shards) > 2


def test_sigkilled_extract_resumes_byte_identical(tmp_path, big_image_folder):
    """A real SIGKILL of the process mid-run, then the same command again."""
    from helpers import save_tiny_clip

    model = save_tiny_clip(tmp_path / "clip", num_layers=6, hidden=128, size=96)
    cmd = [sys.executable, "-m", "saevlm", "extract", "--model_name", str(model), "--layer", "1", "4",
           "--cls_only", "--shard_rows", "2", *map(str, _common(big_image_folder, 2))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd + ["--output_dir", str(tmp_path / "ref")], check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen(cmd + ["--output_dir", str(tmp_path / "run")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "run" / "post_mlp_residual_4" / "manifest.json"
    deadline = time.time() + 120
    killed_mid_run = False
    while time.time() < deadline and proc.poll() is None:
        try:
            m = json.loads(manifest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.002)
            continue
        if len(m["shards"]) >= 3 and not m["complete"]:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run = True
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_mid_run, "the run finished before it could be killed; make it longer"
    subprocess.run(cmd + ["--output_dir", str(tmp_path / "run")], check=True, env=env, capture_output=True)
    for slug in ("post_mlp_residual_1", "post_mlp_residual_4"):
        assert store_bytes(tmp_path / "ref" / slug) == store_bytes(tmp_path / "run" / slug)


def test_complete_store_is_skipped_and_other_settings_refused(tiny_clip_dir, image_folder, tmp_path, capsys):
    args = ["--model_name", tiny_clip_dir, "--layer", "1", "--cls_only", "--output_dir", tmp_path / "a",
            *_common(image_folder)]
    assert run_cli("extract", *args) == 0
    shard = tmp_path / "a" / "post_mlp_residual_1" / "acts_00000.npy"
    mtime = shard.stat().st_mtime_ns
    assert run_cli("extract", *args) == 0
    assert shard.stat().st_mtime_ns == mtime
    assert "complete already, skipped" in capsys.readouterr().err
    assert run_cli("extract", *[a if a != "--cls_only" else "--mean_pool" for a in args]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "tokens.selection: existing 'cls', requested 'mean'" in err
    assert run_cli("extract", *[a if a != "--cls_only" else "--mean_pool" for a in args], "--overwrite") == 0
    assert ActivationStore(tmp_path / "a" / "post_mlp_residual_1").provenance.tokens.selection == "mean"


def test_unreadable_image_stops_or_is_skipped(tiny_clip_dir, tmp_path, capsys):
    from helpers import make_image_folder

    root = make_image_folder(tmp_path / "imgs", num_classes=2, per_class=5)
    bad = root / "class_001" / "img_0002.png"
    bad.write_bytes(b"not a png")
    base = ["--model_name", tiny_clip_dir, "--layer", "1", "--cls_only", *_common(root)]
    assert run_cli("extract", *base, "--output_dir", tmp_path / "stop") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "dataset index 7" in err and "--skip_bad_images" in err
    assert run_cli("extract", *base, "--skip_bad_images", "--output_dir", tmp_path / "skip") == 0
    s = ActivationStore(tmp_path / "skip" / "post_mlp_residual_1")
    assert s.image_ids().tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert [r["index"] for r in s.manifest.skipped_images] == [7]
    assert s.manifest.skipped_images[0]["path"] == "class_001/img_0002.png"
    # embeddings skipping the same image pair up; without skipping they are refused
    emb = ["--model_name", tiny_clip_dir, *_common(root)]
    assert run_cli("embed", *emb, "--skip_bad_images", "--embeddings_path", tmp_path / "e1") == 0
    check_same_images(s, ActivationStore(tmp_path / "e1"))


def test_embed_store_and_mismatch_refused(tiny_clip_dir, tiny_dinov2_dir, image_folder, tmp_path):
    assert run_cli("embed", "--model_name", tiny_dinov2_dir, "--embeddings_path", tmp_path / "dino",
                   *_common(image_folder)) == 0
    emb = ActivationStore(tmp_path / "dino")
    assert emb.manifest.kind == "embeddings" and emb.shape == (24, 64)
    from transformers import BitImageProcessor, Dinov2Model
    from PIL import Image
    model = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    import transformers
    proc = getattr(transformers, "BitImageProcessorPil", BitImageProcessor).from_pretrained(tiny_dinov2_dir)  # PIL: saevlm's default
    ds = open_dataset("imagefolder", image_folder, None)
    px = torch.stack([proc(images=Image.open(ds.path(i)).convert("RGB"), return_tensors="pt")["pixel_values"][0]
                      for i in range(len(ds))])
    with torch.no_grad():
        ref = model(pixel_values=px).pooler_output
    np.testing.assert_allclose(emb.read(0, 24), ref.numpy(), atol=1e-5)
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only",
                   "--output_dir", tmp_path / "acts", *_common(image_folder)) == 0
    acts = ActivationStore(tmp_path / "acts" / "post_mlp_residual_1")
    check_same_images(acts, emb)
    assert run_cli("embed", "--model_name", tiny_dinov2_dir, "--embeddings_path", tmp_path / "half",
                   "--take_every", "2", *_common(image_folder)) == 0
    with pytest.raises(UserError, match="different image lists"):
        check_same_images(acts, ActivationStore(tmp_path / "half"))


@pytest.mark.parametrize("extra,expected", [
    (["--data_path", "/no/such/dir"], "--data_path /no/such/dir: no such directory"),
    (["--model_name", "no-such-model"], "--model_name no-such-model: unknown model"),
    (["--layer", "4"], "--layer 4: out of range"),
    (["--layer", "-5"], "--layer -5: out of range"),
    (["--attachment_point", "pre_mlp_residual"], "--attachment_point 'pre_mlp_residual': unknown"),
    (["--device", "cuda"], "CUDA was requested but torch sees no GPU"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--dtype", "int8"], "--store_dtype 'int8'"),  # the older name of --store_dtype
    (["--store_dtype", "int8"], "--store_dtype 'int8'"),
    (["--batch_size", "0"], "--batch_size 0"),
    (["--cls_only", "--mean_pool"], "choose at most one token selection"),
])
def test_bad_input_is_a_clear_error(tiny_clip_dir, image_folder, tmp_path, capsys, extra, expected):
    if expected.startswith("CUDA") and torch.cuda.is_available():
        expected = "cuda"  # on a GPU machine this request is valid; the run must succeed instead
    flags = {"--model_name": str(tiny_clip_dir), "--data_path": str(image_folder), "--layer": "1"}
    i = 0
    while i < len(extra):
        if extra[i] in flags:
            flags[extra[i]] = extra[i + 1]
            i += 2
        else:
            flags[extra[i]] = None
            i += 1
    argv = ["extract", "--output_dir", tmp_path / "o", "--num_workers", "0", "--no_progress"]
    for k, v in flags.items():
        argv += [k] if v is None else [k, v]
    rc = run_cli(*argv)
    err = capsys.readouterr().err
    if expected == "cuda":
        assert rc == 0
        return
    assert rc == 2, err
    assert expected in err
    assert "Traceback" not in err


def test_bad_input_exits_nonzero_without_traceback_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "saevlm", "extract", "--model_name", "x",
                        "--data_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "--data_path" in r.stderr and "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_bf16_autocast_on_the_cpu_is_close_to_fp32_and_fp16_is_refused(tiny_clip_dir, image_folder, tmp_path, capsys):
    """--autocast bf16 runs on the CPU (bf16 instructions make it about twice as fast there): the
    same rows, values within bf16's precision of the fp32 run's, and not equal to them (the forward
    really ran in bf16); fp16 autocast stays a GPU option, refused on the CPU before any work."""
    base = ["extract", "--model_name", tiny_clip_dir, "--layer", "2", "--cls_only", *_common(image_folder)]
    assert run_cli(*base, "--output_dir", tmp_path / "fp32", "--device", "cpu") == 0
    assert run_cli(*base, "--output_dir", tmp_path / "bf16", "--device", "cpu", "--autocast", "bf16") == 0
    a = ActivationStore(tmp_path / "fp32" / "post_mlp_residual_2")
    b = ActivationStore(tmp_path / "bf16" / "post_mlp_residual_2")
    assert np.array_equal(a.row_index(), b.row_index())
    x, y = a.read(0, a.num_rows), b.read(0, b.num_rows)
    assert not np.array_equal(x, y)
    np.testing.assert_allclose(y, x, rtol=0.05, atol=0.05 * float(np.abs(x).max()))
    capsys.readouterr()
    assert run_cli(*base, "--output_dir", tmp_path / "fp16", "--device", "cpu", "--autocast", "fp16") == 2
    err = capsys.readouterr().err
    assert "--autocast fp16: fp16 autocast is for GPUs" in err and "Traceback" not in err
    assert not any((tmp_path / "fp16").rglob("*"))  # nothing written (the folder itself is made first)
