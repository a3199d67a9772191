"""``saevlm train``: SAEs on a stored activation set (arXiv 2504.02821), flags of the authors'
``sae_train.py``.

The SAE classes and trainers are dictionary_learning's; the loop is ours:

- shuffled batches are gathered straight from the memory-mapped store (no per-sample Python
  indexing), deterministic by ``--seed`` and the step;
- several SAEs (``--expansion_factor 1 2 4`` and/or ``--sae_model a b``) share every batch, so the
  data is read once for all of them;
- inputs are scaled to unit mean squared norm (the norm factor from the whole training store);
  saved weights are rescaled so they take raw activations, as dictionary_learning's ``trainSAE`` does;
- checkpoints keep dictionary_learning's layout: ``<checkpoints_dir>/trainer_<i>/ae.pt``,
  ``config.json``, ``checkpoints/ae_<step>.pt``, each with an ``*eval.json`` beside it;
- an interrupted run resumes from its last resume point (``--checkpoint_every`` and every
  ``--save_steps``) with optimiser, scheduler and trainer state, continuing the same schedule and
  batch sequence.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from saevlm.commandline import CommandConfig, DeviceOption, ProgressOption, opt
from saevlm.config import paper_default
from saevlm.data import artifacts as A
from saevlm.errors import UserError
from saevlm.sae.archs import ARCH_CHOICES, ARCH_SPECS, canonical_arch
from saevlm.sae.archs import spec as spec_of
from saevlm.sae.checkpoint import WEIGHTS_JSON, record_weights

if TYPE_CHECKING:
    from saevlm.data.manifest import Provenance


def _paper() -> dict:
    """The paper's training settings (configs/paper.yaml, commands.train)."""
    from saevlm.config import paper_defaults
    return paper_defaults("train")


PAPER = _paper()


DATA, SAE, OPTIMISATION, RUN = ("data", "SAE (several values of --sae_model / --expansion_factor train together)",
                                "optimisation", "run")  # --help sections


@dataclass(frozen=True, kw_only=True)
class TrainConfig(CommandConfig, DeviceOption, ProgressOption):
    """`saevlm train`: train SAEs (dictionary_learning's classes) on a store. Build it in Python or
    from the flags; the defaults are the paper's recipe (configs/paper.yaml, ``commands.train``)."""

    COMMAND: ClassVar[str] = "train"

    activations_dir: str = opt(group=DATA)
    """training store (saevlm extract / synthetic)"""
    val_activations_dir: str | None = opt(None, group=DATA)
    """validation store (same model, hook and width); without it, validation uses the first --val_rows rows
    of the training store (flagged in the output)"""
    val_rows: int = opt(100000, group=DATA)
    """rows of the validation store used by evaluations (default: %(default)s)"""
    checkpoints_dir: str = opt('./output_dir', group=DATA)
    """output root (default: %(default)s, as the authors' sae_train.py); see --layout"""
    sae_model: list[str] = opt(paper_default("train", "sae_model"), choices=ARCH_CHOICES, group=SAE, metavar='ARCH')
    """standard | top_k | batch_top_k | matryoshka_batch_top_k | jumprelu (default: batch_top_k;
    matroyshka_batch_top_k is the authors' spelling of matryoshka_batch_top_k)"""
    expansion_factor: list[int] = opt(paper_default("train", "expansion_factor"), group=SAE)
    """dict_size = expansion x activation width (default: 16)"""
    k: int = opt(paper_default("train", "k"), group=SAE)
    """active latents per input (default: %(default)s)"""
    group_fractions: list[float] = opt(paper_default("train", "group_fractions"), group=SAE)
    """Matryoshka group fractions, summing to 1 (default: the paper's MS setting)"""
    auxk_alpha: float = opt(paper_default("train", "auxk_alpha"), group=SAE)
    """(default: %(default)s)"""
    threshold_beta: float = opt(paper_default("train", "threshold_beta"), group=SAE)
    """(default: %(default)s)"""
    threshold_start_step: int = opt(paper_default("train", "threshold_start_step"), group=SAE)
    """(default: %(default)s)"""
    l1_penalty: float = opt(0.1, group=SAE)
    """standard (ReLU/L1) only (default: %(default)s)"""
    sparsity_penalty: float = opt(1.0, group=SAE)
    """jumprelu only (default: %(default)s)"""
    bandwidth: float = opt(0.001, group=SAE)
    """jumprelu only (default: %(default)s)"""
    lr: float | None = opt(None, group=OPTIMISATION)
    """learning rate (default: the authors' rule 2e-4 / sqrt(dict_size / 2^14))"""
    batch_size: int = opt(paper_default("train", "batch_size"), group=OPTIMISATION)
    """(default: %(default)s)"""
    steps: int = opt(paper_default("train", "steps"), group=OPTIMISATION)
    """(default: %(default)s)"""
    warmup_steps: int = opt(paper_default("train", "warmup_steps"), group=OPTIMISATION)
    """(default: %(default)s)"""
    decay_start: int | None = opt(None, group=OPTIMISATION)
    """step where the lr decay starts (default: steps - 1, i.e. the paper's 109,999 for 110,000 steps)"""
    seed: list[int] = opt([0], group=OPTIMISATION)
    """initialisation and batch order (default: 0). Several seeds train one SAE per seed (and per
    architecture and expansion) in the same data pass: the batch order is the first seed's, the
    initialisation each SAE's own (compare them with saevlm stability)"""
    no_normalize: bool = opt(False, group=OPTIMISATION)
    """do not scale inputs to unit mean squared norm (the paper scales them)"""
    save_steps: int | None = opt(None, group=RUN, metavar='N')
    """write checkpoints/ae_<step>.pt every N steps: at steps 0, N, 2N, ... below --steps, as the authors'
    sae_train.py (their scripts: 20000 -> ae_0 ... ae_100000; ae_<s> holds the weights after s updates)"""
    save_at: list[int] | None = opt(None, group=RUN, metavar='STEP')
    """write ae_<step>.pt at exactly these steps instead (default, without --save_steps either: 100000 when
    training longer, the checkpoint the paper evaluates)"""
    layout: str = opt('auto', choices=['auto', 'authors', 'trainers'], group=RUN)
    """where each SAE goes. authors: <checkpoints_dir>/<activations_dir
    name>_<sae_model>_<k>_x<expansion>/trainer_0/ (the authors' sae_train.py; their later --sae_path
    values point there); trainers: <checkpoints_dir>/trainer_<i>/ for every SAE of a sweep. auto
    (default): authors for a single SAE, trainers for a sweep"""
    log_steps: int = opt(1000, group=RUN)
    """validate and log every this many steps (default: %(default)s)"""
    checkpoint_every: int = opt(5000, group=RUN)
    """write resume state every this many steps (default: %(default)s)"""
    engine: str = opt('sparse', choices=['sparse', 'dictionary_learning'], group=RUN)
    """how each update is computed. sparse (default): dictionary_learning's update for top_k / batch_top_k
    / matryoshka_batch_top_k with sparse codes (one dense GEMM per step, the same numbers;
    docs/training.md); dictionary_learning: its trainer.update, dense. Other architectures always use
    dictionary_learning's"""
    tf32: bool = opt(True, action="optional", group=RUN)
    """on CUDA, fp32 matmuls in TF32 (default: on; recorded in run.json). No effect on CPU"""
    data_on_device: str = opt('auto', choices=['auto', 'yes', 'no'], group=RUN)
    """copy the whole training store to the GPU once and gather batches there. auto (default): on CUDA when
    it takes under half the free GPU memory"""
    autocast: str = opt('none', flags=('--autocast', '--dtype'), choices=['none', 'fp32', 'bf16'], group=RUN)
    """mixed precision of the SAE forward on GPU: none (= fp32, default) | bf16 (--dtype is the older name)"""
    allow_nonfinite: bool = opt(False, group=RUN)
    """open a store that records NaN / inf values (refused by default); training itself still refuses
    them when it meets them (the weights would become NaN)"""
    wandb: bool = opt(False, group=RUN)
    """log to Weights & Biases (off by default)"""
    wandb_project: str = opt('saevlm', group=RUN)
    """(default: %(default)s)"""

    def validate(self) -> None:
        """Impossible hyperparameters, and an architecture's option given to architectures that do
        not read it, are refused when the config is made (see validate_hyperparameters)."""
        validate_hyperparameters(self)
        unread = unread_flags(self)
        if unread:
            name = unread[0]
            readers = [a for a, s in ARCH_SPECS.items() if name in s.config_fields]
            raise UserError(f"--{name} {_shown(getattr(self, name))}: an option of {' / '.join(readers)} only; "
                            f"--sae_model {' '.join(self.sae_model)} does not read it (leave it out, or train "
                            f"an architecture that reads it)")

    def sae_options(self, arch: str):
        """The training options of ``arch`` alone (archs.ArchSpec.options), from the flat flags."""
        spec = spec_of(canonical_arch(arch))
        return spec.options(**{f: (tuple(v) if isinstance(v := getattr(self, f), list) else v)
                               for f in spec.config_fields})

    @property
    def dtype(self) -> str:
        """The name run.json has always recorded for --autocast: bf16 or fp32."""
        return "bf16" if self.autocast == "bf16" else "fp32"

    @property
    def data_seed(self) -> int:
        """The seed of the batch order (the first --seed: every SAE of a run sees the same batches)."""
        return self.seed[0]

    @property
    def resolved_decay_start(self) -> int:
        return self.decay_start if self.decay_start is not None else self.steps - 1

    def hyperparameters(self) -> dict:
        """What a resumed run must agree on (recorded in run.json's identity)."""
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (
            (k, getattr(self, k)) for k in (
                "k", "group_fractions", "auxk_alpha", "threshold_beta", "threshold_start_step",
                "l1_penalty", "sparsity_penalty", "bandwidth", "batch_size", "steps", "warmup_steps",
                "seed", "no_normalize", "dtype"))} | {"decay_start": self.resolved_decay_start}
        # one seed is recorded as the number it always was, so that older runs still resume
        values["seed"] = self.seed[0] if len(self.seed) == 1 else list(self.seed)
        return values


CONFIG = TrainConfig


@dataclass
class SAESpec:
    arch: str
    expansion_factor: int
    dict_size: int
    lr: float
    directory: Path
    seed: int = 0
    seed_in_name: bool = False  # several --seed values: the seed tells the SAEs apart

    @property
    def name(self) -> str:
        return f"{self.arch}_x{self.expansion_factor}" + (f"_seed{self.seed}" if self.seed_in_name else "")


def checkpoint_steps(steps: int, every: int | None, at: list[int] | None) -> list[int]:
    """Steps whose weights are saved as ``ae_<step>.pt`` (the weights after that many updates).

    ``every`` is the authors' ``--save_steps``: their ``trainSAE`` gets ``range(0, steps, every)``
    and saves before the update of each listed step, i.e. after ``step`` updates, so
    ``--save_steps 20000 --steps 110000`` gives ae_0, ae_20000, ..., ae_100000.
    """
    if every is not None:
        return list(range(0, steps, every))
    if at is not None:
        return sorted(set(at))
    return [100_000] if steps > 100_000 else []


def validate_hyperparameters(args: TrainConfig) -> None:
    """Impossible values stop at once with the flag, what is allowed and what was given (before any
    data is read; the trainers would otherwise train a NaN SAE or crash deep inside torch)."""
    def finite(flag: str, value) -> None:
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{flag} {value}: expected a finite number")

    for flag in ("lr", "auxk_alpha", "threshold_beta", "l1_penalty", "sparsity_penalty", "bandwidth"):
        finite(flag, getattr(args, flag))
    for f in args.group_fractions:
        finite("group_fractions", f)
    if len(set(args.seed)) != len(args.seed):
        raise UserError(f"--seed {' '.join(map(str, args.seed))}: each seed once (one SAE per seed)")
    if args.lr is not None and args.lr <= 0:
        raise UserError(f"--lr {args.lr}: the learning rate must be positive (default: the authors' rule "
                        f"2e-4 / sqrt(dict_size / 2^14))")
    if args.auxk_alpha < 0:
        raise UserError(f"--auxk_alpha {args.auxk_alpha}: the auxiliary-loss weight must be >= 0 "
                        f"(paper: {PAPER['auxk_alpha']})")
    if not 0 <= args.threshold_beta <= 1:
        raise UserError(f"--threshold_beta {args.threshold_beta}: an EMA decay, must lie in [0, 1] "
                        f"(paper: {PAPER['threshold_beta']})")
    for flag in ("l1_penalty", "sparsity_penalty"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be >= 0")
    if args.bandwidth <= 0:
        raise UserError(f"--bandwidth {args.bandwidth}: must be positive")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def unread_flags(args: TrainConfig) -> list[str]:
    """Architecture options set away from their defaults that no chosen architecture reads (its
    archs.ArchSpec.options): e.g. --group_fractions for BatchTopK alone."""
    import dataclasses

    read = {f for a in args.sae_model for f in spec_of(canonical_arch(a)).config_fields}
    by_arch = {f for s in ARCH_SPECS.values() for f in s.config_fields}
    unread = []
    for f in dataclasses.fields(args):
        if f.name not in by_arch or f.name in read:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(args, f.name) != default:
            unread.append(f.name)
    return unread


def validate_args(args: TrainConfig, act_dim: int, train_rows: int) -> None:
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: expected a positive number of steps")
    if not 0 <= args.warmup_steps < args.steps:
        raise UserError(f"--warmup_steps {args.warmup_steps}: must be >= 0 and below --steps {args.steps}")
    decay = args.decay_start
    if decay is not None and not (args.warmup_steps < decay < args.steps):
        raise UserError(f"--decay_start {decay}: must lie after --warmup_steps {args.warmup_steps} "
                        f"and before --steps {args.steps}")
    if args.batch_size < 1 or args.batch_size > train_rows:
        raise UserError(f"--batch_size {args.batch_size}: must be between 1 and the {train_rows} rows "
                        f"of --activations_dir")
    for e in args.expansion_factor:
        if e < 1:
            raise UserError(f"--expansion_factor {e}: expected positive integers")
    if args.k < 1:
        raise UserError(f"--k {args.k}: expected a positive integer")
    smallest = min(args.expansion_factor) * act_dim
    if any(spec_of(canonical_arch(a)).has_k for a in args.sae_model) and args.k > smallest:
        raise UserError(f"--k {args.k}: larger than the dictionary ({smallest} latents = expansion "
                        f"{min(args.expansion_factor)} x width {act_dim})")
    if any(spec_of(canonical_arch(a)).grouped for a in args.sae_model):
        fr = args.group_fractions
        if any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise UserError(f"--group_fractions {' '.join(map(str, fr))}: must be positive and sum to 1 "
                            f"(they sum to {sum(fr):.6g})")
        from saevlm.sae.archs import group_sizes
        for e in args.expansion_factor:
            sizes = group_sizes(fr, e * act_dim)
            if min(sizes) < 1:
                raise UserError(f"--group_fractions: with dict size {e * act_dim} the groups are "
                                f"{sizes}; every group needs at least one latent")
    if args.save_steps is not None and args.save_at is not None:
        raise UserError("--save_steps N (every N steps) and --save_at STEP... (these steps): give one")
    if args.save_steps is not None and args.save_steps < 1:
        raise UserError(f"--save_steps {args.save_steps}: expected a positive period (checkpoints every N steps)")
    for s in args.save_at or []:
        if not 0 <= s < args.steps:
            raise UserError(f"--save_at {s}: must lie in [0, --steps {args.steps})")
    for flag in ("log_steps", "checkpoint_every", "val_rows"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: expected a positive integer")
    if args.threshold_start_step < 0:
        raise UserError(f"--threshold_start_step {args.threshold_start_step}: expected >= 0")


def _trainer_kwargs(args, spec: SAESpec, act_dim: int, device, store_prov: Provenance, decay_start: int) -> dict:
    """dictionary_learning's trainer arguments for one SAE: the shared ones, and its architecture's
    own options (TrainConfig.sae_options) and nothing of another architecture's."""
    import dataclasses

    hook = store_prov.hook
    options = {k: (list(v) if isinstance(v, tuple) else v)
               for k, v in dataclasses.asdict(args.sae_options(spec.arch)).items()}
    kwargs: dict[str, Any] = dict(
        steps=args.steps, activation_dim=act_dim, dict_size=spec.dict_size,
        layer=hook.layer if hook.layer is not None else -1, lm_name=store_prov.model.name or "unknown",
        lr=spec.lr, warmup_steps=args.warmup_steps, decay_start=decay_start, seed=spec.seed, device=str(device),
        wandb_name=spec.name, submodule_name=hook.attachment_point, **options,
        # the L1 / JumpReLU sparsity warm-up must end before the decay starts
        sparsity_warmup_steps=min(2000, decay_start - 1),
    )
    if "k" in options:  # JumpReLU reads --k as its target L0
        kwargs["target_l0"] = float(options["k"])
    from saevlm.sae.archs import trainer_class
    accepted = inspect.signature(trainer_class(spec.arch).__init__).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def guard_threshold_update(trainer) -> None:
    """Make a trainer's threshold update survive a batch in which no latent fires.

    dictionary_learning's ``update_threshold`` (BatchTopK, Matryoshka, TopK) sets the threshold
    to the smallest positive code of the batch, or to the Python float 0.0 when there is none;
    torch refuses a float as the ``threshold`` buffer (TypeError), so training stopped on an
    all-zero batch, a batch of NaN rows or a one-row store. The same rule is applied here with the 0
    as a tensor (unset threshold -> 0, else threshold * beta); batches where something fires go to
    the library's own update unchanged. Both engines call ``trainer.update_threshold``."""
    import torch

    original = getattr(trainer, "update_threshold", None)
    if original is None or getattr(original, "_saevlm_guarded", False):
        return

    def update_threshold(f):
        with torch.no_grad():
            fired = bool((f > 0).any())
        if fired:
            return original(f)
        threshold = trainer.ae.threshold
        with torch.no_grad():
            if threshold < 0:
                threshold.zero_()
            else:
                threshold.mul_(trainer.threshold_beta)

    update_threshold._saevlm_guarded = True  # type: ignore[attr-defined]
    trainer.update_threshold = update_threshold


def _trainer_state(trainer) -> dict:
    """Everything a trainer needs to continue exactly where it stopped."""
    import torch

    extra = {k: v for k, v in vars(trainer).items()
             if not k.startswith("_") and isinstance(v, (torch.Tensor, int, float, bool))}
    return {"ae": trainer.ae.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "extra": extra}


def _load_trainer_state(trainer, state: dict) -> None:
    trainer.ae.load_state_dict(state["ae"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    for k, v in state["extra"].items():
        setattr(trainer, k, v)


def payload_fingerprint(store) -> str | None:
    """SHA-256 over the CRC-32 of every shard file of a store (from its manifest): the same
    activations give the same value wherever the store now lies. None without checksums."""
    import hashlib

    shards = store.manifest.shards
    if not shards or not all(s.checksums for s in shards):
        return None
    h = hashlib.sha256()
    for s in shards:
        for name in sorted(s.checksums):
            h.update(f"{name}:{s.checksums[name].get('crc32')}:{s.checksums[name].get('bytes')};".encode())
    return h.hexdigest()


def identity_difference(old: dict | None, new: dict) -> str | None:
    """The first setting that differs between a recorded run and this one, in words; None when
    it is the same run. Content decides, not paths: a training store that moved (same shard
    checksums) is the same data."""
    if not isinstance(old, dict):
        return "run.json records no identity"
    same_payload = old.get("activations_payload_sha256") is not None and \
        old.get("activations_payload_sha256") == new.get("activations_payload_sha256")
    for key in sorted(set(old) | set(new)):
        if key in ("activations_dir", "activations_payload_sha256") or key == "activations_provenance" and same_payload:
            continue
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            sub = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
            return f"{key}.{sub} was {a.get(sub)!r}, now {b.get(sub)!r}"
        if key == "trainers":
            def combos(ts):
                return [(t.get("arch"), t.get("expansion_factor")) for t in ts or []]
            return f"the SAEs (--sae_model x --expansion_factor) were {combos(a)}, now {combos(b)}"
        return f"{key} was {a!r}, now {b!r}"
    if old.get("activations_payload_sha256") and new.get("activations_payload_sha256") and not same_payload:
        return "the training activations differ (the shard checksums of --activations_dir are not the recorded ones)"
    return None


def _save_torch_atomic(obj, path: Path) -> None:
    from saevlm.data.atomic import atomic_save_torch

    atomic_save_torch(path, obj)


def _raw_weights(trainer, norm_factor: float) -> dict:
    """The SAE's weights for raw (unnormalised) activations: biases and threshold scaled up, as
    dictionary_learning's trainSAE saves them."""
    import copy

    ae = copy.deepcopy(trainer.ae)
    if norm_factor != 1.0:
        ae.scale_biases(norm_factor)
    # contiguous: the sparse engine stores some matrices latent-major in memory
    return {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}


def _num(value: float | None, spec: str) -> str:
    """A number of eval.json for the table (null there: undefined)."""
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else \
        format("n/a", ">" + spec.split(".")[0])


def _r2_text(r2: float | None, digits: int) -> str:
    """R2 for print: "undefined" when the activations do not vary (evaluate gives None)."""
    return "undefined" if r2 is None or not math.isfinite(r2) else f"{r2:.{digits}f}"


def _norm_factor(store, rows_limit: int = 2_000_000) -> float:
    """sqrt(mean ||x||^2) over the training store (its first ``rows_limit`` rows). A store whose
    activations are all 0 (a hook that never fired, a zero-filled file) is refused: nothing can be
    learned from it and the factor would divide by 0."""
    total, n, sum_x = 0.0, 0, None
    for _, chunk in store.iter_chunks(65536):
        chunk = chunk[: max(0, rows_limit - n)].astype("float64")
        total += float((chunk ** 2).sum())
        sum_x = chunk.sum(0) if sum_x is None else sum_x + chunk.sum(0)
        n += len(chunk)
        if n >= rows_limit:
            break
    if not math.isfinite(total):
        raise UserError(f"activations_dir {store.path}: holds NaN / inf values (read with --allow_nonfinite); an SAE "
                        f"cannot be trained on them: every weight would become NaN. Extract the store again without "
                        f"the non-finite rows (e.g. --autocast none)", field="activations_dir")
    if not total > 0:
        raise UserError(f"activations_dir {store.path}: every activation of its {n} rows is 0; an SAE cannot "
                        f"be trained on it (was it extracted at the hook point you meant?)", field="activations_dir")
    spread = total - float((sum_x ** 2).sum()) / n  # sum ||x - mean||^2
    if n < 2 or spread <= 1e-9 * total:
        raise UserError(f"activations_dir {store.path}: its {n} row(s) are all the same vector; an SAE cannot be "
                        f"trained on activations that do not vary (R2 is undefined)", field="activations_dir")
    return math.sqrt(total / n)


POSTFIX_EVERY = 25  # steps between two readings of the loss for the progress bar


def run(args: TrainConfig) -> int:
    """``saevlm train`` (its config: flags, ``--config FILE`` and the paper's defaults applied)."""
    return train(args)


def train(cfg: TrainConfig) -> int:
    """Train the SAEs ``cfg`` asks for (resuming an interrupted run); 0 when done."""
    from saevlm.data.atomic import check_not_own_input
    from saevlm.distributed import init_distributed

    validate_hyperparameters(cfg)
    check_not_own_input(cfg.checkpoints_dir, "checkpoints_dir", [("activations_dir", cfg.activations_dir),
                                                                   ("val_activations_dir", cfg.val_activations_dir)])
    dist, device = init_distributed(cfg.device)
    if cfg.autocast == "bf16" and device.type != "cuda":
        raise UserError(f"--autocast bf16: autocast is for GPUs; the device is {device}")
    if cfg.autocast == "bf16":
        from saevlm.device import check_bf16
        check_bf16(device, "autocast")
    if cfg.data_on_device == "yes" and device.type != "cuda":
        print(f"note: --data_on_device yes on {device}: the training store is read into memory once",
              file=sys.stderr)
    if device.type == "cuda":
        import torch
        # TF32 for fp32 matmuls (the encoder GEMM); --no-tf32 keeps full fp32
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    job = TrainingRun(cfg, dist, device)
    if job.already_complete:
        print(f"{job.out}: training complete already, nothing to do")
        return 0
    job.resume()
    job.loop()
    job.finish()
    return 0


class TrainingRun:
    """One training job: the stores, one dictionary_learning trainer per SAE of this process, the
    norm factor and resume state, and the loop that feeds every SAE the same batches.

    Steps: ``__init__`` (open and check the stores, plan the SAEs, claim the output directory),
    :meth:`resume` (each SAE from its ``resume.pt``), :meth:`loop` (updates, evaluations,
    checkpoints, resume points) and :meth:`finish` (final weights, eval.json, run.json)."""

    def __init__(self, cfg: TrainConfig, dist, device):
        from saevlm.data.atomic import OutputLock, ensure_writable_dir
        from saevlm.data.store import ActivationStore

        self.cfg, self.dist, self.device = cfg, dist, device
        self.train_store = ActivationStore(cfg.activations_dir, field="activations_dir",
                                           allow_nonfinite=cfg.allow_nonfinite)
        self.act_dim = self.train_store.dim
        self.val_store, self.val_note = self._open_validation()
        validate_args(cfg, self.act_dim, self.train_store.num_rows)
        if cfg.data_on_device == "yes":  # before any work: the copy must leave room to train
            from saevlm.device import check_fits_on_device
            check_fits_on_device(device, self.train_store.num_rows * self.act_dim * 4,
                                 f"the training store ({self.train_store.num_rows:,} rows x {self.act_dim}, fp32)",
                                 "data_on_device")
        self.decay_start = cfg.resolved_decay_start
        if self.decay_start <= cfg.warmup_steps:
            raise UserError(f"--steps {cfg.steps} with --warmup_steps {cfg.warmup_steps}: the default "
                            f"--decay_start (steps - 1) must lie after the warm-up; lower --warmup_steps")
        self.save_steps = checkpoint_steps(cfg.steps, cfg.save_steps, list(cfg.save_at) if cfg.save_at else None)
        self.out = self._output_dir()
        self.all_specs = self._plan()
        self.identity = {
            "activations_dir": str(self.train_store.path.resolve()),
            "activations_provenance": self.train_store.provenance.to_json(),
            "image_ids_sha256": self.train_store.manifest.image_ids_sha256,
            "activations_payload_sha256": payload_fingerprint(self.train_store),
            "trainers": [{"dir": s.directory.name, "arch": s.arch, "expansion_factor": s.expansion_factor,
                          "dict_size": s.dict_size, "lr": s.lr, **({"seed": s.seed} if s.seed_in_name else {})}
                         for s in self.all_specs],
            "hyperparameters": cfg.hyperparameters(),
        }
        # one training run per directory at a time (rank 0 holds the lock for a torchrun job)
        self._lock = (OutputLock(self.out, "checkpoints_dir") if dist.is_main
                      else ensure_writable_dir(self.out, "checkpoints_dir"))
        self.run_json = self.out / A.RUN_JSON
        self.already_complete = self._check_existing_run()
        # this process's share of a sweep (all of it without torchrun): SAE j goes to rank
        # j % world_size, so one launcher keeps every GPU of a node busy
        self.specs = [sp for j, sp in enumerate(self.all_specs) if j % dist.world_size == dist.rank]
        self.trainers: list = []
        self.updates: list = []  # one update(step, x) per trainer: the sparse engine's or the trainer's
        self.engines: list[str] = []
        self.starts: list[int] = []
        self.norm_factor = 1.0
        self.start_step = 0

    # -- setup
    def _open_validation(self):
        from saevlm.data.store import ActivationStore

        cfg, train_store = self.cfg, self.train_store
        if not cfg.val_activations_dir:
            print("warning: no --val_activations_dir; evaluations use training rows", file=sys.stderr)
            return train_store, "train (no --val_activations_dir: validation on training rows)"
        val = ActivationStore(cfg.val_activations_dir, field="val_activations_dir",
                              allow_nonfinite=cfg.allow_nonfinite)
        if val.dim != self.act_dim:
            raise UserError(f"--val_activations_dir {val.path}: width {val.dim}, but --activations_dir "
                            f"{train_store.path} has width {self.act_dim}; they must come from the same hook point")
        diff = train_store.provenance.compatible_with(val.provenance, aspects=("model", "hook"))
        if diff is not None:
            a, b = ((diff.ours, diff.theirs) if diff.aspect == "model" else
                    (train_store.provenance.hook.to_json(), val.provenance.hook.to_json()))
            raise UserError(f"--val_activations_dir {val.path}: {diff.aspect} {b!r} differs from the "
                            f"training store's {a!r}")
        same = val.path.resolve() == train_store.path.resolve() or (
            val.manifest.content_sha256 is not None and val.manifest.content_sha256 == train_store.manifest.content_sha256
            and val.manifest.image_ids_sha256 == train_store.manifest.image_ids_sha256)
        if same:
            print(f"warning: --val_activations_dir {val.path} holds the same images as --activations_dir; "
                  f"R2, L0 and dead latents are then measured on training rows, not held-out ones", file=sys.stderr)
            return val, "val (the training images: --val_activations_dir is the training store)"
        return val, "val"

    def _combos(self) -> list[tuple[str, int, int]]:
        """(architecture, expansion, seed) of every SAE of the run, in trainer order."""
        cfg = self.cfg
        return [(name, e, seed) for name in cfg.sae_model for e in cfg.expansion_factor for seed in cfg.seed]

    def _output_dir(self) -> Path:
        cfg = self.cfg
        combos = self._combos()
        layout = cfg.layout if cfg.layout != "auto" else ("authors" if len(combos) == 1 else "trainers")
        out = Path(cfg.checkpoints_dir)
        if layout == "authors":
            if len(combos) != 1:
                raise UserError(f"--layout authors: holds one SAE per directory, but {len(combos)} were "
                                f"requested; use --layout trainers for a sweep")
            # the authors' sae_train.py: save_dir = checkpoints_dir / f"{store name}_{sae_model}_{k}_x{E}"
            name, e, _ = combos[0]
            out = out / f"{Path(cfg.activations_dir).name}_{name}_{cfg.k}_x{e}"  # the name as given
        return out

    def _plan(self) -> list[SAESpec]:
        from saevlm.sae.archs import default_lr

        cfg = self.cfg
        return [SAESpec(canonical_arch(name), e, e * self.act_dim,
                        cfg.lr if cfg.lr is not None else default_lr(e * self.act_dim), self.out / f"trainer_{i}",
                        seed=seed, seed_in_name=len(cfg.seed) > 1)
                for i, (name, e, seed) in enumerate(self._combos())]

    def _check_existing_run(self) -> bool:
        """True when run.json says this very run is complete; refuse a run with other settings."""
        if not self.run_json.exists():
            return False
        try:
            old = json.loads(self.run_json.read_text())
            assert isinstance(old, dict)
        except (OSError, ValueError, AssertionError):
            raise UserError(f"--checkpoints_dir {self.out}: its run.json is damaged; move the directory away or "
                            f"choose another --checkpoints_dir") from None
        diff = identity_difference(old.get("identity"), json.loads(json.dumps(self.identity)))
        if diff is not None:
            raise UserError(f"--checkpoints_dir {self.out}: holds a run with other settings: {diff} (see "
                            f"{self.run_json}); pass the same flags and data to resume it, or use another "
                            f"--checkpoints_dir")
        return bool(old.get("complete"))

    # -- resume
    def resume(self) -> None:
        """Build the trainers; each SAE continues from its own resume.pt (so any number of
        processes can resume a run); compute the norm factor when nothing recorded it."""
        import torch

        from saevlm.data.atomic import atomic_write_json
        from saevlm.sae.archs import trainer_class

        cfg = self.cfg
        torch.manual_seed(cfg.data_seed)
        self.trainers = [trainer_class(spec.arch)(**_trainer_kwargs(cfg, spec, self.act_dim, self.device,
                                                                    self.train_store.provenance, self.decay_start))
                         for spec in self.specs]
        for tr in self.trainers:
            guard_threshold_update(tr)
        self.starts = [0] * len(self.specs)
        norm_factor = 1.0 if cfg.no_normalize else None
        for i, (spec, tr) in enumerate(zip(self.specs, self.trainers)):
            f = spec.directory / A.RESUME_PT
            if f.exists():
                try:
                    st = torch.load(f, map_location=self.device, weights_only=False)
                except Exception as e:  # noqa: BLE001 - a truncated or damaged pickle
                    raise UserError(f"--checkpoints_dir {f}: the resume state is damaged ({type(e).__name__}); "
                                    f"delete it to train this SAE again from step 0") from None
                _load_trainer_state(tr, st["trainer"])
                torch.set_rng_state(st["torch_rng"])
                self.starts[i] = int(st["step"])
                norm_factor = float(st["norm_factor"])
        self.start_step = min(self.starts) if self.starts else cfg.steps
        self.last_resume_point = self.start_step
        if any(self.starts):
            print(f"resuming {len(self.specs)} SAE(s) at step(s) {sorted(set(self.starts))} of {cfg.steps}",
                  file=sys.stderr)
        self.norm_factor = norm_factor if norm_factor is not None else _norm_factor(self.train_store)
        self._choose_engines()
        if self.dist.is_main:
            A.TrainRun.write_json(self.run_json, self._run_record(complete=False))
        for spec, tr, engine in zip(self.specs, self.trainers, self.engines):
            spec.directory.mkdir(parents=True, exist_ok=True)
            (spec.directory / "checkpoints").mkdir(exist_ok=True)
            config = {"trainer": {**tr.config, "norm_factor": self.norm_factor},
                      "buffer": {"activations_dir": str(self.train_store.path.resolve()),
                                 "batch_size": cfg.batch_size},
                      "saevlm": {"arch": spec.arch, "expansion_factor": spec.expansion_factor, "seed": spec.seed,
                                 "engine": engine,
                                 # its weights' sizes and CRC-32s are in weights.json (checked on load;
                                 # without this key, an SAE from an older saevlm)
                                 "weights_record": WEIGHTS_JSON,
                                 "provenance": self.train_store.provenance.to_json(),
                                 "image_ids_sha256": self.train_store.manifest.image_ids_sha256}}
            atomic_write_json(spec.directory / A.TRAINER_CONFIG, config)

    def _choose_engines(self) -> None:
        """The update of each trainer: the sparse engine where it covers the architecture (after
        the resume state is loaded: it re-lays the weights out in memory), else the trainer's."""
        import torch

        from saevlm.sae import sparse_engine

        cfg = self.cfg
        self.updates, self.engines = [], []
        for spec, tr in zip(self.specs, self.trainers):
            if self._engine_of(spec.arch) == "sparse":
                matmul_dtype = torch.bfloat16 if cfg.autocast == "bf16" else None
                self.updates.append(sparse_engine.SparseEngine(tr, spec.arch, matmul_dtype).update)
                self.engines.append("sparse")
            else:
                if cfg.engine == "sparse":
                    print(f"note: {spec.name}: the sparse engine covers {', '.join(sparse_engine.SPARSE_ARCHS)}; "
                          f"{spec.arch} trains with dictionary_learning's update", file=sys.stderr)
                self.updates.append(tr.update)
                self.engines.append("dictionary_learning")

    def _engine_of(self, arch: str) -> str:
        from saevlm.sae.sparse_engine import covers

        return "sparse" if self.cfg.engine == "sparse" and covers(arch) else "dictionary_learning"

    def _run_record(self, complete: bool) -> dict:
        """run.json: the identity a resume must match, plus how this process computes (engine and
        precision may change between resumes: they compute the same update)."""
        return {"identity": self.identity, "complete": complete, "norm_factor": self.norm_factor,
                "validation": self.val_note,
                "engine": {s.directory.name: self._engine_of(s.arch) for s in self.all_specs},
                "precision": {"autocast": self.cfg.autocast,
                              "tf32": bool(self.cfg.tf32) if self.device.type == "cuda" else None,
                              "device": self.device.type}}

    # -- evaluation and saving
    def evaluate(self, weights_by_trainer: list[dict] | None = None) -> list[dict]:
        """R^2, L0, dead / dense fractions of every SAE on the validation rows (with saved raw
        weights when given, else the live normalised trainer)."""
        import copy

        from saevlm.sae.evaluate import evaluate_sae
        from saevlm.sae.inference import encode_codes

        results = []
        val_rows = min(self.cfg.val_rows, self.val_store.num_rows)
        for i, tr in enumerate(self.trainers):
            ae, scale, arch = tr.ae, self.norm_factor, self.specs[i].arch
            if weights_by_trainer is not None:
                ae = copy.deepcopy(tr.ae)
                ae.load_state_dict(weights_by_trainer[i])
                scale = 1.0
            ae.eval()
            # validation batches of --batch_size rows in store order, as the authors' val loader,
            # so their batch-averaged R^2 (with and without the threshold) is logged beside ours
            bs = self.cfg.batch_size
            chunks = (self.val_store.read(s, min(s + bs, val_rows)) for s in range(0, val_rows, bs))
            topk = ((lambda x, ae=ae: ae.encode(x, use_threshold=False))
                    if spec_of(arch).activation == "threshold" else None)
            results.append(evaluate_sae(lambda x, ae=ae, arch=arch: encode_codes(ae, arch, x), ae.decode, chunks,
                                        self.specs[i].dict_size, device=self.device, scale=scale,
                                        batch_metrics=True, encode_batch_topk=topk))
        return results

    def save_checkpoints(self, done: int) -> None:
        from saevlm.data.atomic import atomic_write_json

        weights = [_raw_weights(tr, self.norm_factor) for tr in self.trainers]
        for spec, w, ev in zip(self.specs, weights, self.evaluate(weights)):
            _save_torch_atomic(w, spec.directory / "checkpoints" / f"ae_{done}.pt")
            record_weights(spec.directory, spec.directory / "checkpoints" / f"ae_{done}.pt")
            atomic_write_json(spec.directory / "checkpoints" / f"ae_{done}_eval.json",
                              {"step": done, "validation": self.val_note, **ev})

    def write_resume_point(self, step: int) -> None:
        import torch

        for spec, tr in zip(self.specs, self.trainers):
            _save_torch_atomic({"step": step, "trainer": _trainer_state(tr), "norm_factor": self.norm_factor,
                                "torch_rng": torch.get_rng_state()}, spec.directory / A.RESUME_PT)

    # -- the loop
    def _data_on_device(self) -> bool:
        """Whether the whole training store is copied to the device once (--data_on_device)."""
        cfg = self.cfg
        if cfg.data_on_device != "auto":
            return cfg.data_on_device == "yes"
        if self.device.type != "cuda":
            return False  # the memory-mapped reader already feeds a CPU step
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        return self.train_store.num_rows * self.act_dim * 4 < free // 2

    def _batches(self):
        """The batches of every step from ``start_step``, on the device: the store's shuffled
        sequence, gathered from memory-mapped shards or from one copy of the store on the device."""
        import torch
        from tqdm import tqdm

        cfg, store = self.cfg, self.train_store
        if not self._data_on_device():
            pin = self.device.type == "cuda"  # page-locked: the copy overlaps the previous step
            for batch in store.random_batches(cfg.batch_size, seed=cfg.data_seed, start_step=self.start_step):
                host = torch.from_numpy(batch)
                yield (host.pin_memory() if pin else host).to(self.device, non_blocking=True)
            return
        data = torch.empty((store.num_rows, self.act_dim), dtype=torch.float32, device=self.device)
        chunk = 65536
        for start, rows in tqdm(store.iter_chunks(chunk), total=-(-store.num_rows // chunk), unit="chunk",
                                desc=f"training store -> {self.device}", disable=cfg.no_progress or not self.dist.is_main,
                                file=sys.stderr, dynamic_ncols=True):
            data[start:start + len(rows)] = torch.from_numpy(rows).to(self.device)
        for idx in store.random_batch_indices(cfg.batch_size, seed=cfg.data_seed, start_step=self.start_step):
            yield data.index_select(0, torch.from_numpy(idx).to(self.device))

    def loop(self) -> None:
        """Steps ``start_step .. steps``: one shuffled batch per step shared by every SAE."""
        import torch
        from tqdm import tqdm

        cfg, dist = self.cfg, self.dist
        wandb_run = None
        if cfg.wandb:
            import wandb
            wandb_run = wandb.init(project=cfg.wandb_project, config=self.identity["hyperparameters"])
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.autocast == "bf16"
                    else torch.autocast("cpu", enabled=False))
        batches = self._batches()
        rank_tag = f" [rank {dist.rank}]" if dist.world_size > 1 else ""
        bar = tqdm(total=cfg.steps, initial=self.start_step, unit="step",
                   disable=cfg.no_progress or not dist.is_main,
                   desc=f"train {len(self.specs)} SAE(s){rank_tag}", dynamic_ncols=True, file=sys.stderr)
        t0, samples = time.time(), 0
        if self.start_step == 0 and 0 in self.save_steps:
            self.save_checkpoints(0)  # the authors' ae_0.pt: the initial weights
        with bar:
            for step in range(self.start_step, cfg.steps):
                x = next(batches)
                if self.norm_factor != 1.0:
                    x = x / self.norm_factor
                try:
                    with autocast:  # a resumed SAE that is already past this step skips it
                        losses = [update(step, x) if step >= self.starts[i] else float("nan")
                                  for i, update in enumerate(self.updates)]
                except torch.OutOfMemoryError:  # torch.cuda's is the same class
                    raise self._out_of_memory(step) from None
                samples += len(x)
                done = step + 1
                if done in self.save_steps:
                    self.save_checkpoints(done)
                if done % cfg.checkpoint_every == 0 or done in self.save_steps:
                    self.write_resume_point(done)
                    self.last_resume_point = done
                rate = samples / max(time.time() - t0, 1e-9)
                if done % cfg.log_steps == 0 or done == cfg.steps:
                    evals = self.evaluate()
                    bar.write(f"step {done}{rank_tag}: " + "  ".join(
                        f"{s.name}: R2 {_r2_text(ev['r2'], 3)} L0 {ev['l0']:.1f} dead {ev['dead_fraction']:.2f}"
                        for s, ev in zip(self.specs, evals)) + f"  ({rate:,.0f} samples/s)")
                    if wandb_run is not None:
                        stats = {f"{s.name}/{k}": v for s, ev in zip(self.specs, evals) for k, v in ev.items()
                                 if k in ("r2", "l0", "dead_fraction", "mse")}
                        stats.update({f"{s.name}/loss": float(v) for s, v in zip(self.specs, losses) if v is not None})
                        wandb_run.log(stats, step=done)
                if done % POSTFIX_EVERY == 0 or done == cfg.steps:
                    # read the loss now and then: float() of the sparse engine's device tensor waits
                    # for the GPU; StandardTrainer.update (ReLU/L1) returns None
                    first = float(losses[0]) if losses and losses[0] is not None else float("nan")
                    bar.set_postfix(loss=f"{first:.4g}", samples_s=f"{rate:,.0f}")
                bar.update(1)
        if wandb_run is not None:
            wandb_run.finish()

    def _out_of_memory(self, step: int) -> UserError:
        """The one line for a device out-of-memory during a step: the batch, the SAEs, and where
        a rerun of the same command resumes."""
        saes = ", ".join(f"{s.name} ({s.dict_size:,} latents)" for s in self.specs)
        last = self.last_resume_point
        resume = (f"rerun the same command to resume from step {last}" if last else
                  "no resume point was written yet, so a rerun starts at step 0")
        return UserError(f"--batch_size {self.cfg.batch_size}: training ran out of {self.device} memory at step "
                         f"{step} with {len(self.specs)} SAE(s) on it: {saes}; free memory on the device and "
                         f"{resume}, or train fewer SAEs per run or use a smaller --batch_size (a new "
                         f"--checkpoints_dir)", field="batch_size")

    def finish(self) -> None:
        """Final weights (for raw activations) and eval.json per SAE; run.json marked complete."""
        from saevlm.distributed import barrier

        weights = [_raw_weights(tr, self.norm_factor) for tr in self.trainers]
        evals = self.evaluate(weights) if self.trainers else []
        # the resume point first: if the final save fails (a full disk), a rerun finds the trained
        # state and only writes the files, instead of starting again
        self.write_resume_point(self.cfg.steps)
        for spec, w, ev in zip(self.specs, weights, evals):
            _save_torch_atomic(w, spec.directory / A.AE_PT)
            record_weights(spec.directory, spec.directory / A.AE_PT)
            A.EvalResult.write_json(spec.directory / A.EVAL_JSON, {"step": self.cfg.steps, "validation": self.val_note,
                                                                  **ev})
        barrier(self.dist)  # every process has written its SAEs
        if not self.dist.is_main:
            return
        A.TrainRun.write_json(self.run_json, self._run_record(complete=True))
        print(f"{'SAE':<28} {'dir':<12} {'R2':>7} {'L0':>7} {'dead':>6} {'dense':>6} {'MSE':>10}")
        for spec in self.all_specs:
            ev = json.loads((spec.directory / A.EVAL_JSON).read_text())
            print(f"{spec.name:<28} {spec.directory.name:<12} {_r2_text(ev['r2'], 4):>7} {_num(ev['l0'], '7.2f')} "
                  f"{_num(ev['dead_fraction'], '6.3f')} {_num(ev['dense_fraction'], '6.3f')} {_num(ev['mse'], '10.4g')}")
        print(f"wrote {len(self.all_specs)} SAE(s) under {self.out.resolve()} (trainer_<i>/ae.pt, config.json, "
              f"eval.json{', checkpoints/ae_<step>.pt' if self.save_steps else ''})")
