"""LLaVA-1.5 wrapper: load a model and its processor, ask a question about an image.

``llava-hf/llava-1.5-7b-hf`` (or a local directory), fp16 on GPU and fp32 on CPU by default.
``prompt`` uses the processor's chat template (LLaVA-1.5: ``USER: <image>\\n... ASSISTANT:``)
and returns only the assistant's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saevlm.errors import UserError

DEFAULT_LLAVA = "llava-hf/llava-1.5-7b-hf"
LLAVA_15_TEMPLATE = "USER: <image>\n{text} ASSISTANT:"
# transformers 5.x: model.model.vision_tower.encoder.layers; 4.x: ...vision_tower.vision_model.encoder.layers
VISION_BLOCK_PATHS = ("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers",
                      "vision_tower.vision_model.encoder.layers", "vision_tower.encoder.layers")


@dataclass
class Llava:
    model: Any
    processor: Any
    device: Any
    dtype: Any
    source: str

    @property
    def vision_blocks(self):
        from saevlm.models.hf import get_attr_path
        found = get_attr_path(self.model, VISION_BLOCK_PATHS)
        if found is None:
            raise RuntimeError(f"no vision-tower blocks at any of {VISION_BLOCK_PATHS}")
        return found[1]

    @property
    def vision_feature_layer(self) -> int:
        v = getattr(self.model.config, "vision_feature_layer", -2)
        return max(v) if isinstance(v, (list, tuple)) else int(v)

    def last_read_block(self) -> int:
        """The deepest vision block whose output LLaVA reads (hidden_states[v] is block v - 1;
        for v = -2 that is block L - 2). Later blocks do not affect generation."""
        n = len(self.vision_blocks)
        v = self.vision_feature_layer
        return (v if v >= 0 else n + 1 + v) - 1

    def build_inputs(self, text: str, image):
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        else:
            prompt = LLAVA_15_TEMPLATE.format(text=text)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()}

    def prompt(self, text: str, image, max_new_tokens: int = 5) -> str:
        """Greedy answer to ``text`` about ``image`` (a PIL image): the assistant's words only."""
        return self.generate(text, image, max_new_tokens)[0]

    def generate(self, text: str, image, max_new_tokens: int = 5) -> tuple[str, str]:
        """(the new tokens decoded and stripped, the whole sequence decoded with special tokens
        skipped). The authors read their answer from the second: ``split('ASSISTANT: ')[-1]``."""
        import torch

        inputs = self.build_inputs(text, image)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        tok = self.processor.tokenizer
        return tok.decode(new, skip_special_tokens=True).strip(), tok.decode(out[0], skip_special_tokens=True)

    def logits(self, text: str, image):
        import torch

        with torch.no_grad():
            return self.model(**self.build_inputs(text, image)).logits


def load_llava(name: str = DEFAULT_LLAVA, device=None, dtype: str = "auto",
               processor_backend: str = "pil") -> Llava:
    """LLaVA and its processor; the image processor in ``processor_backend`` (pil by default: the
    authors' transformers-4.46 path, as ``extract`` uses; transformers 5 would pick torchvision)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from saevlm.models.hf import auto_processor, hub_error

    device = device or torch.device("cpu")
    torch_dtype = {"auto": torch.float16 if device.type == "cuda" else torch.float32,
                   "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"--model_dtype {dtype!r}: expected auto, fp16, bf16 or fp32")
    try:
        model = LlavaForConditionalGeneration.from_pretrained(name, dtype=torch_dtype)
        processor = auto_processor(name, processor_backend, multimodal=True)
    except (OSError, ValueError) as err:
        raise hub_error(name, name, err) from None
    model.to(device).eval()
    return Llava(model, processor, device, torch_dtype, name)


def load_image(spec: str, size: int = 336):
    """A PIL image from a path or (online) an http(s) URL, or ``white`` / ``black`` for a plain
    image (the paper's white image)."""
    from PIL import Image

    if spec in ("white", "black"):
        return Image.new("RGB", (size, size), (255, 255, 255) if spec == "white" else (0, 0, 0))
    if spec.startswith(("http://", "https://")):
        import io
        import urllib.request
        try:
            with urllib.request.urlopen(spec, timeout=30) as r:  # noqa: S310 - a user-given image URL
                data = r.read()
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except Exception as err:  # noqa: BLE001 - any network or decode failure: one message
            raise UserError(f"--image {spec}: could not fetch it ({type(err).__name__}: {err}); offline, "
                            f"download it once and pass the file, or use 'white'") from None
    try:
        with Image.open(spec) as im:
            return im.convert("RGB")
    except (OSError, FileNotFoundError) as err:
        raise UserError(f"--image {spec}: cannot read it as an image ({err}); or use 'white'") from None
