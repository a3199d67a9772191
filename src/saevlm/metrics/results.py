"""Where metric results live and how commands find them: MS folders per embedder
(``<store>/ms_<embedder>/``), scores checked against the store they score, and the one-row-per-image
rule of image-level metrics."""

from __future__ import annotations

from saevlm.data import artifacts as A
from saevlm.data.stamps import check_fresh, check_result_files, store_schema


def embedder_slug(emb_store) -> str:
    """A folder-safe name of the embedding model: ``dinov2-base``, ``clip-vit-base-patch32``."""
    import re

    name = str(emb_store.provenance.model.name or "embeddings")
    name = name.rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "embeddings"


def find_ms_dir(store_path, ms_subdir: str | None, field: str, required: bool = False):
    """The folder holding a store's MS results: ``<store>/<ms_subdir>`` when named, else the single
    ``ms*/`` folder with a scores.npy (several: an error naming them, or None when not required)."""
    from pathlib import Path

    from saevlm.errors import UserError

    store_path = Path(store_path)
    if ms_subdir:
        d = Path(ms_subdir) if Path(ms_subdir).is_absolute() else store_path / ms_subdir
        if required and not (d / A.MS_SCORES).is_file():
            raise UserError(f"ms_subdir {ms_subdir}: no scores.npy in {d}; run saevlm ms first", field="ms_subdir")
        return d if (d / A.MS_SCORES).is_file() else None
    found = sorted(d for d in store_path.glob("ms*") if (d / A.MS_SCORES).is_file())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(d.name for d in found)
        if required:
            raise UserError(f"{field} {store_path}: holds MS results for several embedders ({names}); "
                            f"choose one with --ms_subdir", field=field)
        print(f"note: {field} {store_path}: MS results for several embedders ({names}); pass --ms_subdir "
              f"to use one", file=__import__("sys").stderr)
        return None
    if required:
        raise UserError(f"{field} {store_path}: no MS results (ms*/scores.npy); run saevlm ms first", field=field)
    return None


def load_ms_scores(ms_dir, num_neurons: int, field: str, store=None):
    """scores.npy of an MS folder, checked against the number of neurons it should score (and,
    with ``store``, refused when computed from an earlier version of that store)."""
    import numpy as np

    from saevlm.errors import UserError

    f = ms_dir / A.MS_SCORES
    if store is not None:
        refresh = f"saevlm ms --activations_dir {store.path} --embeddings_path ... --overwrite"
        if not (ms_dir / A.MS_JSON).is_file() and store_schema(store) >= 2:
            raise UserError(f"{field} {ms_dir}: no {A.MS_JSON} beside {A.MS_SCORES} (it records what the scores "
                            f"were computed from); refresh it with `{refresh}`", field=field)
        check_fresh(source_of_ms(ms_dir), store, str(ms_dir / A.MS_JSON), refresh)
        check_result_files(ms_dir, ms_dir / A.MS_JSON, [A.MS_SCORES], store, refresh)
    try:
        scores = np.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{field} {f}: unreadable ({e}); rerun saevlm ms", field=field) from None
    if scores.ndim != 1 or len(scores) != num_neurons:
        raise UserError(f"{field} {f}: {scores.shape} scores, expected one per neuron ({num_neurons}); "
                        f"it belongs to another store, rerun saevlm ms", field=field)
    return scores


def check_one_row_per_image(store, field: str) -> None:
    from saevlm.errors import UserError

    n_img = int(store.manifest.num_images if store.manifest.num_images is not None else store.num_rows)
    if store.num_rows != n_img:
        raise UserError(f"{field} {store.path}: {store.num_rows} rows for {n_img} images (token "
                        f"selection {store.provenance.tokens.selection!r}); this metric needs one row per image "
                        f"(extract with --cls_only or --mean_pool)", field=field)


def source_of_ms(ms_dir) -> A.SourceStamp | None:
    """The activations' stamp an MS folder recorded (ms.json ``inputs.activations``)."""
    import json

    try:
        data = json.loads((ms_dir / A.MS_JSON).read_text())
    except (OSError, ValueError):
        return None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    acts = inputs.get("activations") if isinstance(inputs, dict) else None
    try:
        return A.SourceStamp.from_json(acts, "ms.json inputs.activations") if isinstance(acts, dict) else None
    except A.ResultError:
        return None
