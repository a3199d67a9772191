"""SAE interventions at a vision-tower block, by forward hook (never a copied ``forward``).

Two modes, both applied to every token of the block's output:

- ``reconstruct`` (the paper): the output x is replaced by decode(c), where c = encode(x) with the
  chosen latents set to alpha (and, with ``zero_others``, every other latent set to 0 first).
- ``error-preserving``: x + decode(c) - decode(encode(x)); with nothing clamped the model is
  exactly unchanged, so only the clamp's effect is added.

The SAE runs in fp32 whatever the model's dtype; the result is cast back. The hook is a context
manager: it is removed on exit and on exception. It always runs before any other forward hook on
the block (transformers 5 records hidden states with hooks of its own), so what LLaVA reads is
the steered output on every call. Blocks after the one LLaVA reads
(``vision_feature_layer``) are refused, since a hook there cannot change generation.
"""

from __future__ import annotations

import contextlib
from typing import Any

from saevlm.errors import UserError

MODES = ("reconstruct", "error-preserving")


def _apply(sae, x, clamp: dict[int, float], mode: str, zero_others: bool):
    import torch

    from saevlm.sae.inference import encode_batch

    shape, dtype = x.shape, x.dtype
    flat = x.reshape(-1, shape[-1]).float()
    with torch.no_grad():
        codes = encode_batch(sae, flat)
        steered = torch.zeros_like(codes) if zero_others else codes.clone()
        for latent, alpha in clamp.items():
            steered[:, latent] = alpha
        if mode == "reconstruct":
            out = sae.ae.decode(steered)
        else:
            out = flat + sae.ae.decode(steered) - sae.ae.decode(codes)
    return out.to(dtype).reshape(shape)


@contextlib.contextmanager
def sae_intervention(llava, sae, layer: int, clamp: dict[int, float] | None = None,
                     mode: str = "reconstruct", zero_others: bool = False):
    """Hook ``sae`` into vision block ``layer`` of ``llava`` for the duration of the block."""
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    blocks = llava.vision_blocks
    n = len(blocks)
    if not -n <= layer < n:
        raise UserError(f"--layer {layer}: the vision tower has {n} blocks")
    layer = layer % n
    last = llava.last_read_block()
    if layer > last:
        raise UserError(f"--layer {layer}: LLaVA reads vision_feature_layer={llava.vision_feature_layer}, "
                        f"the output of block {last}; a hook on block {layer} cannot change what it "
                        f"generates. Use a block <= {last} (the paper steers block 22).")
    width = int(getattr(llava.model.config.vision_config, "hidden_size", sae.activation_dim))
    if sae.activation_dim != width:
        raise UserError(f"--sae_path {sae.path}: the SAE takes {sae.activation_dim}-d inputs, the vision "
                        f"tower is {width}-d")
    clamp = dict(clamp or {})
    for latent in clamp:
        if not 0 <= latent < sae.dict_size:
            raise UserError(f"--neuron {latent}: out of range (the SAE has {sae.dict_size} latents)")
    sae.ae.to(llava.device).float()

    def hook(_module, _inputs, output: Any):
        # transformers 5.x blocks return a Tensor, 4.x a tuple: return the structure we were given
        if isinstance(output, tuple):
            return (_apply(sae, output[0], clamp, mode, zero_others),) + tuple(output[1:])
        return _apply(sae, output, clamp, mode, zero_others)

    block = blocks[layer]
    # Our hook must run FIRST among the block's forward hooks: transformers 5 records LLaVA's
    # vision hidden states with forward hooks of its own (output capturing), installed at the
    # model's first forward. Appended after them, a replaced output would never reach what LLaVA
    # reads, so every intervention after the first forward silently did nothing. ``prepend=True``
    # puts ours ahead of any hook already there; the pre-hook keeps it ahead of any hook installed
    # later (e.g. during the forward that is about to run), at every call.
    handle = block.register_forward_hook(hook, prepend=True)

    def keep_first(module, _inputs):
        hooks = getattr(module, "_forward_hooks", None)
        if hooks is not None and handle.id in hooks and next(iter(hooks)) != handle.id:
            hooks.move_to_end(handle.id, last=False)

    pre_handle = block.register_forward_pre_hook(keep_first)
    try:
        yield
    finally:
        handle.remove()
        pre_handle.remove()
