"""The CPU-torch / CUDA-torchvision import fix (ENVIRONMENT.md)."""

import subprocess
import sys
import textwrap


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
                          timeout=300)


def test_stack_imports_after_saevlm():
    """transformers model classes, open_clip, dictionary_learning and torchvision all import."""
    r = _python("""
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
    r = _python("""
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
    r = _python("""
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


def test_help_is_fast_and_imports_no_torch():
    r = _python("""
        import sys
        from saevlm.cli import build_parser
        build_parser()
        print(sorted(m for m in ("torch", "transformers", "open_clip") if m in sys.modules))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
