"""Cold start of the README's first command against plain diffusers on the same model, in fresh processes.

Run from the repository root:  python benchmarks/cold_start.py [--rounds 3]

Each round starts three new Python processes, interleaved, and times them by wall clock:

- floor: only the imports every diffusers text-to-image program pays (torch, transformers' CLIPTextModel,
  diffusers' StableDiffusionPipeline), nothing loaded or run;
- diffusers: the reference, the same imports plus loading the shipped tiny-shapes folder and 20 Euler steps at
  CFG 7.5 for the same prompt, image saved, no guard;
- guardforge: `guardforge generate "a red circle on a blue background"` with the reference's settings spelled
  out (Euler, 20 steps, CFG 7.5, seed 1, CPU) and a fresh GUARDFORGE_HOME (prompt guard, engine, output
  guard, PNG with infotext, audit row); no GUARDFORGE_* variable of the caller's shell reaches it.

The order of the three rotates from round to round, so no one of them always pays the cold page cache.

It prints the median of each, guardforge's ratio to the reference, and each process's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a blue background"
MODEL = ROOT / "guardforge" / "assets" / "models" / "tiny-shapes"

FLOOR = """
import torch
from transformers import CLIPTextModel
from diffusers import StableDiffusionPipeline
"""

DIFFUSERS = FLOOR + f"""
import sys
from diffusers import EulerDiscreteScheduler
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[2], local_files_only=True)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
image = pipe({PROMPT!r}, num_inference_steps=20, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(1)).images[0]
image.save(sys.argv[1])
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one child process (its own rusage, from wait4)."""
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{command[:3]} exited with {child.returncode}:\n{tail}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    times: dict[str, list[float]] = {"floor": [], "diffusers": [], "guardforge": []}
    peaks: dict[str, float] = {}
    guardforge_cli = [sys.executable, "-m", "guardforge", "generate", PROMPT, "--seed", "1", "--sampler", "Euler",
                      "--steps", "20", "--cfg", "7.5"]
    caller = {k: v for k, v in os.environ.items() if not k.startswith("GUARDFORGE_")}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            env = dict(caller, GUARDFORGE_HOME=str(Path(scratch) / f"home{round_index}"), GUARDFORGE_DEVICE="cpu",
                       HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
            runs = {
                "floor": [sys.executable, "-c", FLOOR],
                "diffusers": [sys.executable, "-c", DIFFUSERS, str(Path(scratch) / f"ref{round_index}.png"),
                              str(MODEL)],
                "guardforge": guardforge_cli,
            }
            order = list(runs)[round_index % 3:] + list(runs)[:round_index % 3]
            for name in order:
                command = runs[name]
                seconds, peak = timed(command, env)
                times[name].append(seconds)
                peaks[name] = max(peaks.get(name, 0.0), peak)
                print(f"round {round_index + 1} {name:<10} {seconds:6.2f} s", flush=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    print()
    for name in times:
        print(f"{name:<10} median {median[name]:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[name])})"
              f"  peak RSS {peaks[name]:.0f} MiB")
    print(f"guardforge / diffusers: {median['guardforge'] / median['diffusers']:.2f}x; "
          f"above the import floor: guardforge {median['guardforge'] - median['floor']:.2f} s, "
          f"diffusers {median['diffusers'] - median['floor']:.2f} s")


if __name__ == "__main__":
    main()
