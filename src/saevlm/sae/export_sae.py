"""``saevlm export-sae``: a saevlm SAE -> the files SAELens or sparsify load.

    saevlm export-sae --sae_path runs/demo/sae/trainer_1 --format saelens --output_dir out/sae
    python -c "from sae_lens import SAE; SAE.load_from_disk('out/sae')"

SAELens: ``cfg.json`` + ``sae_weights.safetensors`` as its ``save_model`` writes them (BatchTopK and
Matryoshka as ``jumprelu`` with the threshold repeated per latent, ``k`` and the cumulative group
widths in ``metadata.training_architecture_details``, as SAELens saves its own); the model, hook,
tokens and saevlm's training facts in ``metadata``. sparsify: ``cfg.json`` + ``sae.safetensors``
for per-row TopK SAEs. With ``--hub_card`` a ``README.md`` model card, and for a run folder of
several SAEs one sub-folder per SAE plus ``manifest.jsonl`` (one row per SAE), so that
``huggingface-cli upload <repo> DST`` publishes a browsable release.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from saevlm.data import artifacts as A
from saevlm.commandline import CommandConfig, opt
from saevlm.errors import UserError


@dataclass(frozen=True, kw_only=True)
class ExportSAEConfig(CommandConfig):
    """`saevlm export-sae`: a saevlm SAE -> SAELens or sparsify files (and a model card)."""

    COMMAND: ClassVar[str] = "export-sae"

    sae_path: str = opt()
    """a trainer folder (ae.pt + config.json), or a run folder of trainer_<i>/ folders (each exported)"""
    format: str = opt("saelens", choices=["saelens", "sparsify"])
    """the library to write for (default: %(default)s)"""
    output_dir: str = opt()
    """where the files go (a run folder: one sub-folder per SAE)"""
    hub_card: bool = opt(False)
    """also write README.md (a model card) and, for several SAEs, manifest.jsonl"""
    overwrite: bool = opt(False)
    """replace files already at --output_dir"""


CONFIG = ExportSAEConfig

WEIGHTS_FILE = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors"}


def trainer_dirs(path: Path) -> list[Path]:
    if (path / A.AE_PT).is_file():
        return [path]
    if path.is_dir():
        found = sorted((d for d in path.iterdir() if (d / A.AE_PT).is_file()), key=lambda d: d.name)
        if found:
            return found
    raise UserError(f"sae_path {path}: neither a trainer folder (ae.pt + config.json) nor a run folder of "
                    f"them", field="sae_path")


def saevlm_facts(sae) -> dict[str, Any]:
    """What saevlm knows about an SAE, for the exported metadata and the model card."""
    from saevlm.data.manifest import Provenance

    ours = sae.config.get("saevlm") if isinstance(sae.config.get("saevlm"), dict) else {}
    prov = Provenance.of_sae_config(sae.config)
    facts: dict[str, Any] = {"arch": sae.arch, "dict_size": sae.dict_size, "activation_dim": sae.activation_dim}
    if sae.k is not None:
        facts["k"] = sae.k
    if sae.group_sizes():
        facts["group_sizes"] = sae.group_sizes()
    if prov is not None:
        facts.update(model_name=prov.model.name, model_source=prov.model.source,
                     attachment_point=prov.hook.attachment_point, layer=prov.hook.layer,
                     tokens=prov.tokens.selection, dataset=prov.dataset.name, split=prov.dataset.split,
                     num_images=prov.dataset.num_selected)
    trainer = sae.config.get("trainer") if isinstance(sae.config.get("trainer"), dict) else {}
    for key in ("steps", "lr", "seed"):
        if trainer.get(key) is not None:
            facts[key] = trainer[key]
    if ours.get("imported"):
        facts["imported_from"] = {k: ours["imported"].get(k) for k in ("format", "source")}
    return facts


def evaluation(trainer_dir: Path) -> dict | None:
    """R2, L0 and dead fraction from the trainer's eval.json (None without one, or a damaged one)."""

    f = trainer_dir / A.EVAL_JSON
    if not f.is_file():
        return None
    try:
        ev = A.EvalResult.from_file(f)
    except A.ResultError:
        return None
    return {"r2": ev.r2, "l0": ev.l0, "dead_fraction": ev.dead_fraction}


def ms_results(trainer_dir: Path) -> list[dict]:
    """MS results (``ms.json``) of code stores encoded by this very SAE, found in its run folder."""

    weights = str((trainer_dir / A.AE_PT).resolve())
    out = []
    root = trainer_dir.resolve().parent.parent
    for f in sorted(root.glob(f"**/ms*/{A.MS_JSON}"))[:200]:
        try:
            ms = A.MSSummary.from_file(f)
        except A.ResultError:
            continue
        sae = ms.sae
        if isinstance(sae, dict) and isinstance(sae.get("path"), str) and str(Path(sae["path"]).resolve()) == weights:
            out.append({"mean": ms.mean, "std": ms.std, "scored": ms.scored_count, "total": ms.total,
                        "embeddings_model": ms.embeddings_model})
    return out




def model_card(rows: list[dict], fmt: str) -> str:
    """README.md for a hub release of the exported SAEs."""
    first = rows[0]["facts"]
    lines = ["---", "library_name: " + ("saelens" if fmt == "saelens" else "sparsify"), "tags:",
             "- sparse-autoencoder", "- vision", "- saevlm", "---", "",
             f"# Sparse autoencoders on {first.get('model_name') or 'a vision encoder'}", "",
             "Trained and exported with saevlm (Pach et al., arXiv 2504.02821, Monosemanticity Score). "
             f"Files in the {fmt} layout: " + ("`SAE.load_from_disk(folder)` (sae_lens)." if fmt == "saelens"
                                              else "`SparseCoder.load_from_disk(folder)` (sparsify)."), ""]
    facts_keys = [("model", "model_source"), ("hook", None), ("tokens", "tokens"),
                  ("training data", None), ("training steps", "steps")]
    lines += ["| | |", "|---|---|"]
    for label, key in facts_keys:
        if label == "hook":
            value = f"{first.get('attachment_point')} {first.get('layer')}" if first.get("attachment_point") else None
        elif label == "training data":
            value = (f"{first.get('dataset')} / {first.get('split')} ({first.get('num_images')} images)"
                     if first.get("dataset") else None)
        else:
            value = first.get(key)
        lines.append(f"| {label} | {value if value is not None else 'not recorded'} |")
    lines += ["", "| folder | architecture | latents | k | L0 | R² | dead | MS mean (embedder) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, ev = r["facts"], r["evaluation"] or {}
        ms = r["ms"][0] if r["ms"] else None
        ms_text = f"{ms['mean']:.3f} ({ms['embeddings_model']})" if ms and ms.get("mean") is not None else "–"
        num = (lambda v, fmt_: fmt_.format(v) if isinstance(v, (int, float)) else "–")
        lines.append(f"| {r['path'] or '.'} | {f['arch']} | {f['dict_size']} | {f.get('k', '–')} | "
                     f"{num(ev.get('l0'), '{:.1f}')} | {num(ev.get('r2'), '{:.3f}')} | "
                     f"{num(ev.get('dead_fraction'), '{:.3f}')} | {ms_text} |")
    lines += ["", "L0, R² (pooled over validation rows) and dead fraction from saevlm's eval.json; MS from "
              "saevlm ms (arXiv 2504.02821 Eq. 5-9) on the images named in its ms.json.", ""]
    return "\n".join(lines)


def run(args: ExportSAEConfig) -> int:
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from saevlm.data.atomic import (atomic_write_json, atomic_write_text, check_not_own_input, ensure_writable_dir,
                                     file_sha256)
    from saevlm.sae import interop
    from saevlm.sae.checkpoint import load_sae

    check_not_own_input(args.output_dir, "output_dir", [("sae_path", args.sae_path)])
    src = Path(args.sae_path).expanduser()
    dirs = trainer_dirs(src)
    out = Path(args.output_dir)
    if out.is_dir() and any(out.iterdir()):
        # replaced only when it holds an earlier export and --overwrite says so: never other files
        if not any((out / name).exists() for name in ("cfg.json", "manifest.jsonl", "README.md")):
            raise UserError(f"output_dir {out}: not empty and not an earlier export; choose an empty or new folder",
                            field="output_dir")
        if not args.overwrite:
            raise UserError(f"output_dir {out}: holds an earlier export; pass --overwrite to replace it",
                            field="output_dir")
    elif out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out}: a file, not a folder", field="output_dir")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."), "output_dir")
    several = len(dirs) > 1 or dirs[0] != src
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    rows = []
    try:
        for d in dirs:
            sae = load_sae(str(d))
            weights = interop.from_loaded(sae)
            facts = saevlm_facts(sae)
            metadata = {"model_name": facts.get("model_name"), "hook_name": (
                f"{facts['attachment_point']}_{facts['layer']}" if facts.get("attachment_point") else None),
                "saevlm": facts}
            if args.format == "saelens":
                cfg, tensors = interop.saelens_files(weights, metadata)
            else:
                cfg, tensors = interop.sparsify_files(weights, str(d))
            target = tmp / d.name if several else tmp
            target.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / WEIGHTS_FILE[args.format]))
            atomic_write_json(target / "cfg.json", cfg)
            rows.append({"path": d.name if several else "", "facts": facts, "evaluation": evaluation(d),
                         "ms": ms_results(d), "sha256": file_sha256(target / WEIGHTS_FILE[args.format])})
        if args.hub_card:
            atomic_write_text(tmp / "README.md", model_card(rows, args.format))
            if several:
                lines = [json.dumps({"path": r["path"], "layer": r["facts"].get("layer"), "arch": r["facts"]["arch"],
                                     "dict_size": r["facts"]["dict_size"], "k": r["facts"].get("k"),
                                     "l0": (r["evaluation"] or {}).get("l0"), "r2": (r["evaluation"] or {}).get("r2"),
                                     "sha256": r["sha256"]}) for r in rows]
                atomic_write_text(tmp / "manifest.jsonl", "\n".join(lines) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        print(f"export-sae: {r['facts']['arch']} {r['facts']['activation_dim']} -> {r['facts']['dict_size']} as "
              f"{args.format}: {out / r['path'] if r['path'] else out}", file=sys.stderr)
    print(f"wrote {len(rows)} SAE(s) for {args.format} under {out}" + (" with README.md" if args.hub_card else ""))
    return 0
