"""Benchmark: SAE training throughput, data loading included.

(1) ``saevlm train`` (batches gathered from the memory-mapped store) against the authors' data
    path: activations saved as ``.pt`` parts, a per-sample torch ``Dataset`` over them, and
    ``DataLoader(batch_size=4096, shuffle=True)`` feeding the same dictionary_learning trainer
    with the same config. Two widths: d=64 (data path dominates) and d=1024 (CLIP ViT-L width;
    on a CPU the SAE's matmuls dominate).
(2) Shared batches: ``--expansion_factor 1 2 4`` in one run versus three runs.

    python benchmarks/bench_train_throughput.py [--write-readme]
"""

from __future__ import annotations

import argparse
import bisect
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import saevlm  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402


class PartsDataset(torch.utils.data.Dataset):
    """The authors' data path: all .pt parts in memory, one row per __getitem__."""

    def __init__(self, parts: list[Path]):
        self.parts = [torch.load(p) for p in parts]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> torch.Tensor:
        j = bisect.bisect_right(self.offsets, i) - 1
        return self.parts[j][i - self.offsets[j]]


def make_store(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    from saevlm.data.writer import StoreWriter
    rng = np.random.default_rng(seed)
    acts = (rng.standard_normal((rows, dim)) * rng.uniform(0.2, 2, dim)).astype(np.float32)
    w = StoreWriter(path, kind="activations", dim=dim, dtype="fp32", images_per_shard=65536,
                    num_images=rows, provenance={"model": {"name": "bench", "source": "bench"},
                                                 "hook": {"layer": 0}}, software={})
    for i, a, b in w.shard_ranges():
        w.write_shard(i, acts[a:b], np.stack([np.arange(a, b), -np.ones(b - a, np.int64)], 1), a, b - a)
    w.finalize()
    parts = path.parent / f"{path.name}_parts"
    parts.mkdir()
    for i, a in enumerate(range(0, rows, 65536)):
        torch.save(torch.from_numpy(acts[a:a + 65536].copy()), parts / f"part_{i}.pt")


def authors_flow(store: Path, steps: int, batch: int, expansion: int, k: int) -> float:
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer

    from saevlm.sae.archs import default_lr
    t0 = time.perf_counter()
    ds = PartsDataset(sorted((store.parent / f"{store.name}_parts").glob("*.pt")))
    dim = ds[0].shape[0]
    torch.manual_seed(0)
    tr = BatchTopKTrainer(steps=steps, activation_dim=dim, dict_size=expansion * dim, k=k, layer=0,
                          lm_name="bench", lr=default_lr(expansion * dim), warmup_steps=1,
                          decay_start=steps - 1, threshold_start_step=1, device="cpu", seed=0)
    # the norm factor, as dictionary_learning's trainSAE computes it (100 batches)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
    sq = [float((b ** 2).sum(1).mean()) for _, b in zip(range(100), loader)]
    norm = float(np.sqrt(np.mean(sq)))
    step = 0
    while step < steps:
        for x in torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True):
            if step >= steps:
                break
            tr.update(step, x / norm)
            step += 1
    return time.perf_counter() - t0


def ours(store: Path, out: Path, steps: int, batch: int, expansions: list[int], k: int) -> float:
    from saevlm.cli import main
    t0 = time.perf_counter()
    rc = main(["train", "--activations_dir", str(store), "--checkpoints_dir", str(out),
               "--expansion_factor", *map(str, expansions), "--k", str(k), "--steps", str(steps),
               "--batch_size", str(batch), "--warmup_steps", "1", "--threshold_start_step", "1",
               "--log_steps", str(10 * steps), "--checkpoint_every", str(10 * steps),
               "--val_rows", "4096", "--device", "cpu", "--no_progress"])
    assert rc == 0
    return time.perf_counter() - t0


def data_path_only(store: Path, batch: int, n: int = 60) -> tuple[float, float]:
    """Seconds per batch delivered to the trainer: (authors' DataLoader, saevlm's store reader)."""
    from saevlm.data.store import ActivationStore
    ds = PartsDataset(sorted((store.parent / f"{store.name}_parts").glob("*.pt")))
    def epochs():
        while True:
            yield from torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)

    it = epochs()
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    t_ref = (time.perf_counter() - t0) / n
    batches = ActivationStore(store).random_batches(batch, seed=0)
    next(batches)
    t0 = time.perf_counter()
    for _ in range(n):
        torch.from_numpy(next(batches))
    return t_ref, (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    batch = 4096
    import dictionary_learning.training  # noqa: F401  (imports warmed before any timing)
    import saevlm.sae.train  # noqa: F401
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU. "
             f"BatchTopK, batch {batch}, {args.rows} stored rows (fp32), random activations. Times "
             f"include everything each flow does (data loading, norm factor; saevlm also writes "
             f"checkpoints and evaluates on 4,096 rows at the end).", "",
             "| config | flow | steps | seconds | samples/s | ratio |", "|---|---|---|---|---|---|"]
    data_lines = ["", "Data path alone (seconds per 4096-row batch handed to the trainer, mean of 60):", "",
                  "| width | authors' DataLoader | saevlm store reader | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for dim, expansion, k, steps in ((64, 2, 4, 150), (1024, 1, 20, 12)):
            store = tmp / f"store_{dim}"
            make_store(store, args.rows, dim)
            d_ref, d_ours = data_path_only(store, batch)
            data_lines.append(f"| d={dim} | {d_ref * 1e3:.2f} ms | {d_ours * 1e3:.2f} ms | {d_ref / d_ours:.1f}x |")
            t_ref = authors_flow(store, steps, batch, expansion, k)
            t_ours = ours(store, tmp / f"ck_{dim}", steps, batch, [expansion], k)
            cfg = f"d={dim}, x{expansion}, k={k}"
            lines.append(f"| {cfg} | authors' (.pt parts, per-sample Dataset, DataLoader) | {steps} | "
                         f"{t_ref:.2f} | {steps * batch / t_ref:,.0f} | 1.00x |")
            lines.append(f"| {cfg} | saevlm train (memory-mapped store) | {steps} | {t_ours:.2f} | "
                         f"{steps * batch / t_ours:,.0f} | {t_ref / t_ours:.2f}x |")
            print("\n".join(lines[-2:]), flush=True)
        store = tmp / "store_64"
        steps = 150
        t_one = ours(store, tmp / "shared", steps, batch, [1, 2, 4], 4)
        t_sep = sum(ours(store, tmp / f"sep_{e}", steps, batch, [e], 4) for e in (1, 2, 4))
    lines += data_lines
    lines += ["", "Shared batches (d=64, k=4, 150 steps, expansion factors 1 2 4):", "",
              "| flow | seconds | ratio |", "|---|---|---|",
              f"| 3 separate runs | {t_sep:.2f} | 1.00x |",
              f"| one run, --expansion_factor 1 2 4 | {t_one:.2f} | {t_sep / t_one:.2f}x |"]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "train-throughput", text)


if __name__ == "__main__":
    main()
