"""Import-time guards: the torchvision fix below, and the supported range of transformers.

The torchvision fix: a CPU-only torch next to a CUDA-only torchvision wheel.

The only torchvision 0.28.0 wheel on some registries is a CUDA build. With a CPU torch its C++
ops do not load, and ``torchvision/_meta_registrations.py`` then fails at import with
``RuntimeError: operator torchvision::nms does not exist`` (pytorch/vision#8985). Since
transformers, open_clip, nnsight and dictionary_learning all import torchvision, nothing works.

The fix declares the two operator schemas that module registers fake kernels for (``nms`` and
``qnms``) just before it is first imported, and only when ``torchvision.extension._has_ops()``
is False. A ``sys.meta_path`` finder does this lazily, so importing saevlm never imports torch.
Where torchvision's ops load, the finder declares nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
# The torch.library.Library object must stay alive: its definitions are dropped when it is
# garbage-collected.
_library: Any = None
fix_applied: bool = False


def _declare_missing_schemas() -> None:
    global _library, fix_applied
    extension = sys.modules.get("torchvision.extension")
    if extension is None or extension._has_ops():
        return  # torchvision's own ops are loaded: nothing to fix.
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    fix_applied = True


class _TorchvisionFixFinder(importlib.abc.MetaPathFinder):
    """Fires once, when ``torchvision._meta_registrations`` is about to be imported."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - importlib API
        if fullname == _TARGET:
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            _declare_missing_schemas()
        return None  # let the normal finders import the module


def install_torchvision_fix() -> None:
    """Install the lazy fix; a no-op if torchvision was already imported or the fix is in place."""
    if _TARGET in sys.modules:
        return
    if any(isinstance(f, _TorchvisionFixFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionFixFinder())


# ---------------------------------------------------------------------------- transformers range
# Tested: 4.57 (make test-tf4) and 5.x (requirements.txt pins 5.23; the GPU image has 5.17).
# Older 4.x lack the module paths and output records the towers and hooks rely on.
TRANSFORMERS_RANGE = ("4.57", "6")  # lowest supported, first unsupported major


def _release(version: str) -> tuple[int, ...]:
    import re

    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:2])


def check_transformers_version(version: str) -> None:
    """A one-line UserError when ``version`` lies outside :data:`TRANSFORMERS_RANGE`."""
    from saevlm.errors import UserError

    low, high = TRANSFORMERS_RANGE
    if not _release(low) <= _release(version) < _release(high):
        raise UserError(f"transformers {version} is not supported: saevlm needs transformers >= {low} and "
                        f"< {high} (pip install 'transformers>={low},<{high}'; docs/install.md)")


class _TransformersGate(importlib.abc.MetaPathFinder):
    """Checks the installed transformers' version (its metadata, without importing it) the
    first time anything imports transformers: an unsupported one fails there, in one line."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - importlib API
        if fullname == "transformers":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            from importlib.metadata import PackageNotFoundError, version

            try:
                installed = version("transformers")
            except PackageNotFoundError:
                return None  # not installed: the import fails as it would anyway
            check_transformers_version(installed)
        return None


def install_transformers_gate() -> None:
    """Install the version check; a no-op once transformers is imported or the gate is in place."""
    if "transformers" in sys.modules or any(isinstance(f, _TransformersGate) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TransformersGate())
