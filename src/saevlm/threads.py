"""How many CPU threads torch uses for a command (intra-op), chosen for the machine found.

torch's default is one thread per physical core of the machine. That oversubscribes two cases:
a container or job slot that may use fewer CPUs than the machine has (CPU affinity, a cgroup
quota), and a CPU shared with other busy jobs: torch's OpenMP threads wait for each other at every
parallel region, so one thread that loses its core stalls all of them (measured: ``saevlm demo``
took 1.7x as long with two threads as with one while a second job ran on one of two cores;
benchmarks/README.md). saevlm therefore uses

    threads = CPUs this process may use (affinity, cgroup quota) - other jobs running right now
              (- DataLoader workers while decoding images on the CPU), at least 1,

unless the user chose: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are respected as they are, and
``SAEVLM_THREADS`` = a number, or ``torch`` for torch's own default (docs/install.md).
"""

from __future__ import annotations

import os
import sys
import time

_OURS: dict[str, str] = {}  # the OMP_NUM_THREADS value saevlm itself set (not the user's)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 / v1 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    try:
        text = open("/sys/fs/cgroup/cpu.max").read().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
            p = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
            quota = q / p if q > 0 and p > 0 else None
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        n = min(n, max(1, int(quota + 0.5)))
    return max(1, n)


def _own_running_threads() -> int:
    """Threads of this process that are runnable now (torch's own pool may be spinning)."""
    n = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = open(f"/proc/self/task/{tid}/stat").read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2:].startswith("R"):
                n += 1
    except OSError:
        return 1
    return max(1, n)


def other_running_jobs(samples: int = 5, gap_s: float = 0.002) -> int:
    """Runnable tasks that are not this process's, right now (the 4th field of /proc/loadavg less
    this process's runnable threads, the median of a few samples; 0 where it cannot be read)."""
    counts = []
    for i in range(samples):
        try:
            running = int(open("/proc/loadavg").read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - _own_running_threads()))
        if i + 1 < samples:
            time.sleep(gap_s)
    counts.sort()
    return counts[len(counts) // 2]


def choose_threads(workers: int = 0) -> int | None:
    """The intra-op thread count to use, or None to leave torch's setting alone (the user chose)."""
    env = os.environ
    ours = _OURS.get("OMP_NUM_THREADS")
    if env.get("MKL_NUM_THREADS") or (env.get("OMP_NUM_THREADS") and env.get("OMP_NUM_THREADS") != ours):
        return None
    wish = env.get("SAEVLM_THREADS", "").strip().lower()
    if wish == "torch":
        return None
    if wish:
        try:
            return max(1, int(wish))
        except ValueError:
            print(f"warning: SAEVLM_THREADS={wish!r} is not a number or 'torch'; ignored", file=sys.stderr)
    cpus = usable_cpus()
    return max(1, cpus - other_running_jobs() - max(0, workers))


def configure_threads(workers: int = 0) -> int | None:
    """Apply :func:`choose_threads`: before torch is imported through OMP_NUM_THREADS (so its thread
    pool starts at that size), afterwards through ``torch.set_num_threads``. Returns the count set."""
    n = choose_threads(workers)
    if n is None:
        return None
    if "torch" in sys.modules:
        import torch
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = _OURS["OMP_NUM_THREADS"] = str(n)
    return n
