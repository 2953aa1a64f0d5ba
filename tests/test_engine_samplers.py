"""Sampler lookups from several threads at once, in a fresh process (as two workers meet them after a start)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading
from guardforge.engine.samplers import check_sampler
barrier, errors = threading.Barrier(3), []
def ask(name):
    barrier.wait()
    try:
        check_sampler(name)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
threads = [threading.Thread(target=ask, args=(n,)) for n in ("Euler a", "DPM++ 2M", "UniPC")]
for t in threads: t.start()
for t in threads: t.join()
print(errors or "ok")
"""


def test_first_sampler_lookups_from_three_threads_at_once_all_succeed():
    """diffusers resolves its lazy attributes non-atomically; unguarded, two of three fresh processes here
    raised AttributeError ('no attribute EulerAncestralDiscreteScheduler')."""
    for _ in range(3):  # unguarded, each run failed with probability about 2/3
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "ok", out.stdout + out.stderr[-2000:]
