"""Flags shared by the steering commands (``steer``, ``steering-score``): the SAE, LLaVA, the
intervention layer and mode, and the authors' hard-coded qualitative setting."""

from __future__ import annotations

import argparse

from saevlm.device import DEVICE_HELP
from saevlm.errors import UserError

DEFAULT_PROMPT = "What is shown in this image? Use exactly one word!"


# What the authors' steering_qualitative.py hard-codes (it takes no flags).
AUTHORS_SAE_PATH = ("checkpoints_dir/matroyshka_batch_top_k_20_x64/random_k_2/imagenet_train_activations_"
                    "clip-vit-large-patch14-336_22_post_mlp_residual_matroyshka_batch_top_k_20_x64/"
                    "trainer_0/checkpoints/ae_100000.pt")
AUTHORS_IMAGE = "https://img.freepik.com/free-photo/cement-texture_1194-5269.jpg?semt=ais_hybrid"
QUALITATIVE_PROMPT = "Write me a short love poem"


def add_model_arguments(p: argparse.ArgumentParser, *, sae_default: str | None = None,
                        llava_flags: tuple[str, ...] = ("--llava_model",), max_new_tokens: int = 5) -> None:
    p.add_argument("--sae_path", default=sae_default, required=sae_default is None,
                   help="the steering SAE (trainer directory or .pt)" +
                        (" (default: the authors' path, %(default)s)" if sae_default else ""))
    p.add_argument(*llava_flags, dest="llava_model", default="llava-hf/llava-1.5-7b-hf",
                   help="LLaVA-1.5 hub id or local directory (default: %(default)s)")
    p.add_argument("--layer", type=int, default=None,
                   help="vision block to intervene on (default: the SAE's own hook layer, else 22)")
    p.add_argument("--mode", default="reconstruct", choices=["reconstruct", "error-preserving"],
                   help="reconstruct: output = decode(clamped codes) (the paper); error-preserving: "
                        "output + decode(clamped) - decode(codes) (default: %(default)s)")
    p.add_argument("--zero_others", action="store_true",
                   help="reconstruct mode: zero every other latent before clamping")
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    add_processor_backend_argument(p)
    p.add_argument("--model_dtype", "--dtype", dest="model_dtype", default="auto",
                   help="LLaVA's weights and compute: auto (fp16 on GPU, fp32 on CPU) | fp16 | bf16 | fp32 "
                        "(--dtype is the older name)")


def add_processor_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processor_backend", default="pil", choices=["pil", "torchvision"],
                   help="image preprocessing of LLaVA and CLIP: pil (the authors' transformers-4.46 path, as "
                        "extract uses) or torchvision (transformers 5's default; moves similarities by "
                        "about 1e-5) (default: %(default)s)")


def resolve_layer(args, sae) -> int:
    if args.layer is not None:
        return args.layer
    trained_on = sae.trained_on
    if trained_on is not None and trained_on.hook.attachment_point == "post_mlp_residual" \
            and trained_on.hook.layer is not None:
        return int(trained_on.hook.layer)
    return 22


def load_models(args):
    from saevlm.device import resolve_device
    from saevlm.sae.checkpoint import load_sae
    from saevlm.steering.llava import load_llava

    device = resolve_device(args.device)
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: expected a positive integer")
    sae = load_sae(args.sae_path, device=device)
    llava = load_llava(args.llava_model, device, args.model_dtype, args.processor_backend)
    return llava, sae, resolve_layer(args, sae)
