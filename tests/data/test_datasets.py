"""Dataset order, iNat taxonomy, ImageNet layout."""

import numpy as np
import pytest

from helpers import make_image_folder
from saevlm.data.images import open_dataset, parse_inat_folder, select_indices
from saevlm.errors import UserError


def test_order_equals_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    root = make_image_folder(tmp_path / "imgs", num_classes=3, per_class=4,
                             class_names=["zebra", "Apple", "mango"])
    (root / "mango" / "nested").mkdir()
    make_image_folder(tmp_path / "extra", num_classes=1, per_class=2)
    for f in (tmp_path / "extra" / "class_000").iterdir():
        f.rename(root / "mango" / "nested" / f.name)
    ours = open_dataset("imagefolder", root, None)
    tv = ImageFolder(str(root))
    assert [str(root / p) for p in ours.paths] == [p for p, _ in tv.samples]
    assert ours.labels.tolist() == [c for _, c in tv.samples]
    assert ours.classes == tv.classes


def test_inat_taxonomy(tmp_path):
    names = ["00000_Animalia_Arthropoda_Arachnida_Araneae_Araneidae_Araneus_diadematus",
             "00001_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina"]
    make_image_folder(tmp_path / "inat" / "val", num_classes=2, per_class=2, class_names=names)
    ds = open_dataset("inat", tmp_path / "inat", "val")
    assert ds.taxonomy[0] == ["Animalia", "Arthropoda", "Arachnida", "Araneae", "Araneidae",
                              "Araneus", "Araneus diadematus"]
    assert ds.classes_json()["taxonomy_levels"][-1] == "species"
    with pytest.raises(UserError, match="expected 'NNNNN_Kingdom"):
        parse_inat_folder("Animalia_only")


def test_imagenet_layout_and_errors(tmp_path):
    make_image_folder(tmp_path / "in" / "val", num_classes=2, per_class=3,
                      class_names=["n01440764", "n01443537"])
    ds = open_dataset("imagenet", tmp_path / "in", "val")
    assert len(ds) == 6 and ds.classes == ["n01440764", "n01443537"]
    with pytest.raises(UserError, match=r"^split train: .* does not exist \(folders in --data_path: val\)") as err:
        open_dataset("imagenet", tmp_path / "in", "train")
    # the library names the field; the command line names it by its flag
    assert err.value.field == "split"
    assert err.value.with_flags(lambda f: "--" + f).startswith("--split train: ")
    with pytest.raises(UserError, match="^split: required"):
        open_dataset("imagenet", tmp_path / "in", None)
    with pytest.raises(UserError, match="^data_path .*: no such directory"):
        open_dataset("imagenet", tmp_path / "missing", "val")
    with pytest.raises(UserError, match="^dataset_name 'coco'"):
        open_dataset("coco", tmp_path / "in", "val")
    flat = tmp_path / "flat"
    make_image_folder(tmp_path / "tmpflat", num_classes=1, per_class=2)
    flat.mkdir()
    for f in (tmp_path / "tmpflat" / "class_000").iterdir():
        f.rename(flat / f.name)
    with pytest.raises(UserError, match="no class folders found. It holds 2 loose images"):
        open_dataset("imagefolder", flat, None)


def test_select_indices():
    assert select_indices(10, 3, None).tolist() == [0, 3, 6, 9]
    assert select_indices(10, 1, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(UserError, match="^take_every 0"):
        select_indices(10, 0, None)
    assert isinstance(select_indices(5, 1, None), np.ndarray)
