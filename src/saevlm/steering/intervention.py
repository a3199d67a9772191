"""SAE interventions at a vision-tower block, by forward hook (never a copied ``forward``).

Two modes, both applied to every token of the block's output:

- ``reconstruct`` (the paper): the output x is replaced by decode(c), where c = encode(x) with the
  chosen latents set to alpha (and, with ``zero_others``, every other latent set to 0 first).
- ``error-preserving``: x + decode(c) - decode(encode(x)); with nothing clamped the model is
  exactly unchanged, so only the clamp's effect is added.

The SAE runs in fp32 whatever the model's dtype; the result is cast back. The hook is a context
manager: it is removed on exit and on exception. It always runs before any other forward hook on
the block (transformers 5 records hidden states with hooks of its own), so what LLaVA reads is
the steered output on every call. Blocks after the one the language model reads
(``vision_feature_layer`` for the LLaVA family, the last block for Qwen2.5-VL and Gemma-3) are
refused, since a hook there cannot change generation. So is an SAE trained on another tower's
activations (its recorded sample of block-0 weights differs from this tower's).

Every token of the block is steered: with LLaVA-NeXT / OneVision tiles that is every tile's tokens
(each tile is one pass through the tower); with Qwen2.5-VL every patch before the 2 x 2 merger.
"""

from __future__ import annotations

import contextlib
import sys
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


def recorded_sample_missing(trained_on) -> bool:
    return trained_on.model.extra.get("block0_sample") is None


def check_tower(mllm, sae) -> None:
    """Refuse an SAE whose training activations came from another vision tower than ``mllm``'s:
    the sample of block-0 weights recorded at extraction must match up to bf16 rounding (so an fp32
    CLIP and LLaVA's fp16 copy of it agree); older SAEs without one must at least agree on depth."""
    from saevlm.models.base import same_block

    trained_on = sae.trained_on
    if trained_on is None:  # an SAE trained elsewhere (the authors' checkpoints): width only
        print(f"note: --sae_path {sae.path}: records no provenance (trained outside saevlm), so it cannot be "
              f"checked that its activations came from {mllm.family.label}'s tower in {mllm.source}; only its "
              f"width ({sae.activation_dim}) was checked", file=sys.stderr)
        return
    if recorded_sample_missing(trained_on):
        print(f"note: --sae_path {sae.path}: its activations record no block-0 weights sample (an older saevlm); "
              f"only the tower's depth is checked", file=sys.stderr)
    extra = trained_on.model.extra
    recorded = extra.get("block0_sample")
    source = trained_on.model.source or trained_on.model.name or "?"
    if recorded is not None:
        if not same_block(recorded, mllm.tower_sample):
            raise UserError(f"--sae_path {sae.path}: trained on activations of {source}, whose vision blocks are "
                            f"not {mllm.family.label}'s tower in {mllm.source} (block-0 weights differ). Extract "
                            f"through this tower (saevlm extract --model_name {mllm.source}) and train on that")
        return
    depth = extra.get("num_layers")
    if depth is not None and int(depth) != len(mllm.vision_blocks):
        raise UserError(f"--sae_path {sae.path}: trained on {source}, a {depth}-block encoder; "
                        f"{mllm.family.label}'s tower has {len(mllm.vision_blocks)} blocks")


@contextlib.contextmanager
def sae_intervention(mllm, sae, layer: int, clamp: dict[int, float] | None = None,
                     mode: str = "reconstruct", zero_others: bool = False):
    """Hook ``sae`` into vision block ``layer`` of the MLLM ``mllm`` (any supported family) for
    the duration of the block."""
    import torch

    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    blocks = mllm.vision_blocks
    n = len(blocks)
    if not -n <= layer < n:
        raise UserError(f"--layer {layer}: the vision tower has {n} blocks")
    layer = layer % n
    last = mllm.last_read_block()
    if layer > last:
        raise UserError(f"--layer {layer}: {mllm.read_rule()}, the output of block {last}; a hook on block "
                        f"{layer} cannot change what it generates. Use a block <= {last} (the paper steers "
                        f"block 22 of LLaVA-1.5).")
    width = mllm.vision_width
    if sae.activation_dim != width:
        raise UserError(f"--sae_path {sae.path}: the SAE takes {sae.activation_dim}-d inputs, the vision "
                        f"tower is {width}-d")
    check_tower(mllm, sae)
    clamp = dict(clamp or {})
    for latent in clamp:
        if not 0 <= latent < sae.dict_size:
            raise UserError(f"--neuron {latent}: out of range (the SAE has {sae.dict_size} latents)")
    sae.ae.to(mllm.device).float()

    def steer(hidden):
        steered = _apply(sae, hidden, clamp, mode, zero_others)
        if torch.is_grad_enabled() and hidden.requires_grad:
            return steered
        # in place: transformers 4.x records hidden states by wrapping the block's forward, so the
        # tensor it keeps (and LLaVA reads) is this very output object, captured before any hook
        return hidden.copy_(steered)

    def hook(_module, _inputs, output: Any):
        # transformers 5.x blocks return a Tensor, 4.x a tuple: return the structure we were given
        if isinstance(output, tuple):
            return (steer(output[0]),) + tuple(output[1:])
        return steer(output)

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
