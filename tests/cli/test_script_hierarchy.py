"""scripts/matryoshka_hierarchy.sh end to end on a generated iNat tree."""

import json
from pathlib import Path


from helpers import SCRIPT_TRAIN, make_image_folder, run_script


def test_matryoshka_hierarchy_script(tiny_clip_dir, tmp_path):
    names = [f"{i:05d}_Animalia_Chordata_{c}_Ord{o}_Fam{o}_Gen{i}_sp{i}"
             for i, (c, o) in enumerate([("Aves", 1), ("Aves", 1), ("Aves", 2), ("Mammalia", 3)])]
    make_image_folder(tmp_path / "inat" / "train", num_classes=4, per_class=8, class_names=names)
    out = tmp_path / "h"
    run_script("matryoshka_hierarchy.sh", {**SCRIPT_TRAIN, "INAT_PATH": tmp_path / "inat", "OUT_DIR": out,
                                      "MODEL": tiny_clip_dir, "GROUP_FRACTIONS": "0.25 0.75"})
    codes = out / "codes" / Path(tiny_clip_dir).name / "inat_train" / "post_projection" / "trainer_0"
    h = json.loads((codes / "hierarchy_16.json").read_text())
    assert [g["size"] for g in h["groups"]] == [16, 48] and h["taxonomy_depth"] == 7
    assert "Matryoshka hierarchy" in (out / "report.md").read_text()
