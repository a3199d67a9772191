"""The architecture table: one :class:`ArchSpec` per ``--sae_model`` name, saying everything an
architecture means to saevlm: dictionary_learning's trainer and SAE classes (the reference
implementation the paper used), how its weights are laid out in a state dict, how codes come from
pre-activations (ReLU, top-k per row, a threshold, per-latent thresholds), whether its encoder
centres the input, whether saevlm's sparse engine trains it, and how it is written for SAELens and
sparsify. Loading (checkpoint.py), inference (inference.py), import / export (interop.py) and the
sparse engine read these fields instead of testing architecture names. Also here: the authors'
spellings and the recipe rules that depend only on the architecture (learning rate, Matryoshka
group sizes).

Adding an architecture is one row in :data:`ARCH_SPECS` (docs/architecture.md)."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, fields

from saevlm.errors import UserError


# Each architecture's own training options: the fields its dictionary_learning trainer reads beyond
# the shared ones (steps, lr, warm-up, decay, seed). `saevlm train` keeps them as flat flags (the
# authors' spellings); TrainConfig.sae_options(arch) gives the one that architecture reads, and a
# flag set that no chosen architecture reads is an error naming both.
@dataclass(frozen=True)
class ReLUOptions:
    l1_penalty: float  # the L1 weight of the sparsity loss


@dataclass(frozen=True)
class TopKOptions:
    k: int  # active latents per input
    auxk_alpha: float  # weight of the auxiliary loss on dead latents
    threshold_beta: float  # EMA decay of the inference threshold
    threshold_start_step: int  # step from which the threshold is tracked


@dataclass(frozen=True)
class MatryoshkaOptions(TopKOptions):
    group_fractions: tuple[float, ...]  # nested groups' shares of the dictionary


@dataclass(frozen=True)
class JumpReLUOptions:
    k: int  # the target L0
    sparsity_penalty: float
    bandwidth: float  # of the threshold's straight-through estimator


ArchOptions = ReLUOptions | TopKOptions | MatryoshkaOptions | JumpReLUOptions


@dataclass(frozen=True)
class ArchSpec:
    """What one SAE architecture is. Codes are ``act(pre)`` with
    ``pre = (x - c * b_dec) @ W_enc + b_enc`` (c = 1 when ``centred``)."""

    name: str
    trainer: tuple[str, str]  # dictionary_learning module, trainer class
    dictionary: tuple[str, str]  # dictionary_learning module, SAE class
    # "linear": encoder.weight [F, D], encoder.bias, decoder.weight [D, F] (torch Linear layers);
    # "matrix": W_enc [D, F], b_enc, W_dec [F, D]
    layout: str
    decoder_bias: str  # the state-dict key of b_dec
    centred: bool  # the encoder subtracts b_dec first
    # how codes come from pre-activations at inference: "relu"; "row_top_k" (the k largest of
    # relu(pre) per row); "threshold" (relu(pre) > one learned threshold; the batch top-k before
    # it is learned); "jump" (relu(pre) where pre > its latent's threshold)
    activation: str
    has_k: bool
    grouped: bool  # Matryoshka groups (group_sizes in the state dict)
    sparse_engine: bool  # trained by saevlm's sparse engine (else dictionary_learning's own update)
    saelens: str  # the SAELens architecture it is written as (threshold ones as "jumprelu")
    label: str = ""  # how tables name it
    # its own training options (the `train` flags its trainer reads beyond the shared ones)
    options: type = TopKOptions

    @property
    def config_fields(self) -> tuple[str, ...]:
        """The TrainConfig fields (flags) this architecture reads: its options' fields."""
        return tuple(f.name for f in fields(self.options))

    @property
    def threshold_shape(self) -> str:
        return {"threshold": "scalar", "jump": "per_latent"}.get(self.activation, "none")


ARCH_SPECS: dict[str, ArchSpec] = {s.name: s for s in (
    ArchSpec("standard", ("dictionary_learning.trainers.standard", "StandardTrainer"),
             ("dictionary_learning.dictionary", "AutoEncoder"), "linear", "bias", True, "relu",
             has_k=False, grouped=False, sparse_engine=False, saelens="standard", label="ReLU (L1)",
             options=ReLUOptions),
    ArchSpec("top_k", ("dictionary_learning.trainers.top_k", "TopKTrainer"),
             ("dictionary_learning.trainers.top_k", "AutoEncoderTopK"), "linear", "b_dec", True, "row_top_k",
             has_k=True, grouped=False, sparse_engine=True, saelens="topk", label="TopK",
             options=TopKOptions),
    ArchSpec("batch_top_k", ("dictionary_learning.trainers.batch_top_k", "BatchTopKTrainer"),
             ("dictionary_learning.trainers.batch_top_k", "BatchTopKSAE"), "linear", "b_dec", True, "threshold",
             has_k=True, grouped=False, sparse_engine=True, saelens="jumprelu", label="BatchTopK",
             options=TopKOptions),
    ArchSpec("matryoshka_batch_top_k", ("dictionary_learning.trainers.matryoshka_batch_top_k",
                                        "MatryoshkaBatchTopKTrainer"),
             ("dictionary_learning.trainers.matryoshka_batch_top_k", "MatryoshkaBatchTopKSAE"), "matrix", "b_dec",
             True, "threshold", has_k=True, grouped=True, sparse_engine=True, saelens="jumprelu",
             label="Matryoshka BatchTopK",
             options=MatryoshkaOptions),
    ArchSpec("jumprelu", ("dictionary_learning.trainers.jumprelu", "JumpReluTrainer"),
             ("dictionary_learning.dictionary", "JumpReluAutoEncoder"), "matrix", "b_dec", False, "jump",
             has_k=False, grouped=False, sparse_engine=False, saelens="jumprelu", label="JumpReLU",
             options=JumpReLUOptions),
)}
# --sae_model -> (trainer module, trainer class, dictionary module, dictionary class)
ARCHITECTURES: dict[str, tuple[str, str, str, str]] = {
    name: (*spec.trainer, *spec.dictionary) for name, spec in ARCH_SPECS.items()}


def spec(arch: str) -> ArchSpec:
    return ARCH_SPECS[arch]


# The authors' vendored dictionary_learning spells Matryoshka "Matroyshka" (module
# trainers/matroyshka_batch_top_k.py, classes MatroyshkaBatchTopKSAE / MatroyshkaBatchTopKTrainer,
# and their scripts pass --sae_model matroyshka_batch_top_k). The classes are the same as
# dictionary_learning 0.1.0's MatryoshkaBatchTopK* (same state-dict keys W_enc b_enc W_dec b_dec k
# threshold group_sizes, same encode), so their spellings are aliases wherever a name is read.
ARCH_ALIASES: dict[str, str] = {"matroyshka_batch_top_k": "matryoshka_batch_top_k"}
DICT_CLASS_TO_ARCH = {v[3]: k for k, v in ARCHITECTURES.items()} | {
    "MatroyshkaBatchTopKSAE": "matryoshka_batch_top_k"}
TRAINER_CLASS_TO_ARCH = {v[1]: k for k, v in ARCHITECTURES.items()} | {
    "MatroyshkaBatchTopKTrainer": "matryoshka_batch_top_k"}
ARCH_CHOICES = list(ARCHITECTURES) + list(ARCH_ALIASES)


def canonical_arch(name: str, field: str = "sae_model") -> str:
    """An architecture name as saevlm spells it (the authors' "matroyshka" spelling accepted)."""
    arch = ARCH_ALIASES.get(name, name)
    if arch not in ARCHITECTURES:
        raise UserError(f"{field} {name}: unknown architecture; expected one of {', '.join(ARCH_CHOICES)}", field=field)
    return arch


def default_lr(dict_size: int) -> float:
    """The authors' rule (arXiv 2504.02821): 2e-4 / sqrt(dict_size / 2^14)."""
    return 2e-4 / math.sqrt(dict_size / 2 ** 14)


def trainer_class(arch: str):
    mod, cls, _, _ = ARCHITECTURES[arch]
    return getattr(importlib.import_module(mod), cls)


def dict_class(arch: str):
    _, _, mod, cls = ARCHITECTURES[arch]
    return getattr(importlib.import_module(mod), cls)


def group_sizes(fractions: list[float], dict_size: int) -> list[int]:
    """The authors' (and dictionary_learning's) rule: int(f * n) for all groups but the last,
    which takes the rest."""
    sizes = [int(f * dict_size) for f in fractions[:-1]]
    return sizes + [dict_size - sum(sizes)]


# Matryoshka groups in one place: sizes (what a checkpoint stores), bounds (where each group starts
# and ends; the prefix widths SAELens calls matryoshka_widths are bounds[1:]) and a latent's group.
def group_bounds(sizes: list[int]) -> list[int]:
    """[0, s0, s0 + s1, ..., F]: group g holds latents bounds[g] to bounds[g + 1] - 1."""
    import itertools

    return [0, *itertools.accumulate(int(s) for s in sizes)]


def sizes_of_bounds(bounds: list[int]) -> list[int]:
    """The group sizes of ``bounds`` (or of prefix widths, with the 0 put in front)."""
    bounds = [int(b) for b in bounds]
    if bounds and bounds[0] != 0:
        bounds = [0, *bounds]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def group_of_latents(sizes: list[int] | None, num_latents: int):
    """The group of each latent (int64 array; all 0 without groups)."""
    import numpy as np

    if not sizes:
        return np.zeros(num_latents, dtype=np.int64)
    return np.repeat(np.arange(len(sizes)), [int(s) for s in sizes])


def resolve_group_sizes(fractions: list[float] | None, sae_sizes, num_latents: int) -> list[int] | None:
    """The Matryoshka groups of a store's latents: ``--group_fractions`` when given (they must sum
    to 1), else the SAE's own (its provenance), else None; either way they must cover every latent."""
    if fractions:
        if abs(sum(fractions) - 1) > 1e-6:
            raise UserError(f"group_fractions: must sum to 1 (they sum to {sum(fractions):.6g})",
                            field="group_fractions")
        sizes = group_sizes(list(fractions), num_latents)
    else:
        sizes = [int(s) for s in sae_sizes] if sae_sizes else None
    if sizes and sum(sizes) != num_latents:
        raise UserError(f"group sizes {sizes} sum to {sum(sizes)}, but there are {num_latents} neurons")
    return sizes
