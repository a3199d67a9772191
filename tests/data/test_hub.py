"""Hub datasets (issue: images from the hub): a dataset written locally in the hub's format
(parquet shards with an Image and a ClassLabel column) goes through the same code as
``hf:ILSVRC/imagenet-1k``: datasets' resolution, parquet row groups, streaming decode."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import run_cli
from saevlm import api
from saevlm.data.decode import content_hash
from saevlm.data.images import open_dataset
from saevlm.data.store import ActivationStore, check_same_images
from saevlm.errors import UserError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
CLASSES = ["tench, Tinca tinca", "goldfish", "great white shark", "tiger shark", "hammerhead"]


def _folder_as_parquet(folder, root, files=2, row_group_rows=5, corrupt_at=None):
    """The images of an ImageFolder, in its order, as a hub-format dataset (train and validation)."""
    from saevlm.data.hub import write_parquet_dataset

    images = open_dataset("imagefolder", folder, None)
    data = [images.read_bytes(i) for i in range(len(images))]
    if corrupt_at is not None:
        data[corrupt_at] = b"\x89PNG not really an image"
    labels = images.labels.tolist()
    names = CLASSES[:len(images.classes)]
    return write_parquet_dataset(root, {"train": (data, labels), "validation": (data[:10], labels[:10])},
                                 names, files_per_split=files, row_group_rows=row_group_rows)


@pytest.fixture(scope="module")
def hub_dir(big_image_folder, tmp_path_factory):
    return _folder_as_parquet(big_image_folder, tmp_path_factory.mktemp("hub") / "ds")


def _args(model, data, out, *extra):
    return ["--model_name", model, "--dataset_name", data, "--split", "train", "--batch_size", "4",
            "--num_workers", "0", "--device", "cpu", "--no_progress", "--output_dir", out, *extra]


def test_order_labels_names_and_content_match_the_folder(tiny_clip_dir, big_image_folder, hub_dir, tmp_path):
    hub = open_dataset(f"hf:{hub_dir}", None, "train")
    folder = open_dataset("imagefolder", big_image_folder, None)
    assert len(hub) == len(folder) == 60 and len(hub.files) == 2
    assert sum(len(f.group_rows) for f in hub.files) == 12  # row groups of 5
    assert hub.labels.tolist() == folder.labels.tolist()
    assert hub.classes == CLASSES and hub.classes_json()["names"] == CLASSES
    for i in (0, 29, 30, 59):  # across the file boundary
        assert hub.read_bytes(i) == folder.read_bytes(i)
    # extraction streams the same pictures in the same order: the same activations and hashes
    assert run_cli("extract", *_args(tiny_clip_dir, f"hf:{hub_dir}", tmp_path / "hub", "--layer", "2",
                                     "--cls_only", "--shard_rows", "16")) == 0
    assert api.run("extract", model_name=tiny_clip_dir, dataset_name="imagefolder", data_path=big_image_folder,
                   batch_size=4, num_workers=0, device="cpu", no_progress=True, output_dir=tmp_path / "folder",
                   layer=[2], cls_only=True, shard_rows=16) == 0
    a = ActivationStore(tmp_path / "hub" / "post_mlp_residual_2")
    b = ActivationStore(tmp_path / "folder" / "post_mlp_residual_2")
    assert np.array_equal(a.read(0, 60), b.read(0, 60))
    assert a.manifest.content_sha256 == b.manifest.content_sha256
    assert a.image_hashes()[:, 1].tolist() == [content_hash(hub.read_bytes(i)) for i in range(60)]
    assert a.image_ids().tolist() == list(range(60))
    assert np.load(a.path / "labels.npy").tolist() == hub.labels.tolist()
    assert json.loads((a.path / "classes.json").read_text())["names"] == CLASSES
    prov = a.provenance.dataset
    assert (prov.name, prov.root, prov.split) == ("hf", f"hf:{hub_dir}", "train")


def test_embed_pairs_and_val_maps_to_validation(tiny_clip_dir, tiny_dinov2_dir, hub_dir, tmp_path, capsys):
    # --data_path hf:... with the authors' --dataset_name imagenet and --split val (the scripts' flags)
    common = ["--dataset_name", "imagenet", "--data_path", f"hf:{hub_dir}", "--split", "val", "--batch_size", "4",
              "--num_workers", "2", "--device", "cpu", "--no_progress"]
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only",
                   "--output_dir", tmp_path / "acts", *common) == 0
    assert "calls it 'validation'" in capsys.readouterr().err
    assert run_cli("embed", "--model_name", tiny_dinov2_dir, "--embeddings_path", tmp_path / "emb", *common) == 0
    acts = ActivationStore(tmp_path / "acts" / "post_mlp_residual_1")
    emb = ActivationStore(tmp_path / "emb")
    check_same_images(acts, emb)
    assert acts.num_rows == 10 and acts.provenance.dataset.split == "validation"
    assert api.run("ms", activations_dir=acts.path, embeddings_path=emb.path, device="cpu", no_progress=True) == 0


def test_resume_after_a_kill_reads_only_unfinished_row_groups(tiny_clip_dir, hub_dir, tmp_path, monkeypatch):
    from saevlm.data import hub as hub_mod
    from saevlm.data import writer as store_mod
    from helpers import store_bytes

    args = _args(tiny_clip_dir, f"hf:{hub_dir}", tmp_path / "ref", "--layer", "1", "--cls_only", "--shard_rows", "8")
    assert run_cli("extract", *args) == 0
    real_write, calls = store_mod.StoreWriter.write_shard, {"n": 0}

    def dying_write(self, *a, **k):
        if calls["n"] == 4:  # 4 shards of 8 images on disk, then the process dies
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(self, *a, **k)

    run_args = [str(tmp_path / "run") if a == tmp_path / "ref" else a for a in args]
    monkeypatch.setattr(store_mod.StoreWriter, "write_shard", dying_write)
    assert run_cli("extract", *run_args) == 130
    monkeypatch.setattr(store_mod.StoreWriter, "write_shard", real_write)
    groups_read = []
    real_group = hub_mod.HubImageList._group_images

    def counting(self, file, group):
        groups_read.append((file, group))
        return real_group(self, file, group)

    monkeypatch.setattr(hub_mod.HubImageList, "_group_images", counting)
    assert run_cli("extract", *run_args) == 0
    # images 32..59 were left: file 0 holds images 0..29, so only file 1's row groups (rows 2..29
    # of it, groups of 5 rows) are read, each once
    assert sorted(groups_read) == [(1, g) for g in range(6)]
    assert store_bytes(tmp_path / "ref" / "post_mlp_residual_1") == store_bytes(tmp_path / "run" / "post_mlp_residual_1")


def test_two_ranks_equal_one_process(tiny_clip_dir, hub_dir, tmp_path):
    from helpers import saevlm_single, saevlm_torchrun
    from helpers import store_bytes

    extract = ["extract", "--layer", "1", "last", "--random_k", "3", "--model_name", tiny_clip_dir,
               "--dataset_name", f"hf:{hub_dir}", "--split", "train", "--batch_size", "4", "--num_workers", "0",
               "--device", "cpu", "--no_progress", "--shard_rows", "24"]
    r = saevlm_single([*extract, "--output_dir", tmp_path / "one"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = saevlm_torchrun([*extract, "--output_dir", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    for slug in ("post_mlp_residual_1", "post_projection"):
        assert store_bytes(tmp_path / "one" / slug) == store_bytes(tmp_path / "two" / slug), slug
        assert len(ActivationStore(tmp_path / "two" / slug).shards) >= 4


def test_a_corrupt_example_stops_with_its_row_or_is_skipped(tiny_clip_dir, big_image_folder, tmp_path, capsys):
    bad = _folder_as_parquet(big_image_folder, tmp_path / "bad", corrupt_at=37)
    args = _args(tiny_clip_dir, f"hf:{bad}", tmp_path / "a", "--layer", "1", "--cls_only")
    assert run_cli("extract", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "row 37" in err and "train-00001-of-00002.parquet row 7" in err and "--skip_bad_images" in err
    assert run_cli("extract", *args, "--skip_bad_images") == 0
    s = ActivationStore(tmp_path / "a" / "post_mlp_residual_1")
    assert [r["index"] for r in s.manifest.skipped_images] == [37]
    assert "row 37" in s.manifest.skipped_images[0]["path"]
    assert 37 not in s.image_ids().tolist() and s.num_rows == 59


@pytest.mark.parametrize("spec, split, expected", [
    ("{hub}", "test", r"^split test: hf:.* has no such split \(its splits: train, validation\)"),
    ("{missing}", "train", r"no such directory"),
    ("{noimage}", "train", r"no image column \(columns: text, label\)"),
    ("ILSVRC/imagenet-1k", "train", r"cannot reach the hub .*HF_HUB_OFFLINE.*huggingface-cli download"),
])
def test_errors_are_one_actionable_line(hub_dir, tmp_path, spec, split, expected):
    import datasets

    noimage = tmp_path / "noimage"
    (noimage / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(
        str(noimage / "data" / "train-00000-of-00001.parquet"))
    spec = spec.format(hub=hub_dir, missing=tmp_path / "nope", noimage=noimage)
    with pytest.raises(UserError, match=expected):
        open_dataset(f"hf:{spec}", None, split)


def test_gated_and_unknown_hub_errors_name_what_to_do():
    from saevlm.data.hub import _hub_error

    gated = _hub_error("ILSVRC/imagenet-1k", Exception("Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub. "
                                                       "You must be authenticated to access it."))
    assert "accept its license at https://huggingface.co/datasets/ILSVRC/imagenet-1k" in str(gated)
    assert "huggingface-cli login" in str(gated)
    unknown = _hub_error("nobody/nothing", Exception("Dataset 'nobody/nothing' doesn't exist on the Hub"))
    assert "no such dataset on the hub" in str(unknown)


def test_offline_hub_dataset_exits_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "saevlm", "extract", "--model_name", "x", "--dataset_name",
                        "hf:ILSVRC/imagenet-1k", "--split", "train", "--output_dir", str(tmp_path / "o")],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot reach the hub" in r.stderr


def test_grids_and_eval_folder_read_images_from_the_hub(tiny_clip_dir, hub_dir, tmp_path):
    """Top images drawn from the parquet rows; the steering evaluation folder from the hub."""
    from PIL import Image

    assert run_cli("extract", *_args(tiny_clip_dir, f"hf:{hub_dir}", tmp_path / "a", "--layer", "1",
                                     "--cls_only")) == 0
    store = tmp_path / "a" / "post_mlp_residual_1"
    assert api.run("top-images", activations_dir=store, k=16, no_progress=True) == 0
    assert api.run("visualize", activations_dir=store, neurons=[0, 3], output_dir=tmp_path / "fig") == 0
    pngs = sorted((tmp_path / "fig").glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size[0] > 160
    # make-eval-folder: the first image of each class, its bytes, and the hub's class names
    assert api.run("make-eval-folder", data_path=f"hf:{hub_dir}", split="train", output_dir=tmp_path / "eval") == 0
    hub = open_dataset(f"hf:{hub_dir}", None, "train")
    names = json.loads((tmp_path / "eval" / "class_names.json").read_text())
    assert names == {c: c for c in CLASSES}
    first = {int(y): i for i, y in reversed(list(enumerate(hub.labels)))}
    for label, i in first.items():
        (copied,) = (tmp_path / "eval" / CLASSES[label]).iterdir()
        assert copied.read_bytes() == hub.read_bytes(i)


def test_a_missing_shard_file_is_refused(hub_dir, tmp_path, tiny_clip_dir, capsys):
    """train-00001-of-00002.parquet gone: the split is incomplete, said before any work (it once
    ran on half the split with exit 0)."""
    import shutil

    half = tmp_path / "half"
    shutil.copytree(hub_dir, half)
    (half / "data" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(UserError, match=r"split train is incomplete: 1 of its 2 files are missing "
                                        r"\(train-00001-of-00002.parquet\)"):
        open_dataset(f"hf:{half}", None, "train")
    assert run_cli("extract", *_args(tiny_clip_dir, f"hf:{half}", tmp_path / "out", "--layer", "1", "--cls_only")) == 2
    assert "is incomplete" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert len(open_dataset(f"hf:{half}", None, "validation")) == 10  # the complete split still opens


def test_path_only_image_rows_are_read_from_their_files(image_folder, tmp_path, tiny_clip_dir):
    """A local parquet written by datasets' own to_parquet from file paths holds
    {"bytes": None, "path": ...} rows; they are read from the path, as datasets does."""
    import datasets
    import pyarrow.parquet as pq

    images = open_dataset("imagefolder", image_folder, None)
    files = [str(image_folder / p) for p in images.paths]
    ds = datasets.Dataset.from_dict({"image": files, "label": images.labels.tolist()})
    ds = ds.cast_column("image", datasets.Image()).cast_column(
        "label", datasets.ClassLabel(names=[f"c{i}" for i in range(len(images.classes))]))
    root = tmp_path / "pathonly"
    (root / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    col = pq.read_table(root / "data" / "train-00000-of-00001.parquet").column("image").combine_chunks()
    assert all(b is None for b in col.field("bytes").to_pylist())  # the case under test: path-only rows
    hub = open_dataset(f"hf:{root}", None, "train")
    assert hub.read_bytes(3) == open(files[3], "rb").read()
    assert run_cli("extract", *_args(tiny_clip_dir, f"hf:{root}", tmp_path / "out", "--layer", "1", "--cls_only")) == 0
    assert ActivationStore(tmp_path / "out" / "post_mlp_residual_1").num_rows == len(files)


def test_a_text_file_named_parquet_exits_2_every_time(tmp_path, tiny_clip_dir):
    """Once seen aborting with exit 134 after the right message (2 of 3 runs); each fresh process
    must end with exit 2 and one line, never a signal."""
    (tmp_path / "ds" / "data").mkdir(parents=True)
    (tmp_path / "ds" / "data" / "train-00000-of-00001.parquet").write_text("not parquet at all\n")
    for _ in range(3):
        r = subprocess.run([sys.executable, "-m", "saevlm", "extract", "--model_name", str(tiny_clip_dir),
                            "--dataset_name", f"hf:{tmp_path / 'ds'}", "--split", "train", "--layer", "1",
                            "--cls_only", "--output_dir", str(tmp_path / "o"), "--device", "cpu"],
                           env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        lines = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(lines) == 1 and "not parquet" in lines[0] and "Traceback" not in r.stderr
