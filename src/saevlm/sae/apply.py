"""Applying a loaded SAE to activations: the encoder function, the check that an SAE belongs to
the activations it is given, and what a code store records about its SAE. Used by ``encode`` and
by ``extract --sae_path``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import Provenance


def make_encoder(sae, device, field: str = "sae_path"):
    """numpy float32 [n, d] -> dense torch codes [n, K] on CPU, at inference settings."""
    import torch

    from saevlm.sae.inference import encode_batch

    def encode(acts_nd):
        with torch.no_grad():
            x = torch.as_tensor(acts_nd, dtype=torch.float32).to(device)
            return encode_batch(sae, x).float().cpu()
    return encode


def check_sae_matches(sae, provenance: Provenance, width: int | None, allow_mismatch: bool, what: str) -> None:
    """Refuse an SAE whose width, or recorded model / hook, differs from the activations'
    (``width``: the activations' dimension)."""
    if width is not None and sae.activation_dim != width:
        raise UserError(f"sae_path {sae.path}: the SAE takes {sae.activation_dim}-d inputs, {what} "
                        f"has {width}-d activations", field="sae_path")
    trained_on = sae.trained_on
    if trained_on is None or allow_mismatch:
        return
    note = tokens_note(trained_on.tokens.selection, provenance.tokens.selection)
    if note:
        import sys
        print(f"note: --sae_path {sae.path}: {note}", file=sys.stderr)
    diff = trained_on.compatible_with(provenance, aspects=("model", "hook"))
    if diff is not None:
        a, b = trained_on.to_json()[diff.aspect], provenance.to_json()[diff.aspect]
        if diff.aspect == "model":
            a, b = diff.ours, diff.theirs
        raise UserError(f"sae_path {sae.path}: trained on {diff.aspect} {a!r}, but {what} is {diff.aspect} "
                        f"{b!r}; pass --allow_mismatch to encode anyway", field="sae_path")


# rows a token-level SAE was trained on -> the selections whose rows are of the same kind (the
# mean-pooled codes of a selection encode its tokens one by one, as the authors' protocol does)
_SAME_TOKENS = {"patches": ("patches", "mean_patches", "random_k"), "cls": ("cls",)}


def tokens_note(trained: str | None, given: str | None) -> str | None:
    """A note when an SAE meets tokens of another kind than it was trained on (a patch-token SAE
    on CLS rows, a CLS SAE on patches): allowed, but its codes there are out of distribution."""
    if not trained or not given or trained not in _SAME_TOKENS or given in _SAME_TOKENS[trained]:
        return None
    return (f"trained on {trained} tokens, given {given} rows (allowed; its codes on tokens it never saw "
            f"are out of its training distribution)")


def dataset_files(store) -> dict:
    """The source store's labels.npy / classes.json (checked against its manifest: checksums,
    label dtype, shape and range), to be copied beside the codes."""
    from saevlm.data import artifacts as A

    out: dict = {"extra_files": {}, "extra_json": {}}
    labels, classes = store.labels(), store.classes()
    if labels is not None:
        out["extra_files"][A.LABELS] = labels
    if classes is not None:
        out["extra_json"][A.CLASSES] = classes
    return out


def code_provenance(provenance: Provenance, sae) -> Provenance:
    """The activations' provenance plus the SAE that encoded them."""
    return provenance.with_sae(sae.describe())
