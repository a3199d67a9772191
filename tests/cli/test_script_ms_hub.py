"""scripts/monosemanticity_score.sh streaming its images from a (local, offline) hub dataset."""

import json
from pathlib import Path


from helpers import SCRIPT_TRAIN, run_script
from saevlm.data.store import ActivationStore, check_same_images


def test_monosemanticity_score_script_streams_a_hub_dataset(imagenet, tiny_clip_dir, tiny_dinov2_dir, tmp_path):
    """IMAGENET_PATH=hf:<dataset> (here a local copy in the hub's parquet layout, through the same
    code as hf:ILSVRC/imagenet-1k): the script's val split is the dataset's validation split."""
    from saevlm.data.hub import write_parquet_dataset
    from saevlm.data.images import open_dataset

    splits = {}
    for folder, split in (("train", "train"), ("val", "validation")):
        images = open_dataset("imagefolder", imagenet / folder, None)
        splits[split] = ([images.read_bytes(i) for i in range(len(images))], images.labels.tolist())
    hub = write_parquet_dataset(tmp_path / "hub", splits, ["tench", "goldfish", "shark", "ray"], row_group_rows=7)
    out = tmp_path / "ms"
    env = {**SCRIPT_TRAIN, "IMAGENET_PATH": f"hf:{hub}", "OUT_DIR": out, "MODEL": tiny_clip_dir, "LAYERS": "last",
           "EXPANSION_FACTORS": "2", "EMBEDDERS": tiny_dinov2_dir}
    run_script("monosemanticity_score.sh", env)
    mt, et = Path(tiny_clip_dir).name, Path(tiny_dinov2_dir).name
    val = ActivationStore(out / "activations" / mt / "imagenet_val" / "post_projection")
    train = ActivationStore(out / "activations" / mt / "imagenet_train" / "post_projection")
    assert (val.num_rows, train.num_rows) == (20, 32)
    assert (val.provenance.dataset.root, val.provenance.dataset.split) == (f"hf:{hub}", "validation")
    check_same_images(val, ActivationStore(out / "embeddings" / et / "imagenet_val"))
    codes = out / "codes" / mt / "imagenet_val" / "post_projection" / "trainer_0"
    assert json.loads((codes / f"ms_{et}" / "ms.json").read_text())["total"] == 64
    assert (out / "report.md").is_file()
