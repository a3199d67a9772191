"""Training step: the sparse engine against dictionary_learning's ``trainer.update`` (issue: fast training).

One run, both engines, the paper's shapes: d=1024, k=20, batch 4096, expansion x1 / x16 / x64
(BatchTopK; Matryoshka at x16), fp32 on this machine's CPU. Each (engine, shape) runs in its own
process, so its peak memory is its own. Per step it times ``update`` after two warm-up steps
(step 0 is the geometric-median initialisation) with 5 % of the latents dead before every step,
so AuxK runs as it does mid-training. The same process then counts what one step does (a
dispatch mode over every aten op): matmul FLOPs (2 x nnz x d for a sparse x dense product) and
the bytes each op reads and writes (tensor arguments + outputs; views are free). From those
counts the README gets a roofline estimate of the paper's full sweep on one GPU.

    python benchmarks/bench_train_engine.py [--write-readme] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

D, K, BATCH = 1024, 20, 4096
# (arch, expansion, timed steps of dictionary_learning, timed steps of the sparse engine)
CASES = [("batch_top_k", 1, 4, 6), ("batch_top_k", 16, 3, 5), ("batch_top_k", 64, 2, 4),
         ("matryoshka_batch_top_k", 16, 3, 5)]
PAPER_FRACTIONS = [0.0625, 0.125, 0.25, 0.5625]

# one H100 SXM (NVIDIA's datasheet, dense): fp32 CUDA cores, TF32 tensor cores, HBM3 bandwidth
GPU = {"name": "H100 SXM", "fp32": 67e12, "tf32": 494.7e12, "bandwidth": 3.35e12}
SWEEP = {"expansions": [1, 2, 4, 8, 16, 64], "archs": 2, "hook_points": 5, "steps": 110_000}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(arch: str, expansion: int, engine: str, steps: int) -> dict:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import saevlm  # noqa: F401  (torchvision fix)
    from saevlm._compat import install_torchvision_fix
    install_torchvision_fix()
    from saevlm.sae.archs import trainer_class
    from saevlm.sae.sparse_engine import SparseEngine

    torch.set_num_threads(os.cpu_count() or 1)
    F = D * expansion
    kw = dict(steps=1000, activation_dim=D, dict_size=F, k=K, layer=0, lm_name="bench", warmup_steps=1,
              decay_start=900, threshold_start_step=1, seed=0, device="cpu")
    if arch == "matryoshka_batch_top_k":
        kw["group_fractions"] = PAPER_FRACTIONS
    tr = trainer_class(arch)(**kw)
    update = SparseEngine(tr, arch).update if engine == "sparse" else tr.update
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(D, D, generator=g) / D ** 0.5  # correlated activations, not white noise
    batches = [torch.randn(BATCH, D, generator=g) @ mix + 0.1 for _ in range(3)]

    def kill():
        tr.num_tokens_since_fired[: F // 20] = tr.dead_feature_threshold

    base = _rss_bytes()
    times = []
    for step in range(steps + 2):
        kill()
        t = time.perf_counter()
        update(step, batches[step % 3])
        if step >= 2:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    counts = {"flops": 0, "bytes": 0}

    def nbytes(t) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        if t.layout == torch.sparse_csr:
            return sum(x.numel() * x.element_size() for x in (t.crow_indices(), t.col_indices(), t.values()))
        return t.numel() * t.element_size()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "is_view", False):
                return out
            positional = [a for a in args if isinstance(a, torch.Tensor)]  # operands (not out=)
            flat = positional + [a for a in (kwargs or {}).values() if isinstance(a, torch.Tensor)]
            outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
            counts["bytes"] += sum(nbytes(t) for t in flat + outs)
            name = func.__name__.split(".")[0]
            sparse = [t for t in positional if t.layout == torch.sparse_csr]
            dense2 = [t for t in positional if t.layout == torch.strided and t.dim() == 2]
            if sparse and name == "sparse_sampled_addmm":  # <a_row, b_col> per entry: 2 x nnz x inner
                counts["flops"] += 2 * sparse[0].values().numel() * dense2[0].shape[1]
            elif sparse and dense2:  # CSR (n x m) x dense (m x d): 2 x nnz x d
                counts["flops"] += 2 * sparse[0].values().numel() * dense2[-1].shape[-1]
            elif name in ("mm", "addmm", "bmm", "baddbmm") and len(dense2) >= 2:
                a, b = dense2[-2], dense2[-1]
                counts["flops"] += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            return out

    kill()
    with Count():
        update(steps + 2, batches[0])
    return {"arch": arch, "expansion": expansion, "engine": engine, "steps": steps,
            "s_per_step": sum(times) / len(times), "peak_bytes": peak, "step_bytes": peak - base, **counts}


def run_case(arch: str, expansion: int, engine: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", arch, str(expansion), engine, str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def sweep_estimate(results: list[dict]) -> list[str]:
    """Roofline time of the paper's sweep on one GPU from the measured per-step counts: per SAE
    max(FLOPs / peak, bytes / bandwidth), counts interpolated linearly in dict size between the
    measured BatchTopK expansions."""
    by = {(r["engine"], r["expansion"]): r for r in results if r["arch"] == "batch_top_k"}
    measured = sorted({e for _, e in by})

    def counts(engine: str, e: int) -> tuple[float, float]:
        if (engine, e) in by:
            r = by[engine, e]
            return r["flops"], r["bytes"]
        lo = max(x for x in measured if x < e)
        hi = min(x for x in measured if x > e)
        w = (e - lo) / (hi - lo)
        (f0, b0), (f1, b1) = counts(engine, lo), counts(engine, hi)
        return f0 + w * (f1 - f0), b0 + w * (b1 - b0)

    n_saes = SWEEP["archs"] * SWEEP["hook_points"]
    lines = []
    for engine, peak_name in (("dictionary_learning", "fp32"), ("sparse", "tf32")):
        total, x64 = 0.0, 0.0
        for e in SWEEP["expansions"]:
            f, b = counts(engine, e)
            t = max(f / GPU[peak_name], b / GPU["bandwidth"]) * SWEEP["steps"]
            total += t * n_saes
            if e == 64:
                x64 = t
        lines.append((engine, peak_name, total, x64))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--quick", action="store_true", help="x1 only (a smoke run of this script)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        arch, e, engine, steps = args.child
        print(json.dumps(child(arch, int(e), engine, int(steps))))
        return
    cases = CASES[:1] if args.quick else CASES
    results = []
    for arch, e, dl_steps, sp_steps in cases:
        for engine, steps in (("dictionary_learning", dl_steps), ("sparse", sp_steps)):
            r = run_case(arch, e, engine, steps)
            print(f"{arch} x{e} {engine}: {r['s_per_step']:.3f} s/step, peak {r['peak_bytes'] / 2**30:.2f} GiB",
                  flush=True)
            results.append(r)
    import torch

    name = {"batch_top_k": "BatchTopK", "matryoshka_batch_top_k": "Matryoshka BatchTopK"}
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, CPU, fp32. d={D}, k={K}, batch {BATCH}, 5 % of latents dead before each "
             f"step (AuxK on); one process per row; steps timed after two warm-up steps.", "",
             "| SAE | dict size | engine | steps timed | s/step | steps/s | speed-up | peak RSS | step memory "
             "| GFLOP/step | GB moved/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i in range(0, len(results), 2):
        ref, sp = results[i], results[i + 1]
        for r in (ref, sp):
            lines.append(f"| {name[r['arch']]} x{r['expansion']} | {D * r['expansion']:,} | {r['engine']} | "
                         f"{r['steps']} | {r['s_per_step']:.3f} | {1 / r['s_per_step']:.2f} | "
                         f"{ref['s_per_step'] / r['s_per_step']:.2f}x | {r['peak_bytes'] / 2**30:.2f} GiB | "
                         f"{r['step_bytes'] / 2**30:.2f} GiB | {r['flops'] / 1e9:,.0f} | {r['bytes'] / 1e9:.1f} |")
    lines += ["", "Step memory: peak RSS minus the RSS before the first update (the step's own tensors). "
              "GFLOP / GB: counted over one step by a dispatch mode (matmuls; bytes read + written per op)."]
    if not args.quick:
        est = sweep_estimate(results)
        lines += ["", f"Estimate of the paper's sweep ({SWEEP['archs']} architectures x {SWEEP['hook_points']} "
                  f"hook points x expansions {', '.join(map(str, SWEEP['expansions']))}, {SWEEP['steps']:,} steps, "
                  f"BatchTopK counts) on one {GPU['name']} at its datasheet peak ({GPU['fp32'] / 1e12:.0f} TFLOP/s "
                  f"fp32, {GPU['tf32'] / 1e12:.0f} TFLOP/s TF32, {GPU['bandwidth'] / 1e12:.2f} TB/s): per step "
                  f"max(FLOPs / peak, bytes / bandwidth) from the counts above (x2, x4, x8 interpolated in dict size).",
                  "", "| engine | matmul precision | whole sweep | one x64 SAE (110k steps) |", "|---|---|---|---|"]
        for engine, prec, total, x64 in est:
            lines.append(f"| {engine} | {prec} | {total / 3600:.1f} h | {x64 / 60:.1f} min |")
        lines += ["", "A roofline is a lower bound: real kernels reach some fraction of peak. The bytes count "
                  "every op's operands as if nothing stayed in cache, so it errs high. No GPU was lent to the "
                  "session that wrote this table; the measured GPU figure is still to be added."]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_extract_multipoint import _write_section
        _write_section(Path(__file__).with_name("README.md"), "train-engine", text)


if __name__ == "__main__":
    main()
