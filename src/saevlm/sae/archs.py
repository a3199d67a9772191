"""The architecture table: each ``--sae_model`` name -> dictionary_learning's trainer and SAE
classes (the reference implementation the paper used), the authors' spellings, and the recipe
rules that depend only on the architecture (learning rate, Matryoshka group sizes).

Adding an architecture is one row in :data:`ARCHITECTURES` (docs/architecture.md)."""

from __future__ import annotations

import importlib
import math

from saevlm.errors import UserError

# --sae_model -> (trainer module, trainer class, dictionary module, dictionary class)
ARCHITECTURES: dict[str, tuple[str, str, str, str]] = {
    "standard": ("dictionary_learning.trainers.standard", "StandardTrainer",
                 "dictionary_learning.dictionary", "AutoEncoder"),
    "top_k": ("dictionary_learning.trainers.top_k", "TopKTrainer",
              "dictionary_learning.trainers.top_k", "AutoEncoderTopK"),
    "batch_top_k": ("dictionary_learning.trainers.batch_top_k", "BatchTopKTrainer",
                    "dictionary_learning.trainers.batch_top_k", "BatchTopKSAE"),
    "matryoshka_batch_top_k": ("dictionary_learning.trainers.matryoshka_batch_top_k",
                               "MatryoshkaBatchTopKTrainer",
                               "dictionary_learning.trainers.matryoshka_batch_top_k",
                               "MatryoshkaBatchTopKSAE"),
    "jumprelu": ("dictionary_learning.trainers.jumprelu", "JumpReluTrainer",
                 "dictionary_learning.dictionary", "JumpReluAutoEncoder"),
}
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
