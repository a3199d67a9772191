"""``saevlm steer``: LLaVA's answer without and with an SAE latent clamped in its vision tower.

The paper's "pencil" example (Sec. 4.3) is one command:

    saevlm steer --sae_path SAE --neuron <pencil latent> --alpha 0 30 40 50 \\
        --prompt "Write me a short love poem" --image white

With no flags at all it runs what the authors' ``steering_qualitative.py`` hard-codes: their
checkpoint path, latent 39, alpha 0 30 40 50, that prompt, 60 new tokens and their texture image
(a URL: needs the network, else pass ``--image``).
"""

from __future__ import annotations

import argparse

from saevlm.errors import UserError
from saevlm.steering.options import (AUTHORS_IMAGE, AUTHORS_SAE_PATH, QUALITATIVE_PROMPT, add_model_arguments,
                                     load_models, resolve_layer)  # noqa: F401

def add_arguments(p: argparse.ArgumentParser) -> None:
    # defaults: the authors' steering_qualitative.py (the paper's "pencil" example, Fig. 5)
    add_model_arguments(p, sae_default=AUTHORS_SAE_PATH, llava_flags=("--llava_model", "--model_name"),
                        max_new_tokens=60)
    p.add_argument("--neuron", type=int, nargs="+", default=[39],
                   help="latent(s) to clamp (default: 39, the authors' pencil latent; its id changes "
                        "with every retraining)")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.0, 30.0, 40.0, 50.0],
                   help="value(s) to clamp to; several give a sweep (default: 0 30 40 50)")
    p.add_argument("--prompt", default=QUALITATIVE_PROMPT, help="(default: %(default)r)")
    p.add_argument("--image", default=AUTHORS_IMAGE,
                   help="image path or URL, or 'white' (default: the authors' texture photo, %(default)s)")


def run(args: argparse.Namespace) -> int:
    from saevlm.steering.intervention import sae_intervention
    from saevlm.steering.llava import load_image

    llava, sae, layer = load_models(args)
    with sae_intervention(llava, sae, layer, {}, args.mode, args.zero_others):
        pass  # validates block and SAE before the image is fetched
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
