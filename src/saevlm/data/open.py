"""Open any saevlm store by what its manifest says it is: activations / embeddings, SAE codes,
or top images per latent."""

from __future__ import annotations

import json
from pathlib import Path

from saevlm.errors import UserError


def open_any_store(path, field: str = "activations_dir", *, allow_top_images: bool = False,
                   allow_incomplete: bool = False, allow_nonfinite: bool = False):
    """An :class:`ActivationStore`, :class:`CodeStore` or (when allowed) :class:`TopImagesStore`."""
    from saevlm.data.codes import CODES_FORMAT, CodeStore
    from saevlm.data.store import MANIFEST, ActivationStore, resolve_store_path
    from saevlm.data.topimages import TOP_IMAGES_FORMAT, TopImagesStore

    path = resolve_store_path(path, field)
    manifest = Path(path) / MANIFEST
    fmt = None
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            fmt = data.get("format") if isinstance(data, dict) else None
        except (OSError, json.JSONDecodeError):
            fmt = None  # the store class below says what is wrong with it
    if fmt == TOP_IMAGES_FORMAT:
        if not allow_top_images:
            raise UserError(f"{field} {path}: holds only top images per latent (extract --top_k), "
                            f"no activations or codes", field=field)
        return TopImagesStore(path, field=field)
    cls = CodeStore if fmt == CODES_FORMAT else ActivationStore
    return cls(path, field=field, allow_incomplete=allow_incomplete, allow_nonfinite=allow_nonfinite)


def store_manifest(path: Path, field: str = "store"):
    """The ``manifest.json`` at ``path`` of any kind of store (activations, codes, top images) as
    the one typed :class:`~saevlm.data.manifest.Manifest`; a UserError naming the file otherwise."""
    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore, parse_manifest, read_manifest
    from saevlm.data.topimages import TopImagesStore

    m = read_manifest(path, field)
    payload_keys = {cls.FORMAT: cls.PAYLOAD_KEYS for cls in (ActivationStore, CodeStore, TopImagesStore)}
    if m.get("format") not in payload_keys:
        raise UserError(f"{field} {path}: format {m.get('format')!r} is not a saevlm store's "
                        f"({', '.join(payload_keys)})", field=field)
    return parse_manifest(m, path, field, m["format"], payload_keys[m["format"]])
