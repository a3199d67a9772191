"""The top-images store: what ``extract --sae_path --mean_pool --top_k`` writes instead of codes
(a manifest plus ``top_images_<k>.npy`` and friends, see :mod:`saevlm.sae.pooled`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from saevlm.errors import UserError

TOP_IMAGES_FORMAT = "saevlm-top-images"


class TopImagesStore:
    """Top images per latent, no codes. Enough for ``visualize``, ``hierarchy``, ``uniqueness``
    and ``steering-score``."""

    def __init__(self, path, flag: str = "--activations_dir"):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{flag} {self.path}: unreadable manifest.json ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != TOP_IMAGES_FORMAT:
            raise UserError(f"{flag} {self.path}: not a top-images store")
        if not self.manifest.get("complete"):
            raise UserError(f"{flag} {self.path}: the extraction that writes it has not finished; "
                            f"rerun the same extract command to resume it")
        try:
            self.dim = int(self.manifest["dim"])
            self.num_rows = int(self.manifest["num_images"])
            self.k = int(self.manifest["k"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{flag} {self.path}/manifest.json: damaged ({type(e).__name__}: {e}); rerun "
                            f"the extract command with --overwrite") from None

    @property
    def dict_size(self) -> int:
        return self.dim

    @property
    def provenance(self) -> dict:
        return self.manifest["provenance"]

    def image_ids(self) -> np.ndarray:
        return np.load(self.path / "image_ids.npy")
