"""Flags shared by the steering commands (``steer``, ``steering-score``): the SAE, LLaVA, the
intervention layer and mode, and the authors' hard-coded qualitative setting."""

from __future__ import annotations

from dataclasses import dataclass

from saevlm.commandline import DeviceOption, opt
from saevlm.errors import UserError
from saevlm.models.towers import DEFAULT_MLLM

DEFAULT_PROMPT = "What is shown in this image? Use exactly one word!"


# What the authors' steering_qualitative.py hard-codes (it takes no flags).
AUTHORS_SAE_PATH = ("checkpoints_dir/matroyshka_batch_top_k_20_x64/random_k_2/imagenet_train_activations_"
                    "clip-vit-large-patch14-336_22_post_mlp_residual_matroyshka_batch_top_k_20_x64/"
                    "trainer_0/checkpoints/ae_100000.pt")
AUTHORS_IMAGE = "https://img.freepik.com/free-photo/cement-texture_1194-5269.jpg?semt=ais_hybrid"
QUALITATIVE_PROMPT = "Write me a short love poem"


@dataclass(frozen=True, kw_only=True)
class SteeringModelOptions(DeviceOption):
    """The SAE, LLaVA, the intervention block and mode: options shared by ``steer`` and
    ``steering-score`` (each may redeclare a default)."""

    sae_path: str = opt()
    """the steering SAE (trainer directory or .pt)"""
    llava_model: str = opt(DEFAULT_MLLM)
    """the MLLM: LLaVA-1.5 (the paper's), LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL or Gemma-3, hub id or local
    directory (default: %(default)s)"""
    layer: int | None = opt(None)
    """vision block to intervene on (default: the SAE's own hook layer, else the block the MLLM reads: 22 for
    LLaVA-1.5); at most the block the language
    model reads (LLaVA: vision_feature_layer; Qwen2.5-VL, Gemma-3: the last)"""
    mode: str = opt("reconstruct", choices=["reconstruct", "error-preserving"])
    """reconstruct: output = decode(clamped codes) (the paper); error-preserving: output + decode(clamped) -
    decode(codes) (default: %(default)s)"""
    zero_others: bool = opt(False)
    """reconstruct mode: zero every other latent before clamping"""
    max_new_tokens: int = opt(5)
    """(default: %(default)s)"""
    processor_backend: str = opt("pil", choices=["pil", "torchvision"])
    """image preprocessing of LLaVA and CLIP: pil (the authors' transformers-4.46 path, as extract uses) or
    torchvision (transformers 5's default; moves similarities by about 1e-5) (default: %(default)s)"""
    model_dtype: str = opt("auto", flags=("--model_dtype", "--dtype"))
    """LLaVA's weights and compute: auto (fp16 on GPU, fp32 on CPU) | fp16 | bf16 | fp32 (--dtype is the older
    name)"""


def resolve_layer(args, sae, mllm) -> int:
    if args.layer is not None:
        return args.layer
    trained_on = sae.trained_on
    if trained_on is not None and trained_on.hook.attachment_point == "post_mlp_residual" \
            and trained_on.hook.layer is not None:
        return int(trained_on.hook.layer)
    return mllm.last_read_block()  # the deepest block whose output the language model reads


def load_models(args):
    from saevlm.device import resolve_device
    from saevlm.sae.checkpoint import load_sae
    from saevlm.models.mllm import load_mllm

    device = resolve_device(args.device)
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: expected a positive integer")
    sae = load_sae(args.sae_path, device=device)
    mllm = load_mllm(args.llava_model, device, args.model_dtype, args.processor_backend)
    return mllm, sae, resolve_layer(args, sae, mllm)
