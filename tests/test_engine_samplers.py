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
    # Unguarded, each run failed with probability about 2/3. The three processes start side by side: each pays
    # torch's and diffusers' import, which on a machine with a spare core costs half as much at once as in turn.
    runs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(3)]
    try:
        outs = [(*run.communicate(timeout=120), run.returncode) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for stdout, stderr, code in outs:
        assert code == 0 and stdout.strip().splitlines()[-1] == "ok", stdout + stderr[-2000:]
