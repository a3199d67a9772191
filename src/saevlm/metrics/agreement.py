"""``saevlm benchmark-agreement``: how often a monosemanticity metric agrees with people.

Reads the authors' user-study archive ``metric_benchmark.tar.gz`` (or its extracted folder;
arXiv 2504.02821): ``pairs.csv`` (k_x, k_y, R_user, MS_x_dino, MS_y_dino, MS_x_clip, MS_y_clip),
``top16_images.csv`` (k, x_1..x_16) and ``activations.csv`` (k, a_1..a_N on ImageNet val).

For each metric, a pair counts as agreeing when the neuron with the higher score is the one the
users chose (a tie counts one half). Pairs are binned by |metric_x - metric_y| in bins of width
0.1 from 0 (the last bin, 0.8-0.9, also takes larger gaps), as in the paper's Table A1; reported
are the pairs and the agreement per bin, the mean over bins (the paper's headline, 82.8 % for
MS with DINOv2) and the pair-weighted agreement.

``R_user``: the users' majority choice. Read as "x was chosen" when R_user > 0.5 for values in
[0, 1] (a 0/1 label or a vote share), or R_user > 0 for signed values; ``--r_user_threshold``
overrides. The interpretation is printed, and an agreement far below one half is flagged (the
coding is then probably the other way round).

Metrics: the MS columns shipped in pairs.csv; MS recomputed from activations.csv with any
embeddings store (``--embeddings_path``, the same N images in the same order); and any per-neuron
score file (``--scores NAME=PATH``: ``.npy`` indexed by neuron id, or a CSV with columns k, score).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, DeviceOption, opt
from saevlm.data import artifacts as A
from saevlm.errors import UserError

BIN_WIDTH = 0.1
NUM_BINS = 9
PAPER_MS_DINO = {"pairs": [177, 139, 126, 138, 121, 90, 105, 63, 41],
                 "agreement": [.56, .66, .71, .81, .85, .93, .94, .96, 1.00], "headline": 0.828}


class BenchmarkArchive:
    """The archive as a folder or a .tar.gz, members found by file name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"--benchmark {self.path}: no such file or directory (the authors' "
                            f"metric_benchmark.tar.gz or its extracted folder)")
        self._tar = None
        if self.path.is_file():
            try:
                self._tar = tarfile.open(self.path)
            except tarfile.TarError as err:
                raise UserError(f"--benchmark {self.path}: not a readable tar archive ({err})") from None
            self._members = {Path(m.name).name: m for m in self._tar.getmembers() if m.isfile()}
        else:
            self._members = {p.name: p for p in self.path.rglob("*.csv")}

    def has(self, name: str) -> bool:
        return name in self._members

    def open(self, name: str):
        if name not in self._members:
            raise UserError(f"--benchmark {self.path}: no {name} inside (found: "
                            f"{', '.join(sorted(self._members)) or 'nothing'})")
        m = self._members[name]
        return self._tar.extractfile(m) if self._tar is not None else open(m, "rb")

    def read_csv(self, name: str, **kw):
        """A DataFrame (or, with chunksize, an iterator that streams the member)."""
        import pandas as pd
        if name not in self._members:
            self.open(name)  # raises the UserError naming what is there
        if self._tar is None:
            return pd.read_csv(self._members[name], **kw)
        return pd.read_csv(self._tar.extractfile(self._members[name]), **kw)


def user_chose_x(r_user: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, str]:
    r = np.asarray(r_user, dtype=np.float64)
    if threshold is None:
        threshold = 0.5 if r.min() >= 0 else 0.0
    return r > threshold, f"x chosen when R_user > {threshold:g}"


def agreement_table(metric_x: np.ndarray, metric_y: np.ndarray, chose_x: np.ndarray) -> dict:
    mx, my = np.asarray(metric_x, float), np.asarray(metric_y, float)
    valid = ~(np.isnan(mx) | np.isnan(my))
    mx, my, cx = mx[valid], my[valid], np.asarray(chose_x)[valid]
    agree = np.where(mx == my, 0.5, (mx > my) == cx)
    bins = np.minimum((np.abs(mx - my) / BIN_WIDTH + 1e-9).astype(int), NUM_BINS - 1)
    rows = []
    for b in range(NUM_BINS):
        sel = bins == b
        rows.append({"bin": f"{b * BIN_WIDTH:.1f}-{(b + 1) * BIN_WIDTH:.1f}", "pairs": int(sel.sum()),
                     "agreement": float(agree[sel].mean()) if sel.any() else None})
    filled = [r["agreement"] for r in rows if r["agreement"] is not None]
    return {"bins": rows, "mean_over_bins": float(np.mean(filled)) if filled else None,
            "pair_weighted": float(agree.mean()) if len(agree) else None,
            "pairs": int(valid.sum()), "pairs_without_score": int((~valid).sum())}


def ms_from_activations_csv(archive: BenchmarkArchive, embeddings_store, neurons_per_chunk: int = 256,
                            device="cpu") -> dict[int, float]:
    """MS of every neuron in activations.csv with the given embeddings (same N images)."""
    from saevlm.metrics.monosemanticity import MSAccumulator

    emb = embeddings_store.read(0, embeddings_store.num_rows)
    scores: dict[int, float] = {}
    for chunk in archive.read_csv("activations.csv", chunksize=neurons_per_chunk):
        ids = chunk.iloc[:, 0].to_numpy(dtype=np.int64)
        acts = chunk.iloc[:, 1:].to_numpy(dtype=np.float64).T  # [N, neurons]
        if acts.shape[0] != len(emb):
            raise UserError(f"--embeddings_path {embeddings_store.path}: {len(emb)} images, but "
                            f"activations.csv has {acts.shape[0]} per neuron; the embeddings must be of "
                            f"the same images in the same order (ImageNet val)")
        acc = MSAccumulator(len(ids), emb.shape[1], device)
        for s in range(0, len(emb), 8192):
            acc.add_dense(acts[s:s + 8192], emb[s:s + 8192])
        scores.update(zip(ids.tolist(), acc.scores().tolist()))
    return scores


def load_score_file(spec: str) -> tuple[str, dict[int, float]]:
    if "=" not in spec:
        raise UserError(f"--scores {spec}: expected NAME=PATH")
    name, path = spec.split("=", 1)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--scores {spec}: no such file {p}")
    if p.suffix == ".npy":
        arr = np.load(p)
        return name, dict(enumerate(arr.astype(float).tolist()))
    import pandas as pd
    df = pd.read_csv(p)
    if df.shape[1] < 2:
        raise UserError(f"--scores {spec}: expected columns k, score")
    return name, dict(zip(df.iloc[:, 0].astype(int), df.iloc[:, 1].astype(float)))


@dataclass(frozen=True, kw_only=True)
class BenchmarkAgreementConfig(CommandConfig, DeviceOption):
    """`saevlm benchmark-agreement`: agreement of MS (or any score) with the user study."""

    COMMAND: ClassVar[str] = "benchmark-agreement"

    benchmark: str = opt()
    """metric_benchmark.tar.gz or its extracted folder"""
    embeddings_path: list[str] = opt([], nargs="*")
    """embedding stores of the N images of activations.csv: MS is recomputed with each"""
    scores: list[str] = opt([], nargs="*", metavar='NAME=PATH')
    """other per-neuron scores to compare (.npy by neuron id, or CSV k,score)"""
    r_user_threshold: float | None = opt(None)
    """R_user above this means x was chosen (default: 0.5 for values in [0,1], else 0)"""
    output: str = opt('agreement.json')
    """JSON output (default: %(default)s)"""


CONFIG = BenchmarkAgreementConfig


def run(args: BenchmarkAgreementConfig) -> int:
    from saevlm.data.store import ActivationStore
    from saevlm.device import resolve_device

    archive = BenchmarkArchive(args.benchmark)
    pairs = archive.read_csv("pairs.csv")
    missing = {"k_x", "k_y", "R_user"} - set(pairs.columns)
    if missing:
        raise UserError(f"--benchmark {args.benchmark}: pairs.csv lacks columns {sorted(missing)} "
                        f"(has {list(pairs.columns)})")
    chose_x, rule = user_chose_x(pairs["R_user"].to_numpy(), args.r_user_threshold)
    kx, ky = pairs["k_x"].to_numpy(int), pairs["k_y"].to_numpy(int)
    metrics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag in ("dino", "clip"):
        cx, cy = f"MS_x_{tag}", f"MS_y_{tag}"
        if cx in pairs.columns and cy in pairs.columns:
            metrics[f"MS ({tag}, shipped)"] = (pairs[cx].to_numpy(float), pairs[cy].to_numpy(float))
    device = resolve_device(args.device)
    for path in args.embeddings_path:
        store = ActivationStore(path, field="embeddings_path")
        scores = ms_from_activations_csv(archive, store, device=device)
        name = f"MS (recomputed, {store.provenance.model.name or Path(path).name})"
        metrics[name] = _lookup(scores, kx, ky, name)
    for spec in args.scores:
        name, scores = load_score_file(spec)
        metrics[name] = _lookup(scores, kx, ky, name)
    if not metrics:
        raise UserError("no metric to compare: pairs.csv has no MS columns and neither "
                        "--embeddings_path nor --scores was given")
    results = {name: agreement_table(mx, my, chose_x) for name, (mx, my) in metrics.items()}
    out = {"benchmark": str(Path(args.benchmark).resolve()), "r_user_rule": rule,
           "pairs": int(len(pairs)), "metrics": results, "paper_ms_dino": PAPER_MS_DINO}
    A.AgreementResult.write_json(Path(args.output), out)
    print(f"{len(pairs)} pairs; {rule}")
    header = "metric".ljust(34) + "".join(f"{r['bin']:>10}" for r in next(iter(results.values()))["bins"])
    print(header + f"{'bin mean':>10}{'weighted':>10}")
    for name, res in results.items():
        print(name[:33].ljust(34) + "".join(f"{r['pairs']:>10}" for r in res["bins"]) + "   (pairs)")
        print("".ljust(34) + "".join(f"{r['agreement']:>10.2f}" if r["agreement"] is not None else f"{'-':>10}"
                                      for r in res["bins"])
              + f"{res['mean_over_bins']:>10.3f}{res['pair_weighted']:>10.3f}")
        if res["pair_weighted"] is not None and res["pair_weighted"] < 0.35:
            print(f"  warning: {name} agrees with people on {res['pair_weighted']:.0%} of pairs, far below "
                  f"chance; R_user may be coded the other way (see --r_user_threshold)")
    print("paper (MS, DINOv2): " + " ".join(f"{a:.2f}" for a in PAPER_MS_DINO["agreement"])
          + f"  headline {PAPER_MS_DINO['headline']:.3f}")
    print(f"wrote {args.output}")
    return 0


def _lookup(scores: dict[int, float], kx, ky, name) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in set(kx.tolist()) | set(ky.tolist()) if k not in scores]
    if len(missing) == len(set(kx.tolist()) | set(ky.tolist())):
        raise UserError(f"{name}: none of the benchmark's neurons has a score (e.g. neuron {missing[0]})")
    get = lambda k: scores.get(int(k), float("nan"))  # noqa: E731
    return np.array([get(k) for k in kx]), np.array([get(k) for k in ky])
