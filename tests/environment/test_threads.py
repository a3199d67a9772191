"""How many threads torch uses, chosen from the machine (saevlm.threads)."""

import sys


def test_threads_follow_the_machine_and_the_users_choice(monkeypatch):
    """saevlm's torch threads: the usable CPUs less the other running jobs less decoding workers;
    OMP_NUM_THREADS / SAEVLM_THREADS chosen by the user win."""
    import subprocess

    import saevlm.threads as th

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SAEVLM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(th, "usable_cpus", lambda: 8)
    monkeypatch.setattr(th, "other_running_jobs", lambda: 3)
    assert th.choose_threads() == 5 and th.choose_threads(workers=4) == 1 and th.choose_threads(workers=9) == 1
    monkeypatch.setenv("SAEVLM_THREADS", "6")
    assert th.choose_threads() == 6
    monkeypatch.setenv("SAEVLM_THREADS", "torch")
    assert th.choose_threads() is None
    monkeypatch.delenv("SAEVLM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert th.choose_threads() is None  # the user's
    # a real busy job is seen as one other running job (and this process's own threads are not)
    monkeypatch.undo()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        import time
        time.sleep(0.3)
        seen = max(th.other_running_jobs() for _ in range(5))
    finally:
        busy.kill()
        busy.wait()
    assert seen >= 1
