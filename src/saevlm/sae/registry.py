"""Old home of the SAE architecture table, checkpoint loading and inference; they now live in
:mod:`saevlm.sae.archs`, :mod:`saevlm.sae.checkpoint` and :mod:`saevlm.sae.inference`. These
names stay importable from here for code written against earlier versions."""

from saevlm.sae.archs import (ARCH_ALIASES, ARCH_CHOICES, ARCHITECTURES, DICT_CLASS_TO_ARCH,  # noqa: F401
                              TRAINER_CLASS_TO_ARCH, canonical_arch, default_lr, dict_class, group_sizes,
                              trainer_class)
from saevlm.sae.checkpoint import LoadedSAE, load_sae, resolve_checkpoint  # noqa: F401
from saevlm.sae.inference import encode_batch, encode_codes  # noqa: F401
