"""Architecture registry over dictionary_learning's SAE and trainer classes, and checkpoint loading.

The SAE classes and trainers are dictionary_learning's (the reference implementation the paper
used); checkpoints keep its layout (``trainer_i/ae.pt``, ``trainer_i/config.json``,
``trainer_i/checkpoints/ae_{step}.pt``) so the authors' released SAEs load unchanged.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def canonical_arch(name: str, flag: str = "--sae_model") -> str:
    """An architecture name as saevlm spells it (the authors' "matroyshka" spelling accepted)."""
    arch = ARCH_ALIASES.get(name, name)
    if arch not in ARCHITECTURES:
        raise UserError(f"{flag} {name}: unknown architecture; expected one of {', '.join(ARCH_CHOICES)}")
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


@dataclass
class LoadedSAE:
    """An SAE ready for inference (fp32, eval mode) plus where it came from."""

    ae: Any
    arch: str
    dict_class: str
    activation_dim: int
    dict_size: int
    config: dict
    path: Path

    @property
    def k(self) -> int | None:
        k = getattr(self.ae, "k", None)
        return int(k) if k is not None else None

    def group_sizes(self) -> list[int] | None:
        gs = getattr(self.ae, "group_sizes", None)
        return [int(g) for g in gs.tolist()] if gs is not None else None

    def describe(self) -> dict:
        out = {"path": str(self.path), "arch": self.arch, "dict_class": self.dict_class,
               "activation_dim": self.activation_dim, "dict_size": self.dict_size}
        if self.k is not None:
            out["k"] = self.k
        thr = getattr(self.ae, "threshold", None)
        if thr is not None and thr.numel() == 1:
            out["threshold"] = float(thr)
        if self.group_sizes() is not None:
            out["group_sizes"] = self.group_sizes()
        return out


def resolve_checkpoint(path: str) -> tuple[Path, Path | None]:
    """``path`` = a trainer directory, an ``ae.pt`` / ``ae_{step}.pt`` file, or (online) a hub
    path ``owner/repo/sub/dir``. Returns (weights file, config.json or None)."""
    p = Path(path).expanduser()
    if p.is_dir():
        weights = p / "ae.pt"
        if not weights.is_file():
            subdirs = sorted(d.name for d in p.iterdir() if (d / "ae.pt").is_file())
            hint = f" (trainer directories inside: {', '.join(subdirs)})" if subdirs else ""
            raise UserError(f"--sae_path {p}: no ae.pt in this directory{hint}")
        cfg = p / "config.json"
        return weights, cfg if cfg.is_file() else None
    if p.is_file():
        for cand in (p.parent / "config.json", p.parent.parent / "config.json"):
            if cand.is_file():
                return p, cand
        return p, None
    if not str(path).startswith(("/", ".", "~")) and str(path).count("/") >= 2:
        return _from_hub(str(path))
    raise UserError(f"--sae_path {path}: no such file or directory (expected a trainer directory "
                    f"holding ae.pt and config.json, or an .pt file)")


def _from_hub(spec: str) -> tuple[Path, Path | None]:
    """``owner/repo/sub/dir`` on the Hugging Face hub (the authors' ``mateuszpach/sae-for-vlm``)."""
    from huggingface_hub import hf_hub_download

    parts = spec.split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    files = (f"{sub}/ae.pt", f"{sub}/config.json") if not sub.endswith(".pt") else (sub, None)
    try:
        weights = Path(hf_hub_download(repo, files[0]))
        cfg = Path(hf_hub_download(repo, files[1])) if files[1] else None
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear message
        raise UserError(f"--sae_path {spec}: could not fetch {files[0]} from the hub repo {repo} "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Offline, download "
                        f"the checkpoint directory once and pass its local path.") from None
    return weights, cfg


def load_sae(path: str, device: str | Any = "cpu") -> LoadedSAE:
    """Load any dictionary_learning checkpoint; the class comes from config.json (or, without
    one, from the state dict's keys)."""
    import torch

    weights, cfg_path = resolve_checkpoint(path)
    config: dict = {}
    if cfg_path is not None:
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
    trainer_cfg = config.get("trainer", {})
    cls_name = trainer_cfg.get("dict_class")
    if cls_name is None and trainer_cfg.get("trainer_class") in TRAINER_CLASS_TO_ARCH:
        cls_name = ARCHITECTURES[TRAINER_CLASS_TO_ARCH[trainer_cfg["trainer_class"]]][3]
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"--sae_path {weights}: not a readable torch checkpoint ({err})") from None
    if cls_name is None:
        cls_name = _guess_class(state)
    if cls_name not in DICT_CLASS_TO_ARCH:
        raise UserError(f"--sae_path {path}: SAE class {cls_name!r} (from {cfg_path}) is not supported; "
                        f"supported: {', '.join(DICT_CLASS_TO_ARCH)}")
    arch = DICT_CLASS_TO_ARCH[cls_name]
    cls_name = ARCHITECTURES[arch][3]  # the class that is built (an alias names the same class)
    ae = _construct(arch, state)
    try:
        ae.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"--sae_path {weights}: weights do not fit a {cls_name} "
                        f"({str(err).splitlines()[0]})") from None
    ae.eval().to(device)
    act_dim, dict_size = _dims(arch, state)
    return LoadedSAE(ae, arch, cls_name, act_dim, dict_size, config, weights)


def _guess_class(state: dict) -> str:
    if "group_sizes" in state:
        return "MatryoshkaBatchTopKSAE"
    if "threshold" in state and state["threshold"].numel() > 1:
        return "JumpReluAutoEncoder"
    if "k" in state:
        return "BatchTopKSAE"
    if "encoder.weight" in state:
        return "AutoEncoder"
    raise UserError("cannot tell the SAE class: no config.json and unknown weight names")


def _dims(arch: str, state: dict) -> tuple[int, int]:
    if arch == "matryoshka_batch_top_k":
        d, n = state["W_enc"].shape
        return int(d), int(n)
    if arch == "jumprelu":
        d, n = state["W_enc"].shape
        return int(d), int(n)
    n, d = state["encoder.weight"].shape
    return int(d), int(n)


def _construct(arch: str, state: dict):
    act_dim, dict_size = _dims(arch, state)
    cls = dict_class(arch)
    if arch == "matryoshka_batch_top_k":
        return cls(act_dim, dict_size, int(state["k"]), [int(g) for g in state["group_sizes"].tolist()])
    if arch in ("batch_top_k", "top_k"):
        return cls(act_dim, dict_size, int(state["k"]))
    return cls(act_dim, dict_size)


def encode_batch(sae: LoadedSAE, x):
    """Inference codes: BatchTopK / Matryoshka use the learned global threshold (arXiv 2504.02821);
    before it exists (threshold < 0, early checkpoints) the batch top-k is used instead."""
    ae = sae.ae
    if sae.arch in ("batch_top_k", "matryoshka_batch_top_k"):
        return ae.encode(x, use_threshold=bool(ae.threshold >= 0))
    return ae.encode(x)
