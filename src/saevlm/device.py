"""Device and precision selection (``--device auto|cpu|cuda[:i]``, ``--autocast``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from saevlm.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:<index>"
AUTOCAST_CHOICES = ("none", "fp16", "bf16")


def resolve_device(spec: str, field: str = "device") -> "torch.device":
    """Turn a ``--device`` value into a ``torch.device``; asking for a missing GPU is a UserError."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"{field} {spec}: CUDA was requested but torch sees no GPU on this machine "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
                f"Use {field} cpu or {field} auto.", field=field, mentions=(field,))
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise UserError(f"{field} {spec}: expected cuda:<integer index>", field=field) from None
        count = torch.cuda.device_count()
        if index >= count:
            raise UserError(f"{field} {spec}: only {count} GPU(s) visible (indices 0..{count - 1})", field=field)
        return torch.device("cuda", index)
    raise UserError(f"{field} {spec!r}: expected {DEVICE_HELP}", field=field)


def autocast_context(device: "torch.device", autocast: str, field: str = "autocast"):
    """A context manager running the model under fp16/bf16 autocast on GPU, or bf16 on the CPU,
    or a no-op. On a CPU with bf16 instructions (AVX512-BF16, AMX) a bf16 forward takes about half
    the time of fp32 (a ViT-S on 32 images, 1 thread: 2.1 s against 4.6 s); elsewhere it is
    emulated, correct but not faster."""
    import torch

    if autocast in (None, "none"):
        return contextlib.nullcontext()
    if autocast not in AUTOCAST_CHOICES:
        raise UserError(f"{field} {autocast!r}: expected one of {', '.join(AUTOCAST_CHOICES)}", field=field)
    if device.type == "cpu" and autocast == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if device.type != "cuda":
        raise UserError(f"{field} {autocast}: fp16 autocast is for GPUs (on a CPU, bf16 or none); the device is "
                        f"{device}", field=field)
    if autocast == "bf16":
        check_bf16(device, field)
    dtype = torch.float16 if autocast == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def check_bf16(device: "torch.device", field: str = "autocast") -> None:
    """bf16 on a GPU that has no bf16 arithmetic (before Ampere) is a UserError, said before any work."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise UserError(f"{field} bf16: {name} has no bf16 arithmetic (it needs compute capability 8.0 or newer); "
                        f"use {field} fp16 or none", field=field)


def check_fits_on_device(device: "torch.device", nbytes: int, what: str, field: str) -> None:
    """Copying ``nbytes`` to the GPU must leave room to compute: more than 90 % of its free memory
    is a UserError naming both sizes."""
    import torch

    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    if nbytes > 0.9 * free:
        raise UserError(f"{field} yes: {what} takes {_size(nbytes)}, and {device} has {_size(free)} free of "
                        f"{_size(total)}; use {field} no (or auto)", field=field, mentions=(field,))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
