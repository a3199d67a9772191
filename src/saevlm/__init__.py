"""saevlm: sparse autoencoders on vision-language models.

Reproduces Pach et al., "Sparse Autoencoders Learn Monosemantic Features in Vision-Language
Models" (NeurIPS 2025). Importing the package is cheap (no torch): it only installs the
torchvision import fix of :mod:`saevlm._compat`, which must run before anything imports
torchvision.
"""

from saevlm._compat import install_torchvision_fix, install_transformers_gate

__version__ = "0.1.0"

install_torchvision_fix()
install_transformers_gate()
