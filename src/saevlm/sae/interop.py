"""SAEs in other libraries' formats: read them into one canonical form, write ours out in theirs.

The canonical form (:class:`SAEWeights`) is the math every format shares, with each convention
made explicit instead of implied by a class:

    pre   = (x - c * b_dec) @ W_enc + b_enc          c = 1 if ``centred`` else 0
    codes = act(pre)                                 act: see :data:`ACTIVATIONS`
    x_hat = codes @ W_dec + b_dec

with ``W_enc`` [D, F] and ``W_dec`` [F, D] whatever the file stores (``encoder.weight`` [F, D] in
dictionary_learning and sparsify, ``W_enc`` [D, F] in SAELens). An input normalisation the format
keeps outside the checkpoint (x' = (x - mean) / std) is folded in exactly by :func:`fold_input_norm`,
so pre-activations, top-k choices and thresholds are unchanged; the result is written as a
dictionary_learning checkpoint (``ae.pt`` + ``config.json``), the layout every saevlm command takes.

Formats (each reader checks the conventions the library's own source uses; docs/import-export.md):

========================  ==========================================  ===========================
format                    files                                        centring
========================  ==========================================  ===========================
dictionary_learning       ``ae.pt`` (+ ``config.json``)                yes (``b_dec`` / ``bias``)
saelens                   ``cfg.json`` + ``sae_weights.safetensors``   ``apply_b_dec_to_input``
sparsify                  ``cfg.json`` + ``sae.safetensors``           yes (not for transcoders)
saev                      ``sae.pt``: one JSON line, then torch.save   schema < 2 only
overcomplete              a state dict (.pt / .safetensors) + flags    no
visaebench                ``sae.pt`` / ``model.safetensors`` +         no
                          ``config.json``
========================  ==========================================  ===========================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from saevlm.errors import UserError
from saevlm.sae.archs import dict_class, group_bounds, sizes_of_bounds, spec

# an architecture's activation rule (archs.ArchSpec.activation) in words; every saevlm class compares with ">"
ACTIVATIONS = {
    "relu": "relu(pre)",
    "row_top_k": "the k largest of relu(pre) per row, others 0",
    "threshold": "relu(pre) where relu(pre) > threshold (a scalar), else 0",
    "jump": "relu(pre) where pre > threshold[f] (one per latent), else 0",
}
FORMATS = ("dictionary_learning", "saelens", "sparsify", "saev", "visaebench", "overcomplete")
# formats trained on patch tokens (not CLS) whose tokens must be said, and whose inputs were
# normalised outside the checkpoint (visaebench: a mean [D] and a scalar std from its eval data)
NEEDS_TOKENS = ("saev", "visaebench")
NEEDS_INPUT_NORM = ("visaebench",)


@dataclass
class SAEWeights:
    """One SAE in the canonical form of the module docstring (float32 tensors)."""

    arch: str
    W_enc: torch.Tensor  # [D, F]
    b_enc: torch.Tensor  # [F]
    W_dec: torch.Tensor  # [F, D]
    b_dec: torch.Tensor  # [D]
    centred: bool
    k: int | None = None
    threshold: torch.Tensor | None = None  # [] (batch_top_k, matryoshka) or [F] (jumprelu)
    group_sizes: list[int] | None = None
    metadata: dict = field(default_factory=dict)  # what the source file says about itself

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.W_enc.shape[0]), int(self.W_enc.shape[1])

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        centre = self.b_dec if self.centred else torch.zeros_like(self.b_dec)
        return (x - centre) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes by the canonical definition (a reference for tests and ``--check_activations``)."""
        pre = self.pre_activations(x)
        post = torch.relu(pre)
        rule = spec(self.arch).activation
        if rule == "relu":
            return post
        if rule == "row_top_k":
            top = post.topk(int(self.k), dim=-1)
            return torch.zeros_like(post).scatter_(-1, top.indices, top.values)
        if rule == "threshold":
            return post * (post > self.threshold)
        if rule == "jump":
            return post * (pre > self.threshold)
        raise ValueError(rule)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b_dec

    def check_finite(self, where: str) -> None:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, name)
            if t is not None and not bool(torch.isfinite(t).all()):
                raise UserError(f"sae_path {where}: {name} holds NaN / inf values; these weights cannot encode "
                                f"anything", field="sae_path")


def _as_vector(value, dim: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if t.numel() == 1:
        return t.expand(dim).clone()
    if t.numel() != dim:
        raise UserError(f"input_norm: the {what} has {t.numel()} values, the SAE takes {dim}-d inputs",
                        field="input_norm")
    return t


def fold_input_norm(w: SAEWeights, mean=None, std=None) -> SAEWeights:
    """The same SAE on raw inputs, where it was trained on x' = (x - mean) / std and reconstructs x'
    (``mean`` [D] or None, ``std`` a scalar, [D] or None). Exact up to float rounding:

        W_enc' = W_enc / std[:, None]      W_dec' = W_dec * std[None, :]      b_dec' = std * b_dec + mean
        b_enc' = b_enc                                  (centred: the centre moves with b_dec')
        b_enc' = b_enc - (mean / std) @ W_enc           (not centred)

    so pre-activations, and with them top-k choices and thresholds, are those of the source."""
    d, _ = w.dims
    if mean is None and std is None:
        return w
    mean_d = _as_vector(0.0 if mean is None else mean, d, "mean")
    std_d = _as_vector(1.0 if std is None else std, d, "std")
    if not bool((std_d > 0).all()) or not bool(torch.isfinite(std_d).all()) or not bool(torch.isfinite(mean_d).all()):
        raise UserError("input_norm: the std must be positive and finite, the mean finite", field="input_norm")
    W_enc, b_enc, W_dec, b_dec = (t.double() for t in (w.W_enc, w.b_enc, w.W_dec, w.b_dec))
    new_W_enc = W_enc / std_d[:, None]
    new_b_enc = b_enc if w.centred else b_enc - (mean_d / std_d) @ W_enc
    out = replace(w, W_enc=new_W_enc.float(), b_enc=new_b_enc.float(), W_dec=(W_dec * std_d[None, :]).float(),
                  b_dec=(std_d * b_dec + mean_d).float())
    return out


def with_centring(w: SAEWeights, centred: bool) -> SAEWeights:
    """The same SAE written with (or without) the input centring: pre-activations unchanged."""
    if w.centred == centred:
        return w
    shift = (w.b_dec.double() @ w.W_enc.double()).float()  # what centring takes from every pre-activation
    return replace(w, centred=centred, b_enc=w.b_enc + shift if centred else w.b_enc - shift)


def _read_stats_file(spec: str, f: Path) -> Any:
    """The contents of ``--input_norm stats:FILE`` (.npz, .json or a torch file)."""
    if not f.is_file():
        raise UserError(f"input_norm {spec}: no such file {f}", field="input_norm")
    try:
        if f.suffix == ".npz":
            import numpy as np
            with np.load(f) as z:
                return {k: z[k] for k in z.files}
        if f.suffix == ".json":
            return json.loads(f.read_text())
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise UserError(f"input_norm {spec}: unreadable ({type(err).__name__}: {str(err)[:120]})",
                        field="input_norm") from None


def read_input_norm(spec: str | None) -> tuple[Any, Any, str]:
    """``--input_norm``: ``none``, ``scalar:S`` (x / S) or ``stats:FILE`` (an .npz / .pt / .json with
    ``mean`` [D] and ``std`` (a scalar or [D])). Returns (mean, std, description)."""
    if spec is None or spec == "none":
        return None, None, "none"
    kind, _, value = spec.partition(":")
    if kind == "scalar":
        try:
            s = float(value)
        except ValueError:
            raise UserError(f"input_norm {spec}: expected scalar:S with a number S (inputs are divided by S)",
                            field="input_norm") from None
        return None, s, f"x / {s!r}"
    if kind == "stats":
        f = Path(value).expanduser()
        stats = _read_stats_file(spec, f)
        if not isinstance(stats, dict) or "mean" not in stats:
            keys = ", ".join(map(str, stats)) if isinstance(stats, dict) else type(stats).__name__
            raise UserError(f"input_norm {spec}: expected keys mean and std (found {keys})", field="input_norm")
        return stats["mean"], stats.get("std", 1.0), f"(x - mean) / std from {f.name}"
    raise UserError(f"input_norm {spec}: expected none, scalar:S or stats:FILE", field="input_norm")


# ----------------------------------------------------------------------------- reading
def _err_line(err: Exception) -> str:
    """The first line of an error's message (its type when it has none), for a one-line UserError."""
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


# the files that tell a folder's format (each set must all be there)
FOLDER_LAYOUTS = (("saelens", {"cfg.json", "sae_weights.safetensors"}), ("sparsify", {"cfg.json", "sae.safetensors"}),
                  ("dictionary_learning", {"ae.pt"}), ("visaebench", {"config.json", "sae.pt"}),
                  ("visaebench", {"config.json", "model.safetensors"}), ("saev", {"manifest.jsonl"}))


def _detect_file_format(path: Path) -> str:
    """The format of a single checkpoint file, from its suffix and first bytes or keys."""
    if path.suffix == ".pt":
        if _has_json_header(path):
            return "saev"
        return "overcomplete" if "dictionary._weights" in _state_keys(path) else "dictionary_learning"
    if path.suffix == ".safetensors":
        return "overcomplete"
    raise UserError(f"sae_path {path}: cannot tell the format of a {path.suffix or 'suffix-less'} file; pass "
                    f"--format ({', '.join(FORMATS)})", field="sae_path")


def _folder_formats(names: set[str]) -> list[str]:
    """Every format whose files a folder holds."""
    found = [fmt for fmt, files in FOLDER_LAYOUTS if files <= names]
    if not found and "sae.pt" in names:
        return ["saev"]  # saev's checkpoint alone: a JSON header line, then the weights
    return found


def detect_format(path: Path) -> str:
    """The format of a local SAE folder or file, from the files it holds."""
    if path.is_file():
        return _detect_file_format(path)
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    found = _folder_formats(names)
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(names)[:8]) or "nothing"
    if not found:
        raise UserError(f"sae_path {path}: no known SAE layout (it holds {listing}); expected cfg.json + "
                        f"sae_weights.safetensors (saelens), cfg.json + sae.safetensors (sparsify) or ae.pt "
                        f"(dictionary_learning)", field="sae_path")
    raise UserError(f"sae_path {path}: ambiguous layout (it holds {listing}): could be {' or '.join(found)}; pass "
                    f"--format", field="sae_path")


def _state_keys(f: Path) -> set[str]:
    """The keys of a torch state dict, without reading its tensors (memory-mapped)."""
    try:
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: the reader says so in its own words
        return set()
    return set(state) if isinstance(state, dict) else set()


def _has_json_header(f: Path) -> bool:
    """saev writes one JSON line before torch.save's bytes."""
    try:
        with open(f, "rb") as fh:
            return fh.read(1) == b"{"
    except OSError:
        return False


def _read_json(f: Path) -> dict:
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"sae_path {f}: unreadable ({type(err).__name__}: {str(err)[:120]})",
                        field="sae_path") from None
    if not isinstance(data, dict):
        raise UserError(f"sae_path {f}: not a JSON object", field="sae_path")
    return data


def _read_safetensors(f: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not f.is_file():
        raise UserError(f"sae_path {f}: no such file", field="sae_path")
    try:
        return {k: v.float() for k, v in load_file(str(f)).items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"sae_path {f}: damaged or truncated safetensors file ({str(err)[:120]})",
                        field="sae_path") from None


def _need(state: dict, keys: tuple[str, ...], where: Path, fmt: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"sae_path {where}: not a {fmt} SAE (no {', '.join(missing)}; it holds "
                        f"{', '.join(sorted(state)[:8])})", field="sae_path")


def _shape(t: torch.Tensor, shape: tuple[int, ...], name: str, where: Path) -> None:
    if tuple(t.shape) != shape:
        raise UserError(f"sae_path {where}: {name} has shape {tuple(t.shape)}, expected {shape}", field="sae_path")


SAELENS_ARCHS = ("standard", "topk", "jumprelu")


def read_saelens(path: Path) -> SAEWeights:
    """SAELens 6.x (``SAE.save_model`` / ``save_inference_model``): ``W_enc`` [D, F], ``W_dec`` [F, D];
    ``apply_b_dec_to_input`` says whether ``b_dec`` is subtracted first; TopK's
    ``rescale_acts_by_decoder_norm`` multiplies pre-activations by the decoder row norms (folded
    here); BatchTopK and Matryoshka are saved as ``jumprelu`` with the threshold repeated per latent
    (``k`` and cumulative ``matryoshka_widths`` in ``metadata.training_architecture_details``)."""
    cfg = _read_json(path / "cfg.json")
    arch = cfg.get("architecture", "standard")
    _check_saelens_cfg(cfg, arch, path)
    state = _read_safetensors(path / "sae_weights.safetensors")
    _need(state, ("W_enc", "b_enc", "W_dec", "b_dec"), path, "SAELens")
    d, f = int(cfg.get("d_in", state["W_enc"].shape[0])), int(cfg.get("d_sae", state["W_enc"].shape[1]))
    _shape(state["W_enc"], (d, f), "W_enc", path)
    _shape(state["W_dec"], (f, d), "W_dec", path)
    _shape(state["b_enc"], (f,), "b_enc", path)
    _shape(state["b_dec"], (d,), "b_dec", path)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    w = SAEWeights("standard", state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"],
                   centred=bool(cfg.get("apply_b_dec_to_input", True)), metadata=dict(meta))
    if arch == "topk":
        w.arch, w.k = "top_k", int(cfg["k"])
        if cfg.get("rescale_acts_by_decoder_norm"):
            n = w.W_dec.norm(dim=-1)  # codes are pre * n: scale the encoder, un-scale the decoder
            w.W_enc, w.b_enc, w.W_dec = w.W_enc * n[None, :], w.b_enc * n, w.W_dec / n[:, None]
    elif arch == "jumprelu":
        _need(state, ("threshold",), path, "SAELens JumpReLU")
        _shape(state["threshold"], (f,), "threshold", path)
        w.arch, w.threshold = "jumprelu", state["threshold"]
        _saelens_batch_top_k(w, meta)
    return w


def _check_saelens_cfg(cfg: dict, arch: str, path: Path) -> None:
    """Refuse, by name, the SAELens settings no saevlm SAE can hold."""
    if arch not in SAELENS_ARCHS:
        raise UserError(f"sae_path {path}: SAELens architecture {arch!r} is not supported (supported: "
                        f"{', '.join(SAELENS_ARCHS)}; a {arch} SAE has no equivalent among saevlm's)", field="sae_path")
    norm = cfg.get("normalize_activations", "none")
    if norm == "expected_average_only_in":
        raise UserError(f"sae_path {path}: trained on inputs scaled by a norm_scaling_factor that the "
                        f"checkpoint does not hold (normalize_activations {norm!r}); pass --input_norm scalar:S "
                        f"with S = 1 / norm_scaling_factor (SAELens lists the factor in pretrained_saes.yaml)",
                        field="sae_path", mentions=("input_norm",))
    if norm not in ("none", None):
        raise UserError(f"sae_path {path}: normalize_activations {norm!r} normalises each input by its own "
                        f"statistics, which no linear SAE can fold in; not supported", field="sae_path")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise UserError(f"sae_path {path}: reshape_activations {cfg['reshape_activations']!r} (attention heads) "
                        f"is not a vision-tower hook; not supported", field="sae_path")


def _saelens_batch_top_k(w: SAEWeights, meta: dict) -> None:
    """A SAELens JumpReLU that was trained as (Matryoshka) BatchTopK, with one threshold >= 0 for
    every latent and its k recorded, becomes that SAE again (same codes: for a threshold >= 0,
    relu(pre) > t exactly where pre > t)."""
    thr = w.threshold
    training = meta.get("training_architecture")
    details = meta.get("training_architecture_details") or {}
    if training not in ("batchtopk", "matryoshka_batchtopk") or details.get("k") is None:
        return
    if not bool((thr == thr[0]).all()) or float(thr[0]) < 0:
        return
    w.arch, w.threshold = "batch_top_k", thr[0].clone()
    w.k = int(details["k"])
    widths = details.get("matryoshka_widths")
    if training == "matryoshka_batchtopk" and widths:
        w.arch = "matryoshka_batch_top_k"
        w.group_sizes = sizes_of_bounds(widths)


def read_sparsify(path: Path) -> SAEWeights:
    """sparsify (EleutherAI, PyPI ``eai-sparsify``): ``encoder.weight`` [F, D], ``encoder.bias``,
    ``W_dec`` [F, D], ``b_dec``; codes = top-k of relu(encoder(x - b_dec)) per row."""
    cfg = _read_json(path / "cfg.json")
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise UserError(f"sae_path {path}: a sparsify transcoder / skip-connection model maps one layer to "
                        f"another; saevlm takes SAEs that reconstruct their input", field="sae_path")
    if cfg.get("activation", "topk") != "topk":
        raise UserError(f"sae_path {path}: sparsify activation {cfg.get('activation')!r} is not supported "
                        f"(only topk)", field="sae_path")
    state = _read_safetensors(path / "sae.safetensors")
    _need(state, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), path, "sparsify")
    f, d = state["encoder.weight"].shape
    _shape(state["W_dec"], (f, d), "W_dec", path)
    if "d_in" in cfg and int(cfg["d_in"]) != d:
        raise UserError(f"sae_path {path}: cfg.json says d_in {cfg['d_in']}, the weights take {d}", field="sae_path")
    return SAEWeights("top_k", state["encoder.weight"].T.contiguous(), state["encoder.bias"], state["W_dec"],
                      state["b_dec"], centred=True, k=int(cfg["k"]), metadata={})


def pick_saev_checkpoint(root: Path, layer: int | None, l0: float | None, run_id: str | None,
                         fetch=None) -> tuple[Path, dict]:
    """One checkpoint of a saev multi-checkpoint repo (``layer_<N>/<run>/sae.pt`` + ``manifest.jsonl``,
    one row per checkpoint: run_id, layer, l0, mse, sha256, path): by ``run_id``, or by ``layer`` and
    the L0 nearest ``l0``. The file's SHA-256 must match its row."""
    rows = _saev_manifest_rows(root)
    chosen = _saev_candidates(rows, root, layer, l0, run_id)
    if len(chosen) != 1:
        raise _not_one_checkpoint(root, chosen, rows, f"run_id {run_id}" if run_id is not None else f"layer {layer}")
    row = chosen[0]
    f = fetch(row["path"]) if fetch is not None else root / row["path"]  # (a hub repo: downloaded now)
    if not f.is_file():
        raise UserError(f"sae_path {f}: listed in manifest.jsonl but not there", field="sae_path")
    from saevlm.data.atomic import file_sha256

    if row.get("sha256") and file_sha256(f) != row["sha256"]:
        raise UserError(f"sae_path {f}: its SHA-256 is not the one manifest.jsonl records (a damaged or "
                        f"replaced checkpoint)", field="sae_path")
    return f, row


def _not_one_checkpoint(root: Path, chosen: list[dict], rows: list[dict], what: str) -> UserError:
    """No checkpoint, or several, for what was asked: the error lists them (or the manifest's)."""
    options = ", ".join(f"{r.get('run_id')} (layer {r.get('layer')}, L0 {r.get('l0')})" for r in (chosen or rows)[:8])
    return UserError(f"sae_path {root}: {'no' if not chosen else len(chosen)} checkpoint(s) for {what}; "
                     f"{'pass --l0 to choose among' if chosen else 'the manifest lists'} {options}",
                     field="sae_path", mentions=("l0",))


def _saev_manifest_rows(root: Path) -> list[dict]:
    """The rows of a saev repo's manifest.jsonl that name a checkpoint file."""
    rows = []
    for i, line in enumerate((root / "manifest.jsonl").read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"sae_path {root / 'manifest.jsonl'}: line {i + 1} is not JSON", field="sae_path") from None
        if isinstance(row, dict) and row.get("path"):
            rows.append(row)
    return rows


def _saev_candidates(rows: list[dict], root: Path, layer: int | None, l0: float | None,
                     run_id: str | None) -> list[dict]:
    """The rows ``--run_id``, or ``--layer`` (and the L0 nearest ``--l0``), pick."""
    if run_id is not None:
        return [r for r in rows if str(r.get("run_id")) == run_id]
    if layer is None:
        layers = sorted({r.get("layer") for r in rows}, key=str)
        raise UserError(f"sae_path {root}: a repo of {len(rows)} checkpoints (layers {layers}); pass --layer "
                        f"(and --l0 for the sparsity) or --run_id to pick one", field="sae_path",
                        mentions=("layer", "l0", "run_id"))
    chosen = [r for r in rows if r.get("layer") == layer]
    if chosen and l0 is not None:
        chosen = [min(chosen, key=lambda r: abs(float(r.get("l0", 0)) - l0))]
    return chosen


def _read_saev_file(f: Path) -> tuple[dict, dict]:
    """(JSON header, float weights) of a saev ``sae.pt``."""
    import io

    try:
        with open(f, "rb") as fh:
            header = json.loads(fh.readline())
            payload = fh.read()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"sae_path {f}: not a saev checkpoint (a JSON header line, then the weights: "
                        f"{type(err).__name__})", field="sae_path") from None
    if not isinstance(header, dict):
        raise UserError(f"sae_path {f}: not a saev checkpoint (its header line is JSON but not an object)",
                        field="sae_path")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable payload is one line
        raise UserError(f"sae_path {f}: its weights are unreadable ({_err_line(err)})",
                        field="sae_path") from None
    return header, {k: v.float() for k, v in state.items()}


def _saev_activation(header: dict) -> tuple[str | None, dict]:
    """(activation class, its parameters) from a saev header: ``cfg.activation`` since schema 2;
    schema 1A names it in ``cls``; without a schema it is ReLU."""
    cfg = header.get("cfg", header)
    activation = cfg.get("activation")
    if isinstance(activation, dict):
        return activation.get("cls"), activation.get("params") or {}
    return (header.get("cls") if header.get("cls") in ("Relu", "TopK", "BatchTopK") else "Relu"), cfg


def read_saev(path: Path) -> SAEWeights:
    """saev (OSU-NLP-Group) ``sae.pt``: a JSON header line (``schema``, ``cfg`` with ``activation``),
    then ``torch.save`` of ``W_enc`` [D, F], ``b_enc``, ``W_dec`` [F, D], ``b_dec`` (+ BatchTopK's
    ``activation.threshold``). Its ``encode`` is ``activation(x @ W_enc + b_enc)`` since schema 2;
    checkpoints from before (no schema, schema 1: 2024 to July 2025) subtracted ``b_dec`` first.
    Its TopK keeps the k largest pre-activations even when negative, where saevlm's applies ReLU
    first: the codes are ReLU of saev's (the same wherever the k-th largest is positive)."""
    f = path / "sae.pt" if path.is_dir() else path
    header, state = _read_saev_file(f)
    _need(state, ("W_enc", "b_enc", "W_dec", "b_dec"), f, "saev")
    schema = header.get("schema")
    kind, params = _saev_activation(header)
    d, f_ = state["W_enc"].shape
    _shape(state["W_dec"], (f_, d), "W_dec", f)
    w = SAEWeights("standard", state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"],
                   centred=schema is None or int(schema) < 2,
                   metadata={"saev_schema": schema, "saev_activation": kind, "lib": header.get("lib")})
    if kind == "TopK":
        w.arch, w.k = "top_k", int(params.get("top_k", 32))
    elif kind == "BatchTopK":
        thr = state.get("activation.threshold", torch.tensor(0.0)).reshape(())
        # eval mode: x where x > threshold, and ReLU where the threshold is not positive
        w.arch, w.k, w.threshold = "batch_top_k", int(params.get("top_k", 32)), torch.clamp(thr, min=0.0)
    elif kind != "Relu":
        raise UserError(f"sae_path {f}: saev activation {kind!r} is not supported (Relu, TopK, BatchTopK)",
                        field="sae_path")
    return w


def read_visaebench(path: Path) -> SAEWeights:
    """visaebench (``visaebench/<backbone>-saes``): ``config.json`` (activation topk / batchtopk / jumprelu,
    input_dim, hidden_dim, k, threshold) + ``sae.pt`` or ``model.safetensors`` with ``encoder.weight``
    [F, D], ``encoder.bias``, ``decoder.weight`` stored [F, D] (not torch's [D, F]) and an optional
    ``decoder.bias``. Its ``encode`` is relu(x @ encoder.weight.T + encoder.bias), not centred; BatchTopK
    keeps codes >= threshold (saevlm compares with >, so the threshold becomes the float just below);
    inputs were normalised by a mean [D] and a scalar std kept outside the checkpoint (--input_norm)."""
    cfg_file, cfg = _visaebench_config(path)
    weights, state = _visaebench_weights(path)
    if "encoder.final_block.0.weight" in state:
        raise UserError(f"sae_path {weights}: holds overcomplete's module weights (encoder.final_block...), not "
                        f"visaebench's upload format; not supported", field="sae_path")
    _need(state, ("encoder.weight", "encoder.bias", "decoder.weight"), weights, "visaebench")
    f_, d = state["encoder.weight"].shape
    _shape(state["decoder.weight"], (f_, d), "decoder.weight (stored [hidden, input])", weights)
    b_dec = state.get("decoder.bias", torch.zeros(d))
    kind = str(cfg.get("activation", cfg.get("sae_type", cfg.get("architecture", "topk")))).lower()
    w = SAEWeights("standard", state["encoder.weight"].T.contiguous(), state["encoder.bias"], state["decoder.weight"],
                   b_dec, centred=False, metadata={k: v for k, v in cfg.items() if isinstance(v, (str, int, float))})
    if kind == "topk":
        w.arch, w.k = "top_k", int(cfg["k"])
    elif kind == "batchtopk":
        _visaebench_batch_top_k(w, cfg, state)
    elif kind == "jumprelu":
        thr = state.get("jump_thresholds", state.get("thresholds"))
        if thr is None:
            raise UserError(f"sae_path {weights}: a JumpReLU SAE without its thresholds (jump_thresholds)",
                            field="sae_path")
        w.arch, w.threshold = "jumprelu", thr.reshape(f_)
    else:
        raise UserError(f"sae_path {cfg_file}: visaebench activation {kind!r} is not supported (topk, batchtopk, "
                        f"jumprelu)", field="sae_path")
    return w


def _visaebench_config(path: Path) -> tuple[Path, dict]:
    """(the config file, its contents): config.json, or a YAML config."""
    cfg_file = next((path / n for n in ("config.json", "config.yaml", "config.yml") if (path / n).is_file()), None)
    if cfg_file is None:
        raise UserError(f"sae_path {path}: no config.json (a visaebench checkpoint folder)", field="sae_path")
    if cfg_file.suffix == ".json":
        return cfg_file, _read_json(cfg_file)
    import yaml
    return cfg_file, yaml.safe_load(cfg_file.read_text()) or {}


def _visaebench_weights(path: Path) -> tuple[Path, dict]:
    """(the weights file, its float tensors): sae.pt, model.safetensors or model.pt."""
    weights = next((path / n for n in ("sae.pt", "model.safetensors", "model.pt") if (path / n).is_file()), None)
    if weights is None:
        raise UserError(f"sae_path {path}: no sae.pt or model.safetensors", field="sae_path")
    if weights.suffix == ".safetensors":
        return weights, _read_safetensors(weights)
    try:
        return weights, {k: v.float() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    except Exception as err:  # noqa: BLE001
        raise UserError(f"sae_path {weights}: not a readable torch checkpoint ({_err_line(err)})",
                        field="sae_path") from None


def _visaebench_batch_top_k(w: SAEWeights, cfg: dict, state: dict) -> None:
    """visaebench's BatchTopK keeps codes >= its threshold (from the config, else the state's running
    threshold): codes >= t <=> codes > the float32 just below t; for t <= 0 every ReLU output is
    kept, as with threshold 0 (a negative threshold would read as dictionary_learning's "unset")."""
    thr = cfg.get("threshold")
    if thr is None and "_running_threshold" in state:
        thr = float(state["_running_threshold"])
    t = torch.tensor(float(thr or 0.0), dtype=torch.float32)
    t = torch.nextafter(t, torch.tensor(float("-inf"))) if float(t) > 0 else torch.tensor(0.0)
    if cfg.get("k") is not None:
        w.arch, w.k, w.threshold = "batch_top_k", int(cfg["k"]), t
    else:  # no k recorded: the same codes as a JumpReLU with the threshold repeated
        w.arch, w.threshold = "jumprelu", t.expand(w.W_enc.shape[1]).clone()


OVERCOMPLETE_CLASSES = ("SAE", "TopKSAE", "BatchTopKSAE", "JumpSAE")
OVERCOMPLETE_NORMALIZATIONS = ("l2", "max_l2", "l1", "max_l1", "identity")


def _overcomplete_dictionary(weights: torch.Tensor, multiplier: torch.Tensor, normalization: str) -> torch.Tensor:
    """overcomplete's eval-mode dictionary: its normalisation of the stored rows times exp(multiplier)."""
    w = weights.double()
    if normalization == "l2":
        w = w / (w.norm(p=2, dim=1, keepdim=True) + 1e-8)
    elif normalization == "max_l2":
        w = w / w.norm(p=2, dim=1, keepdim=True).amax(dim=0, keepdim=True)
    elif normalization == "l1":
        w = w / (w.norm(p=1, dim=1, keepdim=True) + 1e-8)
    elif normalization == "max_l1":
        w = w / w.norm(p=1, dim=1, keepdim=True).amax(dim=0, keepdim=True)
    return (w * torch.exp(multiplier.double())).float()


def read_overcomplete(path: Path, sae_class: str | None, k: int | None, threshold: float | None,
                      normalization: str = "l2") -> SAEWeights:
    """overcomplete (KempnerInstitute) modules saved as a state dict: ``encoder.final_block.0.weight``
    [F, D] and ``.bias`` (the linear encoder; ReLU after it), ``dictionary._weights`` [F, D] and
    ``dictionary.multiplier`` (the decoder is normalise(_weights) * exp(multiplier); no decoder bias),
    JumpSAE's ``thresholds`` in log space. Nothing else is saved: the class, its ``top_k`` and
    BatchTopK's ``running_threshold`` (a plain attribute, not in the state dict) are given with flags.
    BatchTopK and JumpReLU keep codes >= their threshold (made > the float just below). Non-linear
    encoders (hidden MLP blocks, a normalisation layer, attention, ResNet) are refused by name."""
    path, state = _overcomplete_state(path)
    _check_linear_overcomplete(state, path)
    _need(state, ("encoder.final_block.0.weight", "encoder.final_block.0.bias", "dictionary._weights"), path,
          "overcomplete")
    f_, d = state["encoder.final_block.0.weight"].shape
    _shape(state["dictionary._weights"], (f_, d), "dictionary._weights", path)
    if normalization not in OVERCOMPLETE_NORMALIZATIONS:
        raise UserError(f"dictionary_normalization {normalization!r}: expected one of "
                        f"{', '.join(OVERCOMPLETE_NORMALIZATIONS)}", field="dictionary_normalization")
    if "thresholds" in state:
        sae_class = sae_class or "JumpSAE"
    if sae_class is None:
        raise UserError(f"sae_class: required for an overcomplete state dict, which does not say its class: one "
                        f"of {', '.join(OVERCOMPLETE_CLASSES[:3])} (JumpSAE is told by its thresholds)",
                        field="sae_class", mentions=("k", "threshold"))
    W_dec = _overcomplete_dictionary(state["dictionary._weights"], state.get("dictionary.multiplier", torch.tensor(0.0)),
                                     normalization)
    w = SAEWeights("standard", state["encoder.final_block.0.weight"].T.contiguous(), state["encoder.final_block.0.bias"],
                   W_dec, torch.zeros(d), centred=False,
                   metadata={"overcomplete_class": sae_class, "dictionary_normalization": normalization})
    _overcomplete_activation(w, state, path, sae_class, k, threshold)
    return w


def _overcomplete_state(path: Path) -> tuple[Path, dict]:
    """The one state dict file (of a folder holding one), as float tensors."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth", ".safetensors"))
        if len(files) != 1:
            raise UserError(f"sae_path {path}: expected one overcomplete state dict (.pt / .safetensors) in the "
                            f"folder, found {len(files)}; pass the file", field="sae_path")
        path = files[0]
    if path.suffix == ".safetensors":
        return path, _read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"sae_path {path}: not a readable torch state dict "
                        f"({_err_line(err)}); "
                        f"save it with torch.save(sae.state_dict(), path)", field="sae_path") from None
    if not isinstance(state, dict):
        raise UserError(f"sae_path {path}: holds a {type(state).__name__}, not a state dict; save it with "
                        f"torch.save(sae.state_dict(), path)", field="sae_path")
    return path, {key: v.float() for key, v in state.items() if isinstance(v, torch.Tensor)}


def _check_linear_overcomplete(state: dict, path: Path) -> None:
    """Refuse, by name, the overcomplete encoders and dictionaries that are not a linear SAE."""
    _check_linear_encoder(sorted(key for key in state if key.startswith("encoder.")), path)
    if "dictionary._weights" not in state and any(key.startswith("dictionary.") for key in state):
        raise UserError(f"sae_path {path}: an archetypal dictionary (RelaxedArchetypalDictionary) is built from "
                        f"data points at run time; not supported", field="sae_path")


def _check_linear_encoder(encoder_keys: list[str], path: Path) -> None:
    """An overcomplete encoder is one linear layer (``encoder.final_block.0``) and nothing else."""
    if any(key.startswith("encoder.mlp_blocks") for key in encoder_keys):
        raise UserError(f"sae_path {path}: an overcomplete MLP encoder with hidden blocks is non-linear; saevlm "
                        f"takes SAEs with a linear encoder", field="sae_path")
    final = [key for key in encoder_keys if key.startswith("encoder.final_block.")]
    if any(not key.startswith("encoder.final_block.0.") for key in final):
        raise UserError(f"sae_path {path}: its encoder has a normalisation layer (LayerNorm / BatchNorm) after the "
                        f"linear one, which is not a linear SAE encoder; not supported", field="sae_path")
    if encoder_keys and "encoder.final_block.0.weight" not in encoder_keys:
        raise UserError(f"sae_path {path}: a non-linear overcomplete encoder (attention or ResNet: "
                        f"{', '.join(encoder_keys[:3])}); saevlm takes SAEs with a linear encoder", field="sae_path")


def _overcomplete_activation(w: SAEWeights, state: dict, path: Path, sae_class: str, k: int | None,
                             threshold: float | None) -> None:
    """Set the architecture, k and threshold of an overcomplete class on ``w``."""
    below = torch.tensor(float("-inf"))
    if sae_class in ("TopKSAE", "BatchTopKSAE"):
        if k is None:
            raise UserError(f"k: required for an overcomplete {sae_class} (its top_k is not in the state dict)",
                            field="k")
        w.k = int(k)
        w.arch = "top_k"
    if sae_class == "BatchTopKSAE":
        if threshold is None:
            raise UserError("threshold: required for an overcomplete BatchTopKSAE: its running_threshold is a plain "
                            "attribute, not in the state dict (read sae.running_threshold before saving)",
                            field="threshold")
        t = torch.tensor(float(threshold), dtype=torch.float32)
        w.arch = "batch_top_k"
        w.threshold = torch.nextafter(t, below) if float(t) > 0 else torch.tensor(0.0)
    elif sae_class == "JumpSAE":
        _need(state, ("thresholds",), path, "overcomplete JumpSAE")
        w.arch = "jumprelu"  # kept where relu(pre) >= exp(thresholds) (> 0): pre > the float just below
        w.threshold = torch.nextafter(torch.exp(state["thresholds"].reshape(w.dims[1])), below)
    elif sae_class not in OVERCOMPLETE_CLASSES:
        raise UserError(f"sae_class {sae_class!r}: expected one of {', '.join(OVERCOMPLETE_CLASSES)}",
                        field="sae_class")


def from_loaded(sae) -> SAEWeights:
    """A dictionary_learning SAE loaded by :func:`saevlm.sae.checkpoint.load_sae` in canonical form,
    read through its architecture's table row (weight layout, centring, threshold)."""
    ae, s = sae.ae, spec(sae.arch)
    sd = {k: v.detach().float().cpu() for k, v in ae.state_dict().items()}
    if s.layout == "matrix":
        W_enc, b_enc, W_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"]
    else:
        W_enc, b_enc, W_dec = sd["encoder.weight"].T.contiguous(), sd["encoder.bias"], sd["decoder.weight"].T.contiguous()
    centred = s.centred or bool(getattr(ae, "apply_b_dec_to_input", False))
    thr = None
    if s.threshold_shape == "scalar":
        thr = sd["threshold"].reshape(())
        if float(thr) < 0:  # dictionary_learning's "no threshold yet" sentinel: inference uses the batch top-k
            raise UserError(f"sae_path {sae.path}: its threshold is unset (-1: saved before the threshold was "
                            f"learned); only a finished {sae.arch} SAE can be exported", field="sae_path")
    elif s.threshold_shape == "per_latent":
        thr = sd["threshold"]
    return SAEWeights(sae.arch, W_enc, b_enc, W_dec, sd[s.decoder_bias], centred, k=sae.k, threshold=thr,
                      group_sizes=sae.group_sizes(), metadata={})


def read_dictionary_learning(path: Path) -> SAEWeights:
    from saevlm.sae.checkpoint import load_sae

    return from_loaded(load_sae(str(path)))


READERS = {"dictionary_learning": read_dictionary_learning, "saelens": read_saelens, "sparsify": read_sparsify,
           "saev": read_saev, "visaebench": read_visaebench}


# ----------------------------------------------------------------------------- writing
def dictionary_learning_state(w: SAEWeights) -> tuple[str, dict[str, torch.Tensor]]:
    """(dict_class, state dict) of the dictionary_learning class saevlm loads for ``w.arch``, laid
    out as its table row says; buffers the canonical form has no value for keep the class's own."""
    s = spec(w.arch)
    d, f = w.dims
    if s.has_k and w.k is None:
        raise UserError(f"sae_path: a {w.arch} SAE needs its k, which the source does not record", field="sae_path")
    w = with_centring(w, s.centred)
    args: list = [d, f] + ([int(w.k)] if s.has_k else []) + ([list(w.group_sizes)] if s.grouped else [])
    state = dict(dict_class(w.arch)(*args).state_dict())
    if s.layout == "matrix":
        state.update(W_enc=w.W_enc, b_enc=w.b_enc, W_dec=w.W_dec)
    else:
        state.update({"encoder.weight": w.W_enc.T.contiguous(), "encoder.bias": w.b_enc,
                      "decoder.weight": w.W_dec.T.contiguous()})
    state[s.decoder_bias] = w.b_dec
    if s.threshold_shape == "scalar":
        state["threshold"] = w.threshold.reshape(()).clone()
    elif s.threshold_shape == "per_latent":
        state["threshold"] = w.threshold.reshape(f).clone()
    return s.dictionary[1], {k: v.detach().float() if v.is_floating_point() else v for k, v in state.items()}


SAELENS_LAYOUT_VERSION = "6.0.0"


def saelens_files(w: SAEWeights, metadata: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg.json, tensors) as SAELens 6.x's ``save_model`` writes them. BatchTopK and Matryoshka become
    ``jumprelu`` with the threshold repeated per latent, as SAELens saves its own."""
    d, f = w.dims
    # sae_lens_version names the cfg.json layout (SAELens 6); without it SAELens reads the file as a
    # pre-6.0 config and drops the metadata
    metadata = {"sae_lens_version": SAELENS_LAYOUT_VERSION, **metadata}
    cfg: dict[str, Any] = {"d_in": d, "d_sae": f, "dtype": "float32", "device": "cpu",
                           "apply_b_dec_to_input": w.centred, "normalize_activations": "none",
                           "reshape_activations": "none", "metadata": metadata}
    tensors = {"W_enc": w.W_enc.contiguous(), "b_enc": w.b_enc.contiguous(), "W_dec": w.W_dec.contiguous(),
               "b_dec": w.b_dec.contiguous()}
    s = spec(w.arch)
    cfg["architecture"] = s.saelens
    if s.saelens == "topk":
        cfg.update(k=int(w.k), rescale_acts_by_decoder_norm=False)
    elif s.saelens == "jumprelu":
        tensors["threshold"] = w.threshold.reshape(-1).expand(f).contiguous().clone()
        if s.threshold_shape == "scalar":  # SAELens saves its own BatchTopK / Matryoshka so
            details: dict[str, Any] = {"k": w.k}
            if w.group_sizes:
                details["matryoshka_widths"] = group_bounds(w.group_sizes)[1:]
            cfg["metadata"] = {**metadata, "training_architecture": "matryoshka_batchtopk" if w.group_sizes
                               else "batchtopk", "training_architecture_details": details}
    return cfg, tensors


def sparsify_files(w: SAEWeights, where: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg.json, tensors) as sparsify's ``save_to_disk`` writes them: per-row TopK SAEs only."""
    if spec(w.arch).activation != "row_top_k":
        raise UserError(f"sae_path {where}: a {w.arch} SAE cannot be written for sparsify, whose SparseCoder "
                        f"keeps exactly k latents per row and has no threshold inference; export it with "
                        f"--format saelens", field="sae_path")
    w = with_centring(w, True)
    d, f = w.dims
    cfg = {"activation": "topk", "expansion_factor": max(f // d, 1), "normalize_decoder": False,
           "num_latents": f, "k": int(w.k), "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": d}
    return cfg, {"encoder.weight": w.W_enc.T.contiguous(), "encoder.bias": w.b_enc.contiguous(),
                 "W_dec": w.W_dec.contiguous(), "b_dec": w.b_dec.contiguous()}
