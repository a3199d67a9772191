"""``saevlm steer``: LLaVA's answer without and with an SAE latent clamped in its vision tower.

The paper's "pencil" example (Sec. 4.3) is one command:

    saevlm steer --sae_path SAE --neuron <pencil latent> --alpha 0 30 40 50 \\
        --prompt "Write me a short love poem" --image white

With no flags at all it runs what the authors' ``steering_qualitative.py`` hard-codes: their
checkpoint path, latent 39, alpha 0 30 40 50, that prompt, 60 new tokens and their texture image
(a URL: needs the network, else pass ``--image``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saevlm.commandline import CommandConfig, opt
from saevlm.config import paper_default
from saevlm.models.towers import DEFAULT_MLLM
from saevlm.steering.options import (
    AUTHORS_IMAGE,
    AUTHORS_SAE_PATH,
    QUALITATIVE_PROMPT,
    SteeringModelOptions,
    load_models,
)


@dataclass(frozen=True, kw_only=True)
class SteerConfig(CommandConfig, SteeringModelOptions):
    """`saevlm steer`: LLaVA's answer with SAE latents clamped in its vision tower."""

    COMMAND: ClassVar[str] = "steer"

    sae_path: str = opt(AUTHORS_SAE_PATH)
    """the steering SAE (trainer directory or .pt) (default: the authors' path, %(default)s)"""
    llava_model: str = opt(DEFAULT_MLLM, flags=("--llava_model", "--model_name"))
    """the MLLM: LLaVA-1.5 (the paper's), LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL or Gemma-3, hub id or local
    directory (default: %(default)s)"""
    max_new_tokens: int = opt(paper_default("steer", "max_new_tokens"))
    """(default: %(default)s)"""
    neuron: list[int] = opt(paper_default("steer", "neuron"))
    """latent(s) to clamp (default: 39, the authors' pencil latent; its id changes with every retraining)"""
    alpha: list[float] = opt(paper_default("steer", "alpha"))
    """value(s) to clamp to; several give a sweep (default: 0 30 40 50)"""
    prompt: str = opt(QUALITATIVE_PROMPT)
    """(default: %(default)r)"""
    image: str = opt(AUTHORS_IMAGE)
    """image path or URL, or 'white' (default: the authors' texture photo, %(default)s)"""


CONFIG = SteerConfig


def run(args: SteerConfig) -> int:
    from saevlm.steering.intervention import sae_intervention
    from saevlm.models.mllm import load_image

    mllm, sae, layer = load_models(args)
    with sae_intervention(mllm, sae, layer, {}, args.mode, args.zero_others):
        pass  # validates block and SAE before the image is fetched
    size = mllm.image_size
    image = load_image(args.image, size)
    print(f"prompt: {args.prompt!r}   image: {args.image}   block {layer}, mode {args.mode}")
    print(f"unsteered: {mllm.prompt(args.prompt, image, args.max_new_tokens)}")
    for alpha in args.alpha:
        clamp = {n: alpha for n in args.neuron}
        with sae_intervention(mllm, sae, layer, clamp, args.mode, args.zero_others):
            answer = mllm.prompt(args.prompt, image, args.max_new_tokens)
        print(f"latent {' '.join(map(str, args.neuron))} = {alpha:g}: {answer}")
    return 0
