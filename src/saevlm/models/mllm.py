"""Multimodal LLMs to steer: load one, ask it about an image, find its vision tower.

Supported (``saevlm.models.towers.TOWERS``): LLaVA-1.5 (the paper's), LLaVA-NeXT, LLaVA-OneVision,
Qwen2.5-VL and Gemma-3, by hub id or local directory; fp16 on GPU and fp32 on CPU by default.
``prompt`` renders the processor's own chat template (LLaVA-1.5 without one:
``USER: <image>\\n... ASSISTANT:``) and returns only the assistant's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from saevlm.errors import UserError
from saevlm.models.towers import (DEFAULT_MLLM, TOWERS, TowerFamily, blocks_of, read_block, supported_families,
                                  tower_of)

LLAVA_15_TEMPLATE = "USER: <image>\n{text} ASSISTANT:"


@dataclass
class MLLM:
    """A loaded multimodal LLM with its processor, and where its vision tower is."""

    model: Any
    processor: Any
    device: Any
    dtype: Any
    source: str
    family: TowerFamily = TOWERS["llava"]

    @property
    def tower(self):
        return tower_of(self.model, self.family)

    @property
    def vision_blocks(self):
        return blocks_of(self.tower, self.family)

    @property
    def vision_config(self):
        return self.model.config.vision_config

    @property
    def vision_width(self) -> int:
        return int(self.vision_config.hidden_size)

    @property
    def image_size(self) -> int:
        """The tower's input size (the side of the plain 'white' image)."""
        return int(getattr(self.vision_config, "image_size", 0) or 336)

    @property
    def vision_feature_layer(self) -> int | list[int] | None:
        return getattr(self.model.config, "vision_feature_layer", None) if self.family.read != "last" else None

    def last_read_block(self) -> int:
        """The deepest vision block whose output the language model reads; later blocks do not
        affect generation (LLaVA's vision_feature_layer -2 of 24 blocks: block 22; Qwen2.5-VL and
        Gemma-3 read the last block)."""
        return read_block(self.model.config, self.family, len(self.vision_blocks))

    @cached_property
    def tower_sample(self) -> list[float]:
        """Block 0's weights, sampled as extraction records them (see ``check_tower``)."""
        from saevlm.models.base import block_sample
        return block_sample(self.vision_blocks[0])

    def read_rule(self) -> str:
        """How the read block follows from the config, in words."""
        if self.family.read == "last":
            return f"{self.family.label} reads the tower's last block"
        return f"{self.family.label} reads vision_feature_layer={self.vision_feature_layer}"

    def chat_prompt(self, text: str) -> str:
        """``text`` after one image, in the processor's chat template (LLaVA-1.5's without one)."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return LLAVA_15_TEMPLATE.format(text=text)

    def build_inputs(self, text: str, image):
        inputs = self.processor(images=image, text=self.chat_prompt(text), return_tensors="pt")
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()}

    def prompt(self, text: str, image, max_new_tokens: int = 5) -> str:
        """Greedy answer to ``text`` about ``image`` (a PIL image): the assistant's words only."""
        return self.generate(text, image, max_new_tokens)[0]

    def prompt_batch(self, text: str, images: list, max_new_tokens: int = 5) -> list[str]:
        """Greedy answers to the one ``text`` about each of ``images``, in one ``generate`` call.

        Prompts whose image yields a different number of image tokens (LLaVA-NeXT tiles, Qwen2.5-VL
        at another size) are padded on the left, with the attention mask, so every answer starts
        right after its own prompt; each answer is the one ``prompt`` gives for that image alone
        (tested per family)."""
        import torch

        if len(images) == 1:
            return [self.prompt(text, images[0], max_new_tokens)]
        tok = self.processor.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # generation appends on the right: pads must come first
        try:
            prompt = self.chat_prompt(text)
            # Gemma-3's processor wants one list of images per text; the others take a flat list
            batch_images = [[im] for im in images] if self.family is TOWERS["gemma3"] else list(images)
            inputs = self.processor(images=batch_images, text=[prompt] * len(images), return_tensors="pt",
                                    padding=True)
        finally:
            tok.padding_side = side
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]

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


def mllm_family(name: str, source: str) -> TowerFamily:
    """The family of the MLLM at ``source`` (its config's model_type), or a one-line refusal."""
    from transformers import AutoConfig

    from saevlm.models.hf import hub_error

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise hub_error(name, source, err) from None
    family = TOWERS.get(config.model_type)
    if family is None:
        raise UserError(f"llava_model {name}: model type {config.model_type!r} is not a supported MLLM; "
                        f"supported: {supported_families()}", field="llava_model")
    return family


def load_mllm(name: str = DEFAULT_MLLM, device=None, dtype: str = "auto",
              processor_backend: str = "pil") -> MLLM:
    """An MLLM of any supported family and its processor; the image processor in
    ``processor_backend`` (pil by default: the authors' transformers-4.46 path, as ``extract``
    uses; transformers 5 would pick torchvision)."""
    import torch
    import transformers

    from saevlm.models.hf import auto_processor, hub_error, quiet_from_pretrained

    device = device or torch.device("cpu")
    torch_dtype = {"auto": torch.float16 if device.type == "cuda" else torch.float32,
                   "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"model_dtype {dtype!r}: expected auto, fp16, bf16 or fp32", field="model_dtype")
    family = mllm_family(name, name)
    cls = getattr(transformers, family.model_class, None)
    if cls is None:
        raise UserError(f"llava_model {name}: {family.label} needs transformers >= {family.since}; installed: "
                        f"{transformers.__version__}", field="llava_model")
    model = quiet_from_pretrained(name, name, cls, skipped_by_design=(), field="llava_model", dtype=torch_dtype)
    try:
        processor = auto_processor(name, processor_backend, multimodal=True)
    except (OSError, ValueError) as err:
        raise hub_error(name, name, err) from None
    model.to(device).eval()
    return MLLM(model, processor, device, torch_dtype, name, family)


def load_image(spec: str, size: int = 336, field: str = "image"):
    """A PIL image from a path or (online) an http(s) URL, or ``white`` / ``black`` for a plain
    image (the paper's white image); ``field``: the config field that named it (for errors)."""
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
            raise UserError(f"{field} {spec}: could not fetch it ({type(err).__name__}: {err}); offline, "
                            f"download it once and pass the file, or use 'white'", field=field) from None
    try:
        with Image.open(spec) as im:
            return im.convert("RGB")
    except (OSError, FileNotFoundError) as err:
        raise UserError(f"{field} {spec}: cannot read it as an image ({err}); or use 'white'", field=field) from None
