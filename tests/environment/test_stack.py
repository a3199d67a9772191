"""The CPU-torch / CUDA-torchvision import fix (ENVIRONMENT.md) and the supported transformers
range, checked at import."""

import subprocess
import sys

import pytest

from helpers import run_python


def test_stack_imports_after_saevlm():
    """transformers model classes, open_clip, dictionary_learning and torchvision all import."""
    r = run_python("""
        import saevlm
        import torchvision, torchvision.transforms.v2
        from transformers import CLIPVisionModelWithProjection, SiglipVisionModel, Dinov2Model
        import open_clip
        import dictionary_learning
        from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
        from saevlm import _compat
        print("OK", torchvision.extension._has_ops(), _compat.fix_applied)
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    ok, has_ops, applied = r.stdout.split()[-3:]
    assert ok == "OK"
    # The fix acts exactly when torchvision's ops do not load.
    assert (has_ops == "True") == (applied == "False")


def test_fix_does_nothing_when_ops_load():
    """With a torchvision whose ops load, no schema is declared."""
    r = run_python("""
        import sys, types
        ext = types.ModuleType("torchvision.extension"); ext._has_ops = lambda: True
        sys.modules["torchvision.extension"] = ext
        from saevlm import _compat
        _compat._declare_missing_schemas()
        print(_compat.fix_applied, _compat._library is None)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "True"]


def test_fix_declares_schemas_when_ops_missing():
    r = run_python("""
        import sys, types
        ext = types.ModuleType("torchvision.extension"); ext._has_ops = lambda: False
        sys.modules["torchvision.extension"] = ext
        from saevlm import _compat
        _compat._declare_missing_schemas()
        import torch
        print(_compat.fix_applied, hasattr(torch.ops.torchvision, "nms"))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "True"]


def test_transformers_range_is_checked():
    """The supported range (docs/install.md): 4.57 up to, not including, 6."""
    from saevlm._compat import check_transformers_version
    from saevlm.errors import UserError

    for ok in ("4.57.0", "4.57.6", "5.0.0.dev0", "5.17.0", "5.23.0"):
        check_transformers_version(ok)
    for bad in ("4.46.3", "4.56.2", "3.5.1", "6.0.0"):
        with pytest.raises(UserError, match=rf"transformers {bad} is not supported"):
            check_transformers_version(bad)


def test_an_unsupported_transformers_fails_at_import_in_one_line(tmp_path):
    """A transformers 4.46 (the authors') found first on the path: the command stops when it
    first imports transformers, with one line naming the version and the range, no traceback."""
    import os

    from helpers import make_image_folder

    fake = tmp_path / "site"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text("raise SystemExit('the gate let an old transformers import')\n")
    (fake / "transformers-4.46.3.dist-info").mkdir()
    (fake / "transformers-4.46.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: transformers\nVersion: 4.46.3\n")
    images = make_image_folder(tmp_path / "imgs", num_classes=1, per_class=2)
    r = subprocess.run([sys.executable, "-m", "saevlm", "extract", "--model_name", "openai/clip-vit-base-patch32",
                        "--dataset_name", "imagefolder", "--data_path", str(images), "--layer", "3",
                        "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--no_progress"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1",
                            "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "let an old transformers import" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "saevlm extract: error: transformers 4.46.3 is not supported: saevlm needs transformers >= 4.57 and < 6 "
        "(pip install 'transformers>=4.57,<6'; docs/install.md)")
