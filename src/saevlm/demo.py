"""``saevlm demo``: the built-in default job.

PLACEHOLDER until the demo issue lands: the full demo (synthetic ground-truth world -> SAEs ->
Monosemanticity Score -> report) needs the training and metric stages. For now it runs the part
that exists: a tiny random CLIP and a generated image folder, through ``extract`` and ``embed``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", default="runs/demo", help="where to write (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import sys

    from saevlm.cli import main as cli_main
    from saevlm.data.images import make_image_folder
    from saevlm.testing import save_tiny_clip

    print("saevlm demo: PLACEHOLDER. The paper's experiment on the synthetic ground-truth world "
          "arrives with the SAE and metrics stages; this runs extraction and embedding on a tiny "
          "random CLIP and generated images.", file=sys.stderr)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = make_image_folder(Path(tmp) / "images", num_classes=4, per_class=8)
        model = save_tiny_clip(Path(tmp) / "tiny-clip")
        common = ["--dataset_name", "imagefolder", "--data_path", str(images), "--batch_size", "8",
                  "--num_workers", "0", "--device", "cpu"]
        rc = cli_main(["extract", "--model_name", str(model), "--layer", "1", "3", "last",
                       "--cls_only", "--output_dir", str(out / "activations"), *common])
        if rc:
            return rc
        rc = cli_main(["embed", "--model_name", str(model), "--embeddings_path",
                       str(out / "embeddings"), *common])
    print(f"demo outputs in {out.resolve()}")
    return rc
