"""Fixtures of the command-line tests: a generated ImageNet-like tree for the experiment scripts."""

import pytest

from helpers import make_image_folder


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """train/ (4 classes x 8) and val/ (4 x 5) folders named like ImageNet synsets."""
    root = tmp_path_factory.mktemp("imagenet")
    make_image_folder(root / "train", num_classes=4, per_class=8, class_names=[f"n0{i}" for i in range(4)])
    make_image_folder(root / "val", num_classes=4, per_class=5, seed=3, class_names=[f"n0{i}" for i in range(4)])
    return root
