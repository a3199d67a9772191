"""``saevlm import-sae``: an SAE saved by another library -> a saevlm trainer folder.

The source is read in its library's conventions (:mod:`saevlm.sae.interop`), every fold applied
(input normalisation, centring, decoder-norm rescaling), and written as ``ae.pt`` + ``config.json``
(+ ``weights.json``): the layout ``encode``, ``extract --sae_path``, ``ms``, ``top-images``,
``explore`` and ``steer`` take as ``--sae_path``. What the checkpoint does not say (which model,
hook and tokens it was trained on) is given with flags and recorded as the SAE's provenance, so the
model and hook checks of every command apply to it as to an SAE trained here.

    saevlm import-sae --sae_path runs/saelens_sae --output_dir runs/imported/trainer_0 \\
        --model_name openai/clip-vit-large-patch14-336 --layer 22 --tokens cls
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from saevlm.data import artifacts as A
from saevlm.commandline import CommandConfig, opt
from saevlm.errors import UserError


@dataclass(frozen=True, kw_only=True)
class ImportSAEConfig(CommandConfig):
    """`saevlm import-sae`: an SAE from another library -> a saevlm trainer folder."""

    COMMAND: ClassVar[str] = "import-sae"

    sae_path: str = opt()
    """the source: a folder or file, or hf:<owner>/<repo>[/<subfolder>] (downloaded through huggingface_hub)"""
    format: str = opt("auto", choices=["auto", "dictionary_learning", "saelens", "sparsify", "saev", "visaebench",
                                       "overcomplete"])
    """the source's library (default: %(default)s, from the files the folder holds)"""
    output_dir: str = opt()
    """the trainer folder to write (ae.pt, config.json, weights.json, imported.json)"""
    model_name: str | None = opt(None, group="what the checkpoint does not say")
    """the vision encoder the SAE was trained on (as extract takes it); loaded once to check the SAE's width
    at the hook and recorded, so commands refuse stores of another model. Without it nothing is checked"""
    layer: int | None = opt(None, group="what the checkpoint does not say")
    """the block whose output the SAE reads (needed with --model_name at post_mlp_residual; in a saev
    multi-checkpoint repo it also picks the checkpoints of that layer)"""
    l0: float | None = opt(None, group="picking one checkpoint of a saev repo (manifest.jsonl)")
    """the checkpoint of --layer whose recorded L0 is nearest this"""
    run_id: str | None = opt(None, group="picking one checkpoint of a saev repo (manifest.jsonl)")
    """the checkpoint with this run_id"""
    attachment_point: str = opt("post_mlp_residual", choices=["post_mlp_residual", "post_projection"],
                                group="what the checkpoint does not say")
    """(default: %(default)s)"""
    tokens: str | None = opt(None, choices=["cls", "mean", "all", "patches"], group="what the checkpoint does not say")
    """the tokens the SAE was trained on (recorded; patches = every token but CLS and registers)"""
    input_norm: str | None = opt(None, group="what the checkpoint does not say")
    """normalisation the source applied to its inputs outside the checkpoint, folded into the weights:
    none, scalar:S (x / S) or stats:FILE (an .npz / .pt / .json holding mean [D] and std, a scalar or [D]).
    Required for visaebench (its mean and std come from its evaluation data); default: none"""
    sae_class: str | None = opt(None, choices=["SAE", "TopKSAE", "BatchTopKSAE", "JumpSAE"],
                                group="overcomplete (its state dicts hold no configuration)")
    """the overcomplete class the state dict belongs to (JumpSAE is told by its thresholds)"""
    k: int | None = opt(None, group="overcomplete (its state dicts hold no configuration)")
    """its top_k (TopKSAE, BatchTopKSAE)"""
    threshold: float | None = opt(None, group="overcomplete (its state dicts hold no configuration)")
    """BatchTopKSAE's running_threshold (an attribute, not in the state dict)"""
    dictionary_normalization: str = opt("l2", choices=["l2", "max_l2", "l1", "max_l1", "identity"],
                                        group="overcomplete (its state dicts hold no configuration)")
    """the normalisation of its DictionaryLayer (default: %(default)s, overcomplete's)"""
    check_activations: str | None = opt(None)
    """an activation store of the hook the SAE reads: encode a sample of it and print R2, L0 and the dead
    fraction, warning when R2 < 0.5 or L0 is far from the one the source records (the signature of a
    wrong fold, hook or normalisation)"""
    check_rows: int = opt(4096)
    """rows of --check_activations to encode, spread over the store (default: %(default)s)"""
    overwrite: bool = opt(False)
    """replace an existing trainer folder at --output_dir"""


CONFIG = ImportSAEConfig

IMPORTED_JSON = "imported.json"


def resolve_source(spec: str):
    """(local folder or file, fetch) for ``--sae_path``: a local path as it is;
    ``hf:<owner>/<repo>[/<subfolder>]`` through huggingface_hub's cache. At a repo's root only its
    top-level files are downloaded (a saev repo's manifest.jsonl, not its dozens of checkpoints);
    ``fetch(relative path)`` gives one more file of the source (the checkpoint a manifest picks)."""
    if not spec.startswith("hf:"):
        p = Path(spec).expanduser()
        if not p.exists():
            raise UserError(f"sae_path {spec}: no such file or directory (a hub repo is written "
                            f"hf:<owner>/<repo>[/<subfolder>])", field="sae_path")
        return p, lambda rel: p / rel
    parts = spec[3:].strip("/").split("/")
    if len(parts) < 2:
        raise UserError(f"sae_path {spec}: expected hf:<owner>/<repo>[/<subfolder>]", field="sae_path")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download, snapshot_download

    def hub(call, what: str):
        try:
            return Path(call())
        except Exception as err:  # noqa: BLE001 - any hub failure is one line
            raise UserError(f"sae_path {spec}: could not download {what} of {repo} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160] if str(err) else ''}). Offline (HF_HUB_OFFLINE=1) only "
                            f"what is already in the cache can be read: download it once online, or pass a local "
                            f"folder", field="sae_path") from None

    if sub:
        root = hub(lambda: snapshot_download(repo, allow_patterns=[f"{sub}/*"]), sub) / sub
    else:  # top-level files only ("*/*" matches anything inside a folder)
        root = hub(lambda: snapshot_download(repo, ignore_patterns=["*/*"]), "the top-level files")
    return root, lambda rel: hub(lambda: hf_hub_download(repo, f"{sub}/{rel}" if sub else rel), rel)


def source_record(path: Path) -> dict:
    """Size and SHA-256 of every file of the source (what was imported, byte for byte)."""
    import hashlib

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = {}
    for f in files[:64]:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.name if path.is_file() else f.relative_to(path).as_posix()] = {"bytes": f.stat().st_size,
                                                                              "sha256": h.hexdigest()}
    return out


def provenance_for(args: ImportSAEConfig, input_dim: int) -> tuple[dict | None, str]:
    """The provenance to record (None without --model_name) and a line saying what was checked."""
    if args.model_name is None:
        # (a hook recorded without its model would make every store look like another model's)
        return None, ("no --model_name: the SAE records no model or hook, so no command can check that a store "
                      "belongs to it" + (f"; its tokens ({args.tokens}) are recorded" if args.tokens else ""))
    from saevlm.models import load_encoder
    from saevlm.models.base import POST_PROJECTION

    if args.attachment_point != POST_PROJECTION and args.layer is None:
        raise UserError(f"layer: required with --model_name at {args.attachment_point} (the block whose output "
                        f"the SAE reads)", field="layer")
    encoder = load_encoder(args.model_name)
    point = encoder.resolve(args.attachment_point, args.layer if args.attachment_point != POST_PROJECTION else -1)
    width = encoder.output_dim(point)
    if width != input_dim:
        raise UserError(f"sae_path {args.sae_path}: the SAE takes {input_dim}-d inputs, but {args.model_name} "
                        f"has {width}-d activations at {point.slug}", field="sae_path")
    tokens = {"selection": args.tokens} if args.tokens else {}
    prov = {"model": encoder.provenance(), "hook": {"attachment_point": point.attachment_point, "layer": point.layer},
            "tokens": tokens, "dataset": {}}
    return prov, f"checked: {input_dim}-d inputs = {encoder.name} at {point.slug}"


def check_on_activations(sae, store_path: str, rows: int, recorded_l0: float | None) -> dict:
    """R2, L0 and dead fraction of ``sae`` on up to ``rows`` rows of a store (evenly spaced blocks),
    with warnings for the signatures of a wrong import."""
    import numpy as np
    import torch

    from saevlm.data.store import ActivationStore
    from saevlm.sae.inference import encode_batch

    store = ActivationStore(store_path, field="check_activations")
    if store.dim != sae.activation_dim:
        raise UserError(f"check_activations {store_path}: {store.dim}-d activations, the SAE takes "
                        f"{sae.activation_dim}-d inputs", field="check_activations")
    blocks = max(1, min(16, rows // 64))
    size = max(1, min(rows, store.num_rows) // blocks)
    starts = np.linspace(0, max(store.num_rows - size, 0), blocks).astype(int)
    x = torch.as_tensor(np.concatenate([store.read(int(a), int(a) + size) for a in sorted(set(starts))]),
                        dtype=torch.float32)
    with torch.no_grad():
        codes = encode_batch(sae, x)
        recon = sae.ae.decode(codes)
    sst = float(((x - x.mean(0)) ** 2).sum())
    r2 = 1 - float(((x - recon) ** 2).sum()) / sst if sst > 0 else None
    l0 = float((codes != 0).sum(1).float().mean())
    dead = float(((codes != 0).sum(0) == 0).float().mean())
    warnings = []
    if r2 is not None and r2 < 0.5:
        warnings.append(f"R2 {r2:.3f} < 0.5: a wrong hook, tokens or --input_norm give such reconstructions")
    if recorded_l0 and l0 > 0 and abs(np.log(l0 / recorded_l0)) > np.log(2):
        warnings.append(f"L0 {l0:.1f} is far from the {recorded_l0:g} the source records")
    return {"store": str(Path(store_path).resolve()), "rows": int(len(x)), "r2": r2, "l0": l0,
            "dead_fraction": dead, "recorded_l0": recorded_l0, "warnings": warnings,
            "normalized_mse": None if r2 is None else 1 - r2}


def _check_output(args: ImportSAEConfig, out: Path) -> None:
    """The output folder is new, empty, or a trainer folder that --overwrite replaces: never
    another folder's files."""
    from saevlm.data.atomic import check_not_own_input

    check_not_own_input(args.output_dir, "output_dir", [("sae_path", None if args.sae_path.startswith("hf:")
                                                          else args.sae_path)])
    if out.is_dir() and any(out.iterdir()):
        if not (out / A.AE_PT).exists():
            raise UserError(f"output_dir {out}: not empty and not a trainer folder (no ae.pt); choose an empty or "
                            f"new folder", field="output_dir")
        if not args.overwrite:
            raise UserError(f"output_dir {out}: already holds an SAE (ae.pt); pass --overwrite to replace it",
                            field="output_dir")
    elif out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out}: a file, not a folder", field="output_dir")


def _check_format_flags(args: ImportSAEConfig, fmt: str) -> None:
    """The flags a format needs, and refuse those it does not read."""
    from saevlm.sae import interop

    if fmt in interop.NEEDS_INPUT_NORM and args.input_norm is None:
        raise UserError(f"input_norm: required for a {fmt} SAE, whose inputs were normalised by statistics kept "
                        f"outside the checkpoint: pass --input_norm stats:FILE (mean [D], std) or, if its "
                        f"inputs were raw, --input_norm none", field="input_norm")
    if fmt in interop.NEEDS_TOKENS and args.tokens is None:
        raise UserError(f"tokens: required for a {fmt} SAE (trained on patch tokens, usually without CLS): pass "
                        f"--tokens patches (or the tokens it was trained on)", field="tokens")
    given = [flag for flag, value in (("--sae_class", args.sae_class), ("--k", args.k),
                                      ("--threshold", args.threshold)) if value is not None]
    if fmt != "overcomplete" and given:
        raise UserError(f"{given[0][2:]}: only for an overcomplete state dict; a {fmt} checkpoint says it itself",
                        field=given[0][2:])


def _read_weights(args: ImportSAEConfig, src: Path, fmt: str, fetch) -> tuple[Any, Path, dict | None]:
    """The source's weights in saevlm's conventions, the file read and (saev) the manifest row picked."""
    from saevlm.sae import interop

    picked = None
    if fmt == "saev" and src.is_dir() and (src / "manifest.jsonl").is_file():
        src, picked = interop.pick_saev_checkpoint(src, args.layer, args.l0, args.run_id, fetch)
    elif args.l0 is not None or args.run_id is not None:
        raise UserError("l0: only for a saev multi-checkpoint repo (manifest.jsonl)", field="l0")
    if fmt == "dictionary_learning" and src.is_dir() and not (src / A.AE_PT).is_file():
        raise UserError(f"sae_path {src}: no ae.pt (a dictionary_learning trainer folder)", field="sae_path")
    if fmt not in ("dictionary_learning", "saev", "overcomplete") and not src.is_dir():
        raise UserError(f"sae_path {src}: a {fmt} SAE is a folder (cfg.json + weights), not a file", field="sae_path")
    if fmt == "overcomplete":
        weights = interop.read_overcomplete(src, args.sae_class, args.k, args.threshold, args.dictionary_normalization)
    else:
        weights = interop.READERS[fmt](src)
    weights.check_finite(str(src))
    return weights, src, picked


def _source_notes(fmt: str, weights) -> list[str]:
    """What a user should know about how the source's conventions were folded."""
    notes = []
    if fmt == "saev" and weights.arch == "top_k":
        notes.append("saev's TopK keeps the k largest pre-activations even when negative; saevlm's applies ReLU "
                     "first, so these codes are ReLU of saev's (equal wherever the k-th largest is positive)")
    if fmt == "saev" and weights.centred:
        notes.append(f"saev checkpoint of schema {weights.metadata.get('saev_schema')}: its encoder subtracted "
                     f"b_dec first (saev did until July 2025); folded as such")
    return notes


def _trainer_config(args: ImportSAEConfig, weights, dict_class: str, fmt: str, src: Path, picked: dict | None,
                    norm_text: str, notes: list[str], provenance: dict | None) -> tuple[dict, dict]:
    """(config.json, imported.json) of the trainer folder."""
    from saevlm.sae import interop
    from saevlm.sae.archs import spec
    from saevlm.sae.checkpoint import WEIGHTS_JSON

    d, f = weights.dims
    trainer = {"dict_class": dict_class, "activation_dim": d, "dict_size": f}
    if weights.k is not None:
        trainer["k"] = int(weights.k)
    if weights.group_sizes:
        trainer["group_sizes"] = list(weights.group_sizes)
    record = {"format": fmt, "source": args.sae_path, "files": source_record(src), "tokens": args.tokens,
              **({"manifest_row": picked} if picked else {}),
              "arch": weights.arch, "activation": interop.ACTIVATIONS[spec(weights.arch).activation],
              "folds": {"input_norm": norm_text, "centred_in_source": weights.centred},
              "source_metadata": weights.metadata, "notes": notes}
    config = {"trainer": trainer,
              "saevlm": {"arch": weights.arch, "weights_record": WEIGHTS_JSON, "imported": record,
                         **({"provenance": provenance} if provenance is not None else {})}}
    return config, record


def _check_written_codes(folder: Path, weights, src: Path):
    """The written SAE, loaded as every command loads it, gives the source's codes; returns it."""
    import torch

    from saevlm.sae.checkpoint import load_sae
    from saevlm.sae.inference import encode_batch

    loaded = load_sae(str(folder))
    d, _ = weights.dims
    x = torch.randn(64, d, generator=torch.Generator().manual_seed(0)) * weights.W_dec.norm(dim=1).mean() \
        + weights.b_dec
    with torch.no_grad():
        got, want = encode_batch(loaded, x), weights.encode(x)
    # (a code right at a threshold may flip by rounding; a wrong fold changes most of them)
    off = float(((got - want).abs() > 1e-4 * (float(want.abs().max()) or 1.0)).float().mean())
    if off > 0.01:
        raise UserError(f"sae_path {src}: the written SAE does not reproduce the source's codes ({off:.1%} "
                        f"differ); please report this", field="sae_path")
    return loaded


def _check_and_report(args: ImportSAEConfig, loaded, weights, picked: dict | None) -> dict:
    """--check_activations: R2, L0 and dead fraction on real activations, printed with warnings."""
    picked = picked or {}
    recorded_l0 = picked.get("l0") or (weights.k if weights.arch == "top_k" else None)
    check = check_on_activations(loaded, args.check_activations, args.check_rows,
                                 float(recorded_l0) if recorded_l0 else None)
    r2_text = f"{check['r2']:.3f}" if check["r2"] is not None else "undefined (constant rows)"
    recorded = "".join(f"; the source records {key} {picked[key]}" for key in ("l0", "mse")
                       if picked.get(key) is not None)
    print(f"import-sae: on {check['rows']} rows of {args.check_activations}: R2 {r2_text}, L0 "
          f"{check['l0']:.1f}, dead {check['dead_fraction']:.1%}{recorded}", file=sys.stderr)
    for warning in check["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return check


def run(args: ImportSAEConfig) -> int:
    import shutil
    import tempfile

    from saevlm.data.atomic import atomic_save_torch, atomic_write_json, ensure_writable_dir
    from saevlm.sae import interop
    from saevlm.sae.checkpoint import WEIGHTS_JSON, record_weights

    out = Path(args.output_dir)
    _check_output(args, out)
    mean, std, norm_text = interop.read_input_norm(args.input_norm)  # a bad flag before any reading
    src, fetch = resolve_source(args.sae_path)
    fmt = interop.detect_format(src) if args.format == "auto" else args.format
    _check_format_flags(args, fmt)
    weights, src, picked = _read_weights(args, src, fmt, fetch)
    notes = _source_notes(fmt, weights)
    weights = interop.fold_input_norm(weights, mean, std)
    d, f = weights.dims
    provenance, checked = provenance_for(args, d)
    dict_class, state = interop.dictionary_learning_state(weights)
    config, record = _trainer_config(args, weights, dict_class, fmt, src, picked, norm_text, notes, provenance)
    # Everything is written into a fresh folder beside the output and renamed into place at the end:
    # an interrupted import leaves no half-written trainer folder.
    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."), "output_dir")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        atomic_save_torch(tmp / A.AE_PT, {k: v.contiguous() for k, v in state.items()})
        record_weights(tmp, tmp / A.AE_PT)
        atomic_write_json(tmp / A.TRAINER_CONFIG, config)
        atomic_write_json(tmp / IMPORTED_JSON, record)
        loaded = _check_written_codes(tmp, weights, src)
        if args.check_activations:
            record["check"] = _check_and_report(args, loaded, weights, picked)
            atomic_write_json(tmp / IMPORTED_JSON, record)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"import-sae: {fmt} {weights.arch} SAE, {d} -> {f} latents"
          + (f", k {weights.k}" if weights.k is not None else "")
          + (f", groups {weights.group_sizes}" if weights.group_sizes else "")
          + f"; input normalisation folded: {norm_text}", file=sys.stderr)
    print(f"import-sae: {checked}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}/ae.pt, config.json, {WEIGHTS_JSON}, {IMPORTED_JSON} (use it as --sae_path {out})")
    return 0
