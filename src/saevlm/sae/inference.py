"""SAE inference at the paper's settings: the codes a trained SAE gives an activation."""

from __future__ import annotations

from typing import Any


def encode_codes(ae: Any, arch: str, x):
    """Inference codes of dictionary_learning module ``ae`` of architecture ``arch``.

    BatchTopK / Matryoshka use the learned global threshold (arXiv 2504.02821, Sec. 3); before
    it exists (threshold < 0, early checkpoints) the batch top-k is used instead."""
    from saevlm.sae.archs import spec

    if spec(arch).activation == "threshold":
        return ae.encode(x, use_threshold=bool(ae.threshold >= 0))
    return ae.encode(x)


def encode_batch(sae, x):
    """Inference codes of a :class:`~saevlm.sae.checkpoint.LoadedSAE` for activations ``x``."""
    return encode_codes(sae.ae, sae.arch, x)
