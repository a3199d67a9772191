"""Loading SAE checkpoints: dictionary_learning's layout (``trainer_i/ae.pt``,
``trainer_i/config.json``, ``trainer_i/checkpoints/ae_{step}.pt``), local or from the hub, so the
authors' released SAEs load unchanged; the class comes from config.json or the weight names."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saevlm.data import artifacts as A
from saevlm.data.manifest import ManifestError, Provenance
from saevlm.errors import UserError
from saevlm.sae.archs import ARCHITECTURES, DICT_CLASS_TO_ARCH, TRAINER_CLASS_TO_ARCH, dict_class, spec


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

    @property
    def trained_on(self) -> Provenance | None:
        """The provenance of the activations saevlm trained this SAE on (None for SAEs trained
        elsewhere, e.g. the authors' released checkpoints)."""
        try:
            return Provenance.of_sae_config(self.config)
        except ManifestError as e:
            raise UserError(f"sae_path {self.path}: {e}", field="sae_path") from None

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
        weights = p / A.AE_PT
        if not weights.is_file():
            subdirs = sorted(d.name for d in p.iterdir() if (d / A.AE_PT).is_file())
            hint = f" (trainer directories inside: {', '.join(subdirs)})" if subdirs else ""
            raise UserError(f"sae_path {p}: no ae.pt in this directory{hint}", field="sae_path")
        cfg = p / A.TRAINER_CONFIG
        return weights, cfg if cfg.is_file() else None
    if p.is_file():
        for cand in (p.parent / A.TRAINER_CONFIG, p.parent.parent / A.TRAINER_CONFIG):
            if cand.is_file():
                return p, cand
        return p, None
    if not str(path).startswith(("/", ".", "~")) and str(path).count("/") >= 2:
        first = Path(str(path).split("/")[0])
        if first.is_dir():  # a local path with a typo in it, not a hub repo
            raise UserError(f"sae_path {path}: no such file or directory ({first}/ exists here, so this is "
                            f"read as a local path, not a hub repo)", field="sae_path")
        return _from_hub(str(path))
    raise UserError(f"sae_path {path}: no such file or directory (expected a trainer directory "
                    f"holding ae.pt and config.json, or an .pt file)", field="sae_path")


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
        raise UserError(f"sae_path {spec}: could not fetch {files[0]} from the hub repo {repo} "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Offline, download "
                        f"the checkpoint directory once and pass its local path.", field="sae_path") from None
    return weights, cfg


WEIGHTS_JSON = "weights.json"


def record_weights(trainer_dir: Path, weights: Path) -> None:
    """Record the size and CRC-32 of a weights file saevlm just wrote in ``<trainer_dir>/weights.json``,
    so that an ``ae.pt`` replaced later (another layer's, of the same width) is not taken as the one
    ``config.json`` describes."""
    from saevlm.data.atomic import atomic_write_json, file_checksum

    f = trainer_dir / WEIGHTS_JSON
    try:
        data = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    files = dict(data.get("files") or {})
    files[weights.relative_to(trainer_dir).as_posix()] = file_checksum(weights)
    atomic_write_json(f, {"about": "size and CRC-32 of the weights files this trainer directory's run wrote "
                                   "(saevlm checks them on load)", "files": files})


_NOTED_UNRECORDED: set[str] = set()


def check_recorded_weights(weights: Path, cfg_path: Path | None) -> None:
    """Refuse weights whose bytes differ from what the run that wrote ``config.json`` recorded.

    A trainer directory whose config.json says its run records weights (``saevlm.weights_record``,
    written since saevlm records them) must hold a readable ``weights.json`` listing this file:
    deleting or damaging that record must not turn the check off. SAEs trained elsewhere (the
    authors' checkpoints) have no such key and load as they are; ones from an older saevlm with a
    note."""
    if cfg_path is None:
        return
    trainer_dir = cfg_path.parent
    f = trainer_dir / WEIGHTS_JSON
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        config = None  # load_sae names a damaged config.json
    ours = config.get("saevlm") if isinstance(config, dict) else None
    required = isinstance(ours, dict) and bool(ours.get("weights_record"))
    rebuild = (f"train this SAE again (delete its trainer directory, rerun its train command), or put the original {f.name} "
               f"back")
    if not f.is_file():
        if required:
            raise UserError(f"sae_path {trainer_dir}: no {f.name}, which the run that wrote {cfg_path.name} "
                            f"records the size and CRC-32 of its weights in: it was deleted, so {weights.name} "
                            f"cannot be checked. {rebuild[0].upper() + rebuild[1:]}", field="sae_path")
        if isinstance(ours, dict) and str(trainer_dir) not in _NOTED_UNRECORDED:
            _NOTED_UNRECORDED.add(str(trainer_dir))
            print(f"note: --sae_path {trainer_dir}: trained by a saevlm that did not record its weights; a "
                  f"replaced {weights.name} cannot be detected", file=sys.stderr)
        return
    try:
        data = json.loads(f.read_text())
        files = data.get("files")
        if not isinstance(files, dict):
            raise ValueError("no 'files' object")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"sae_path {f}: damaged ({type(err).__name__}: {str(err)[:120]}), so {weights.name} "
                        f"cannot be checked; {rebuild}", field="sae_path") from None
    try:
        rel = weights.resolve().relative_to(trainer_dir.resolve()).as_posix()
    except ValueError:
        return  # weights outside the trainer directory: config.json does not describe them
    recorded = files.get(rel)
    if not isinstance(recorded, dict):
        raise UserError(f"sae_path {weights}: not listed in {f} (it lists {', '.join(sorted(files)) or 'nothing'}): "
                        f"the file was not written by this trainer directory's run, or the run stopped while "
                        f"writing it; rerun its train command to finish it, or {rebuild}", field="sae_path")
    from saevlm.data.atomic import file_checksum
    got = file_checksum(weights)
    if got["crc32"] != recorded.get("crc32") or got["bytes"] != recorded.get("bytes"):
        raise UserError(f"sae_path {weights}: not the weights this trainer directory's run wrote ({got['bytes']} "
                        f"bytes, CRC-32 {got['crc32']}; {f.name} recorded {recorded.get('bytes')} bytes, CRC-32 "
                        f"{recorded.get('crc32')}): the file was replaced or copied from another run, so "
                        f"{cfg_path.name} does not describe it. Put the original back, or retrain", field="sae_path")


def load_sae(path: str, device: str | Any = "cpu") -> LoadedSAE:
    """Load any dictionary_learning checkpoint; the class comes from config.json (or, without
    one, from the state dict's keys)."""
    weights, config, state, arch, cls_name = _read_checkpoint(path)
    ae = _construct(arch, state)
    try:
        ae.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"sae_path {weights}: weights do not fit a {cls_name} "
                        f"({str(err).splitlines()[0]})", field="sae_path") from None
    ae.eval().to(device)
    act_dim, dict_size = _dims(arch, state)
    return LoadedSAE(ae, arch, cls_name, act_dim, dict_size, config, weights)


def describe_checkpoint(path: str) -> dict:
    """What :meth:`LoadedSAE.describe` gives for the checkpoint, read from its weights alone: no
    SAE class is built, so dictionary_learning is not imported (a rerun that finds its output
    complete skips without it). k, a scalar threshold and the group sizes are the state dict's
    buffers, which loading copies into the module unchanged."""
    weights, _config, state, arch, cls_name = _read_checkpoint(path, mmap=True)
    act_dim, dict_size = _dims(arch, state)
    out: dict = {"path": str(weights), "arch": arch, "dict_class": cls_name, "activation_dim": act_dim,
                 "dict_size": dict_size}
    if "k" in state:
        out["k"] = int(state["k"])
    if "threshold" in state and state["threshold"].numel() == 1:
        out["threshold"] = float(state["threshold"])
    if "group_sizes" in state:
        out["group_sizes"] = [int(g) for g in state["group_sizes"].tolist()]
    return out


def _read_checkpoint(path: str, mmap: bool = False) -> tuple[Path, dict, dict, str, str]:
    """(weights file, its config, its state dict, architecture, the class that is built) of a
    checkpoint, its recorded checksum checked."""
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
    check_recorded_weights(weights, cfg_path)
    try:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # a file in torch's legacy (pre-zip) format cannot be memory-mapped: read it whole
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"sae_path {weights}: not a readable torch checkpoint ({first_line})", field="sae_path") from None
    if cls_name is None:
        cls_name = _guess_class(state)
    if cls_name not in DICT_CLASS_TO_ARCH:
        raise UserError(f"sae_path {path}: SAE class {cls_name!r} (from {cfg_path}) is not supported; "
                        f"supported: {', '.join(DICT_CLASS_TO_ARCH)}", field="sae_path")
    arch = DICT_CLASS_TO_ARCH[cls_name]
    return weights, config, state, arch, ARCHITECTURES[arch][3]  # the class built (an alias names the same)


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
    """(activation_dim, dict_size) from the state dict, by the architecture's weight layout."""
    if spec(arch).layout == "matrix":
        d, n = state["W_enc"].shape
    else:
        n, d = state["encoder.weight"].shape
    return int(d), int(n)


def _construct(arch: str, state: dict):
    """The dictionary_learning module of ``arch`` sized for ``state`` (its k and groups from it)."""
    act_dim, dict_size = _dims(arch, state)
    s = spec(arch)
    args: list = [act_dim, dict_size]
    if s.has_k:
        args.append(int(state["k"]))
    if s.grouped:
        args.append([int(g) for g in state["group_sizes"].tolist()])
    return dict_class(arch)(*args)


def decoder_rows(path: str | Path) -> "Any":
    """The decoder directions [dict_size, activation_dim] (float32 NumPy) of a local checkpoint,
    read from its weights alone: no SAE class is built, so neither dictionary_learning nor
    transformers is imported (the explorer's nearest-latents list needs only these rows).
    dictionary_learning stores them as ``decoder.weight`` [d, K] (ReLU, TopK, BatchTopK) or
    ``W_dec`` [K, d] (Matryoshka, JumpReLU). The CRC recorded by the run is checked as in
    :func:`load_sae`."""
    import torch

    weights, cfg_path = resolve_checkpoint(str(path))
    check_recorded_weights(weights, cfg_path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"sae_path {weights}: not a readable torch checkpoint ({first_line})", field="sae_path") from None
    if "W_dec" in state:
        rows = state["W_dec"]
    elif "decoder.weight" in state:
        rows = state["decoder.weight"].T
    else:
        raise UserError(f"sae_path {weights}: no decoder weights (W_dec or decoder.weight) in the checkpoint", field="sae_path")
    return rows.detach().float().contiguous().numpy()
