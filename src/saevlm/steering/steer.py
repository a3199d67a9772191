"""``saevlm steer``: LLaVA's answer without and with an SAE latent clamped in its vision tower.

The paper's "pencil" example (Sec. 4.3) is one command:

    saevlm steer --sae_path SAE --neuron <pencil latent> --alpha 0 30 40 50 \\
        --prompt "Write me a short love poem" --image white
"""

from __future__ import annotations

import argparse

from saevlm.device import DEVICE_HELP
from saevlm.errors import UserError

DEFAULT_PROMPT = "What is shown in this image? Use exactly one word!"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae_path", required=True, help="the steering SAE (trainer directory or ae.pt)")
    p.add_argument("--model_name", default="llava-hf/llava-1.5-7b-hf",
                   help="LLaVA-1.5 hub id or local directory (default: %(default)s)")
    p.add_argument("--layer", type=int, default=None,
                   help="vision block to intervene on (default: the SAE's own hook layer, else 22)")
    p.add_argument("--mode", default="reconstruct", choices=["reconstruct", "error-preserving"],
                   help="reconstruct: output = decode(clamped codes) (the paper); error-preserving: "
                        "output + decode(clamped) - decode(codes) (default: %(default)s)")
    p.add_argument("--zero_others", action="store_true",
                   help="reconstruct mode: zero every other latent before clamping")
    p.add_argument("--max_new_tokens", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU) | fp16 | bf16 | fp32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--neuron", type=int, nargs="+", required=True, help="latent(s) to clamp")
    p.add_argument("--alpha", type=float, nargs="+", default=[100.0],
                   help="value(s) to clamp to; several give a sweep (default: 100)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="(default: %(default)r)")
    p.add_argument("--image", default="white", help="image path, or 'white' (default: %(default)s)")


def resolve_layer(args, sae) -> int:
    if args.layer is not None:
        return args.layer
    hook = sae.config.get("saevlm", {}).get("provenance", {}).get("hook", {})
    if hook.get("attachment_point") == "post_mlp_residual":
        return int(hook["layer"])
    return 22


def load_models(args):
    from saevlm.device import resolve_device
    from saevlm.sae.registry import load_sae
    from saevlm.steering.llava import load_llava

    device = resolve_device(args.device)
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: expected a positive integer")
    sae = load_sae(args.sae_path, device=device)
    llava = load_llava(args.model_name, device, args.dtype)
    return llava, sae, resolve_layer(args, sae)


def run(args: argparse.Namespace) -> int:
    from saevlm.steering.intervention import sae_intervention
    from saevlm.steering.llava import load_image

    llava, sae, layer = load_models(args)
    size = int(getattr(llava.model.config.vision_config, "image_size", 336))
    image = load_image(args.image, size)
    print(f"prompt: {args.prompt!r}   image: {args.image}   block {layer}, mode {args.mode}")
    print(f"unsteered: {llava.prompt(args.prompt, image, args.max_new_tokens)}")
    for alpha in args.alpha:
        clamp = {n: alpha for n in args.neuron}
        with sae_intervention(llava, sae, layer, clamp, args.mode, args.zero_others):
            answer = llava.prompt(args.prompt, image, args.max_new_tokens)
        print(f"latent {' '.join(map(str, args.neuron))} = {alpha:g}: {answer}")
    return 0
