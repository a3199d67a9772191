"""Benchmark: torch's CPU threads on a shared machine. ``saevlm demo --steps 200`` wall time,
alone and with a second job busy on one core, at saevlm's default thread setting and with one
thread (``OMP_NUM_THREADS=1``), in one run, as ratios.

    python benchmarks/bench_threads.py [--steps 200] [--write-readme]
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

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402

BUSY = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass\n"


def demo_wall(steps: int, env_extra: dict, busy: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SAEVLM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", **env_extra)
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            r = subprocess.run([sys.executable, "-m", "saevlm", "demo", "--steps", str(steps), "--output_dir",
                                str(Path(tmp) / "demo")], env=env, capture_output=True, text=True)
            wall = time.time() - t0
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if r.returncode != 0:
        raise SystemExit(f"demo failed:\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    cases = [("alone, saevlm's default threads", {}, False),
             ("alone, 1 thread (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}, False),
             ("second job on one core, saevlm's default threads", {}, True),
             ("second job on one core, 1 thread (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}, True),
             ("second job on one core, torch's own default (SAEVLM_THREADS=torch)", {"SAEVLM_THREADS": "torch"},
              True)]
    walls = []
    for name, env, busy in cases:
        walls.append(demo_wall(args.steps, env, busy))
        print(f"{name}: {walls[-1]:.1f} s", flush=True)
    lines = [f"`saevlm demo --steps {args.steps}` wall time (`python benchmarks/bench_threads.py --write-readme`; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; the second job is a Python "
             f"busy loop on one core):", "", "| case | wall (s) | vs. alone, default |", "|---|---|---|"]
    for (name, _, _), w in zip(cases, walls):
        lines.append(f"| {name} | {w:.1f} | {w / walls[0]:.2f}x |")
    lines += ["", f"With a second job running, saevlm's default takes {walls[2] / walls[3]:.2f}x the time of one "
              f"thread, and torch's own default {walls[4] / walls[3]:.2f}x (docs/install.md, 'CPU threads')."]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "threads", text)


if __name__ == "__main__":
    main()
