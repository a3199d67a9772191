"""The vision-encoder interface shared by every backend, and activation capture by forward hooks.

A :class:`VisionEncoder` wraps a loaded model and knows three things about it: its transformer
blocks (``blocks``), the module whose output is the pooled, projected image embedding
(``projection_module`` + ``projection_from_output``), and how to turn PIL images into pixel
tensors (``preprocess``). Everything else (capturing several hook points in one pass, stopping
after the deepest block that was asked for, selecting tokens) is shared code here.

Hook points (arXiv 2504.02821):

- ``post_mlp_residual`` at block ``l``: the output of encoder block ``l`` (the residual stream
  after the MLP); equals ``output_hidden_states[l + 1]`` of a transformers model.
- ``post_projection``: the pooled output after the visual projection (CLIP ``image_embeds``,
  SigLIP / DINOv2 ``pooler_output``, open_clip ``encode_image``). ``--layer -1`` in the authors'
  scripts.

Capture uses forward hooks only, never a subclass or a copy of a layer's ``forward``, so the
code works on transformers 4.x (blocks return tuples) and 5.x (blocks return tensors) alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from saevlm.data.manifest import same_block  # noqa: F401 (re-exported: steering compares towers)
from saevlm.errors import UserError

POST_MLP_RESIDUAL = "post_mlp_residual"
POST_PROJECTION = "post_projection"
ATTACHMENT_POINTS = (POST_MLP_RESIDUAL, POST_PROJECTION)


@dataclass(frozen=True, order=True)
class HookPoint:
    """One place to read activations: ``(attachment_point, layer)``; layer is -1 for the projection."""

    attachment_point: str
    layer: int = -1

    @property
    def slug(self) -> str:
        """A directory name for this point's store."""
        if self.attachment_point == POST_PROJECTION:
            return POST_PROJECTION
        return f"{self.attachment_point}_{self.layer}"


def block_sample(block: Any, n: int = 64) -> list[float]:
    """``n`` weights of a block at fixed, evenly spaced positions of its largest weight tensor:
    tells whether an SAE's activations came from this very tower. Compared with a tolerance
    (``same_block``), so an fp32 CLIP and the fp16 / bf16 copy of it inside LLaVA agree."""
    import torch

    name, weight = max(block.state_dict().items(), key=lambda kv: (kv[1].numel(), kv[0]))
    flat = weight.detach().reshape(-1)
    positions = torch.linspace(0, flat.numel() - 1, n).round().long().to(flat.device)
    return [round(float(v), 6) for v in flat[positions].float().cpu()]


def weights_sha256(module: Any) -> str:
    """SHA-256 over every tensor of ``module``'s state dict (names, dtypes, shapes, bytes, in name
    order): the identity of a model, whatever folder or hub id it was loaded from. A copy of a
    model folder hashes the same; other weights saved under the same path do not."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            flat = t.reshape(-1)
            # bytes of any dtype (bf16 has no NumPy twin): view as unsigned integers of the same width
            as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
            digest.update(flat.view(as_int).numpy().tobytes())
    return digest.hexdigest()


def get_attr_path(root: Any, paths: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first dotted attribute path that exists under ``root``: ``(path, object)``."""
    for path in paths:
        obj: Any = root
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return path, obj
    return None


def pixels_to(pixels: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move a batch of model inputs to ``device``: a pixel tensor, or a dict of tensors for models
    that take more than pixels (SigLIP2 NaFlex: ``pixel_values``, ``pixel_attention_mask``,
    ``spatial_shapes``)."""
    if isinstance(pixels, dict):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in pixels.items()}
    return pixels.to(device, non_blocking=non_blocking)


def stack_pixels(items: Sequence[Any]) -> Any:
    """Stack per-image inputs (tensors, or dicts of tensors with equal shapes) into a batch."""
    if items and isinstance(items[0], dict):
        return {k: torch.stack([x[k] for x in items]) for k in items[0]}
    return torch.stack(list(items))


def batch_of_one(pixels: Any) -> Any:
    """One image's inputs as a batch of one."""
    if isinstance(pixels, dict):
        return {k: v[None] for k, v in pixels.items()}
    return pixels[None]


class _StopForward(Exception):
    """Raised by the deepest requested block's hook to end the forward pass early."""


def first_tensor(output: Any) -> torch.Tensor:
    """Block outputs are a Tensor (transformers 5.x, open_clip) or a tuple/ModelOutput (4.x)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        return first_tensor(output.to_tuple())
    raise TypeError(f"cannot find a tensor in a block output of type {type(output).__name__}")


@dataclass
class VisionEncoder:
    """A loaded vision model plus what saevlm needs to know about it.

    Attributes
    ----------
    name: the name the user gave (short name, hub id or path).
    source: what was actually loaded (hub id or absolute local path).
    backend: ``"transformers"`` or ``"open_clip"``.
    model: the ``nn.Module`` (eval mode).
    blocks: the encoder's transformer blocks, in order.
    projection_module: module whose forward output yields the pooled, projected embedding.
    projection_from_output: maps that module's output to ``[B, P]``.
    run: calls the model on a batch of inputs (the full forward used for ``post_projection``).
    preprocess: PIL image -> ``[3, H, W]`` float tensor (or, for SigLIP2 NaFlex, a dict of the
        tensors its forward takes for one image).
    has_cls: whether token 0 of a block's output is a CLS token.
    token_mask: batch inputs and token count -> ``[B, T]`` bool, False for tokens that are not
        image content and never enter a store, a mean pool or a random draw (DINOv3's register
        tokens, SigLIP2 NaFlex padding); None when every token counts.
    variable_tokens: whether the number of valid tokens differs between images (NaFlex).
    block_output: maps a block's raw output and the batch inputs to ``[B, T, D]`` in the order of
        the image's patches (Qwen2.5-VL's tower runs all images as one sequence, in windows); None
        when blocks already give ``[B, T, D]``.
    hidden_size, projection_dim: widths of block outputs and of the projection.
    info: extra provenance (class name, config summary).
    """

    name: str
    source: str
    backend: str
    model: nn.Module
    blocks: Sequence[nn.Module]
    projection_module: nn.Module | None
    projection_from_output: Callable[[Any], torch.Tensor]
    run: Callable[[torch.Tensor], Any]
    preprocess: Callable[[Any], torch.Tensor]
    has_cls: bool
    hidden_size: int
    projection_dim: int | None
    info: dict = field(default_factory=dict)
    token_mask: Callable[[Any, int], torch.Tensor] | None = None
    variable_tokens: bool = False
    block_output: Callable[[torch.Tensor, Any], torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device) -> "VisionEncoder":
        self.model.to(device)
        return self

    def provenance(self) -> dict:
        if "block0_sample" not in self.info:  # which weights: an SAE is refused on another tower
            self.info["block0_sample"] = block_sample(self.blocks[0])
        if "weights_sha256" not in self.info:  # which model: stores pair by weights, not by path
            self.info["weights_sha256"] = weights_sha256(self.model)
        return {"name": self.name, "source": self.source, "backend": self.backend,
                "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "projection_dim": self.projection_dim, "has_cls": self.has_cls, **self.info}

    # ------------------------------------------------------------------ hook points
    def resolve(self, attachment_point: str, layer: int | None) -> HookPoint:
        """Validate a (point, layer) request; negative layers count from the end."""
        if attachment_point == POST_PROJECTION:
            if self.projection_module is None:
                raise UserError(f"attachment_point {POST_PROJECTION}: model {self.name} has no "
                                f"pooled/projected output (e.g. SigLIP built without its head)", field="attachment_point")
            return HookPoint(POST_PROJECTION, -1)
        if attachment_point != POST_MLP_RESIDUAL:
            raise UserError(f"attachment_point {attachment_point!r}: unknown; expected one of "
                            f"{', '.join(ATTACHMENT_POINTS)}", field="attachment_point")
        n = self.num_layers
        if layer is None:
            raise UserError(f"layer is required for {POST_MLP_RESIDUAL}", field="layer")
        if not -n <= layer < n:
            raise UserError(f"layer {layer}: out of range for {self.name}, which has {n} blocks "
                            f"(valid: 0..{n - 1}, or -{n}..-1 counting from the end)", field="layer")
        return HookPoint(POST_MLP_RESIDUAL, layer % n)

    def valid_tokens(self, pixels: Any, num_tokens: int) -> torch.Tensor | None:
        """``[B, T]`` bool of the tokens that count (see ``token_mask``), or None for all."""
        return None if self.token_mask is None else self.token_mask(pixels, num_tokens)

    def output_dim(self, point: HookPoint) -> int:
        return self.projection_dim if point.attachment_point == POST_PROJECTION else self.hidden_size

    # ------------------------------------------------------------------ capture
    @torch.no_grad()
    def capture(self, pixel_values: Any, points: Sequence[HookPoint],
                stop_early: bool = True) -> dict[HookPoint, torch.Tensor]:
        """Run ONE forward pass and return every requested point's activations.

        Block points give ``[B, T, D]``, the projection gives ``[B, P]``. When no projection is
        requested and ``stop_early`` is set, the pass ends right after the deepest requested
        block (a hook raises a private exception), so later blocks cost nothing.
        """
        points = list(dict.fromkeys(points))
        captured: dict[HookPoint, torch.Tensor] = {}
        block_points = [p for p in points if p.attachment_point == POST_MLP_RESIDUAL]
        want_projection = any(p.attachment_point == POST_PROJECTION for p in points)
        deepest = max((p.layer for p in block_points), default=-1)
        stop_after = deepest if (stop_early and not want_projection) else None

        def block_hook(layer: int, wanted: list[HookPoint]):
            def hook(_module, _inputs, output):
                tensor = first_tensor(output)
                if self.block_output is not None:
                    tensor = self.block_output(tensor, pixel_values)
                for p in wanted:
                    captured[p] = tensor.detach()
                if layer == stop_after:
                    raise _StopForward
            return hook

        def projection_hook(_module, _inputs, output):
            captured[HookPoint(POST_PROJECTION, -1)] = self.projection_from_output(output).detach()

        with contextlib.ExitStack() as stack:
            for layer in sorted({p.layer for p in block_points}):
                wanted = [p for p in block_points if p.layer == layer]
                handle = self.blocks[layer].register_forward_hook(block_hook(layer, wanted))
                stack.callback(handle.remove)
            if want_projection:
                handle = self.projection_module.register_forward_hook(projection_hook)
                stack.callback(handle.remove)
            try:
                self.run(pixel_values)
            except _StopForward:
                pass
        missing = [p for p in points if p not in captured]
        if missing:
            raise RuntimeError(f"hooks did not fire for {missing}; the model's module layout is "
                               f"not what saevlm expects")
        return {p: captured[p] for p in points}


# ---------------------------------------------------------------------- token selection
@dataclass(frozen=True)
class TokenSelection:
    """How rows are taken from a block's ``[B, T, D]`` output (arXiv 2504.02821).

    ``mode`` is ``cls`` (token 0), ``mean`` (mean over all tokens), ``random_k`` (``k`` distinct
    tokens per image, drawn from ``numpy.random.default_rng([seed, image_index])`` so the draw
    depends only on the image, not on batching or on which process handles it), ``all``, or
    ``patches`` (every token but CLS, when ``skip_cls``, and registers: what saev's and
    visaebench's SAEs are trained on).
    Pooled points (``post_projection``) always give one row per image.
    """

    mode: str = "all"
    k: int = 0
    seed: int = 0
    skip_cls: bool = False  # patches: token 0 is a CLS token, not a patch

    def describe(self) -> dict:
        # a mean over the patches alone is another selection than the mean over every token
        out: dict = {"selection": "mean_patches" if self.mode == "mean" and self.skip_cls else self.mode}
        if self.mode == "random_k":
            out.update(k=self.k, seed=self.seed)
        return out

    def counted(self, valid_bt: torch.Tensor | None, b: int, t: int) -> torch.Tensor | None:
        """``[B, T]`` bool of the tokens this selection reads (valid tokens, less CLS when it skips
        CLS), or None for every token."""
        if not self.skip_cls:
            return valid_bt
        mask = torch.ones(b, t, dtype=torch.bool) if valid_bt is None else valid_bt.to(torch.bool).clone()
        mask[:, 0] = False
        return mask

    def rows_per_image(self, num_tokens: int) -> int:
        return {"cls": 1, "mean": 1, "random_k": self.k, "all": num_tokens,
                "patches": num_tokens - int(self.skip_cls)}[self.mode]

    def token_indices(self, image_index: int, num_tokens: int) -> "list[int]":
        import numpy as np

        if self.mode == "random_k":
            rng = np.random.default_rng([self.seed, int(image_index)])
            return sorted(int(t) for t in rng.choice(num_tokens, size=self.k, replace=False))
        if self.mode == "all":
            return list(range(num_tokens))
        if self.mode == "patches":
            return list(range(int(self.skip_cls), num_tokens))
        if self.mode == "cls":
            return [0]
        return [-1]

    def select(self, acts_btd: torch.Tensor, image_indices: Sequence[int],
               valid_bt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(rows [R, D], index [R, 2])`` where index holds (image index, token index).

        With ``valid_bt`` (``[B, T]`` bool; see ``VisionEncoder.token_mask``) only valid tokens
        are stored, averaged or drawn from; the token index stays the position in the model's
        own sequence (``hidden_states[l + 1][:, index]``)."""
        valid_bt = self.counted(valid_bt, acts_btd.shape[0], acts_btd.shape[1])
        if valid_bt is not None:
            return self._select_valid(acts_btd, image_indices, valid_bt)
        b, t, _ = acts_btd.shape
        images = torch.as_tensor(list(image_indices), dtype=torch.int64)
        if self.mode == "mean":
            return acts_btd.float().mean(dim=1), torch.stack([images, torch.full_like(images, -1)], 1)
        if self.mode == "cls":
            return acts_btd[:, 0], torch.stack([images, torch.zeros_like(images)], 1)
        if self.mode in ("all", "patches"):  # (patches without CLS went through the mask above)
            rows = acts_btd.reshape(b * t, -1)
            index = torch.stack([images.repeat_interleave(t), torch.arange(t).repeat(b)], 1)
            return rows, index
        if self.mode == "random_k":
            if self.k > t:
                raise UserError(f"random_k {self.k}: the layer has only {t} tokens per image", field="random_k")
            tok = torch.tensor([self.token_indices(int(i), t) for i in image_indices], dtype=torch.int64)
            rows = torch.gather(acts_btd, 1, tok.to(acts_btd.device)[..., None].expand(-1, -1, acts_btd.shape[2]))
            index = torch.stack([images.repeat_interleave(self.k), tok.reshape(-1)], 1)
            return rows.reshape(b * self.k, -1), index
        raise ValueError(self.mode)

    def _select_valid(self, acts_btd: torch.Tensor, image_indices: Sequence[int],
                      valid_bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid_bt = valid_bt.to(acts_btd.device, torch.bool)
        images = torch.as_tensor(list(image_indices), dtype=torch.int64)
        if self.mode == "mean":  # the mean over valid tokens only (padding and registers never count)
            weight = valid_bt.float()[..., None]
            rows = (acts_btd.float() * weight).sum(1) / weight.sum(1).clamp_min(1.0)
            return rows, torch.stack([images, torch.full_like(images, -1)], 1)
        if self.mode == "cls":
            if not bool(valid_bt[:, 0].all()):
                raise ValueError("token 0 is not a valid token; a model without CLS cannot use mode 'cls'")
            return acts_btd[:, 0], torch.stack([images, torch.zeros_like(images)], 1)
        if self.mode in ("all", "patches"):
            which = valid_bt.nonzero()  # row-major: image by image, tokens in order
            rows = acts_btd[which[:, 0], which[:, 1]]
            return rows, torch.stack([images[which[:, 0].cpu()], which[:, 1].cpu()], 1)
        if self.mode == "random_k":
            picks = []
            for row, image in enumerate(images.tolist()):
                positions = valid_bt[row].nonzero()[:, 0].cpu()
                if self.k > len(positions):
                    raise UserError(f"random_k {self.k}: image {image} has only {len(positions)} valid tokens",
                                    field="random_k")
                # the draw is over the image's valid tokens: the same image gives the same tokens
                picks.append(positions[self.token_indices(image, len(positions))])
            tok = torch.stack(picks)
            rows = torch.gather(acts_btd, 1, tok.to(acts_btd.device)[..., None].expand(-1, -1, acts_btd.shape[2]))
            index = torch.stack([images.repeat_interleave(self.k), tok.reshape(-1)], 1)
            return rows.reshape(len(images) * self.k, -1), index
        raise ValueError(self.mode)


def token_selection_from_flags(cls_only: bool, mean_pool: bool, random_k: int | None, seed: int,
                               has_cls: bool, model_name: str, warn: Callable[[str], None],
                               patches_only: bool = False) -> TokenSelection:
    """Map the authors' flags (and saevlm's --patches_only) to a :class:`TokenSelection` (at most
    one of them may be set)."""
    chosen = [f for f, on in (("--cls_only", cls_only), ("--mean_pool", mean_pool),
                              ("--random_k", random_k is not None), ("--patches_only", patches_only)) if on]
    if mean_pool and patches_only and len(chosen) == 2:  # the mean over the patches alone
        return TokenSelection("mean", skip_cls=has_cls)
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)}: choose at most one token selection")
    if random_k is not None:
        if random_k < 1:
            raise UserError(f"random_k {random_k}: expected a positive number of tokens per image", field="random_k")
        return TokenSelection("random_k", random_k, seed)
    if mean_pool:
        return TokenSelection("mean")
    if patches_only:
        return TokenSelection("patches", skip_cls=has_cls)
    if cls_only:
        if not has_cls:
            # The authors' convention for models without a CLS token (SigLIP): 2 random tokens.
            warn(f"{model_name} has no CLS token; --cls_only falls back to 2 random tokens per "
                 f"image (the paper's convention), recorded in the manifest")
            return TokenSelection("random_k", 2, seed)
        return TokenSelection("cls")
    return TokenSelection("all")
