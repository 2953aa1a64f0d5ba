"""Peak memory of a streamed merge (guardforge models merge) against merging with both models loaded (A1111's way).

Three single-file checkpoints with SD 1.x's key names are generated (`--mb` each, float32), then each variant runs
in a fresh subprocess so that its peak resident set is its own:

- floors: python + torch imported, and guardforge with a Studio built, nothing read,
- loaded: A and B read whole with safetensors.torch.load_file, merged in memory, saved with save_file,
- streamed: Studio.merge_models (models/merge.py), the same merge.

What is compared is the resident memory each merge adds while it runs, sampled every 2 ms (importing torch peaks
higher than either merge, so the process's ru_maxrss hides them). Both write the same tensors (checked). Run from the
checkout:

    python benchmarks/merge_memory.py --mb 300
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class RssSampler:
    """The resident set's highest value while the block runs, above its value at the start, sampled every 2 ms:
    importing torch peaks higher than a merge of a few hundred MB, so ru_maxrss alone would hide the merge."""

    def __enter__(self):
        import threading

        self.start = rss_mb()
        self.high = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.high = max(self.high, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.high = max(self.high, rss_mb())

    @property
    def above_start(self) -> float:
        return self.high - self.start


def make_checkpoints(folder: Path, mb: int) -> None:
    """Three files of about `mb` MB: UNet-like blocks of 1024x1024 float32 tensors (4 MiB each), a text encoder
    and a VAE tensor, under the single-file names family detection reads as SD 1.x."""
    import torch
    from safetensors.torch import save_file

    models = folder / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    count = max(1, mb // 4)
    for seed, name in enumerate("abc"):
        generator = torch.Generator().manual_seed(seed)
        state = {f"model.diffusion_model.input_blocks.{i % 12}.{i // 12}.weight": torch.randn(1024, 1024,
                                                                                             generator=generator)
                 for i in range(count)}
        state["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.randn(768, generator=generator)
        state["first_stage_model.decoder.conv_out.weight"] = torch.randn(3, 128, 3, 3, generator=generator)
        save_file(state, str(models / f"{name}.safetensors"))
        del state


def run_floor() -> dict:
    import torch  # noqa: F401  (the floor is the import)

    return {"peak_mb": peak_mb()}


def run_loaded(home: Path) -> dict:
    from safetensors.torch import load_file, save_file

    folder = home / "models" / "Stable-diffusion"
    started = time.perf_counter()
    sampler = RssSampler().__enter__()
    theta_0 = load_file(str(folder / "a.safetensors"))
    theta_1 = load_file(str(folder / "b.safetensors"))
    for key in theta_0:
        if "model" in key and key in theta_1:
            theta_0[key] = (1 - 0.3) * theta_0[key] + 0.3 * theta_1[key]
    del theta_1
    save_file(theta_0, str(folder / "loaded.safetensors"), metadata={"format": "pt"})
    sampler.__exit__()
    return {"peak_mb": peak_mb(), "seconds": time.perf_counter() - started, "merge_mb": sampler.above_start}


def run_streamed(home: Path, merge: bool = True) -> dict:
    from guardforge.models.merge import MergeRequest
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=home, device="cpu", guard={"policy": "off"}))
    import torch  # noqa: F401  (the merge imports it on first use; its ~200 MB are not the merge's)

    if not merge:  # the floor of this variant: guardforge's imports and a Studio, nothing read
        return {"peak_mb": peak_mb()}
    started = time.perf_counter()
    with RssSampler() as sampler:
        result = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.3, name="streamed"))
    # merge_models also hashes A, B (for the recipe) and the result, as A1111's merger does; load_file does not.
    return {"peak_mb": peak_mb(), "seconds": time.perf_counter() - started, "sha256": result.sha256,
            "merge_mb": sampler.above_start}


def child(variant: str, home: str) -> None:
    runs = {"floor": lambda: run_floor(), "loaded": lambda: run_loaded(Path(home)),
            "streamed": lambda: run_streamed(Path(home)),
            "studio-floor": lambda: run_streamed(Path(home), merge=False)}
    print(json.dumps(runs[variant]()))


def measure(variant: str, home: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", variant, str(home)], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="size of each input checkpoint")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        home = Path(tmp)
        make_checkpoints(home, args.mb)
        size = (home / "models" / "Stable-diffusion" / "a.safetensors").stat().st_size / 2**20
        floor = measure("floor", home)["peak_mb"]
        loaded = measure("loaded", home)
        streamed = measure("streamed", home)
        studio_floor = measure("studio-floor", home)["peak_mb"]
        from safetensors.torch import load_file

        folder = home / "models" / "Stable-diffusion"
        import torch

        loaded_out = load_file(str(folder / "loaded.safetensors"))
        streamed_out = load_file(str(folder / "streamed.safetensors"))
        same = loaded_out.keys() == streamed_out.keys() and all(
            torch.equal(tensor, streamed_out[key]) for key, tensor in loaded_out.items())
        del loaded_out, streamed_out
        print(f"inputs: 2 x {size:.0f} MiB (float32), weighted sum alpha 0.3; same tensors written: {same}")
        # ru_maxrss is dominated by importing torch (more than a merge of a few hundred MB): shown for reference.
        print(f"peak RSS of the process: floor (python + torch) {floor:.0f} MiB, guardforge + Studio "
              f"{studio_floor:.0f} MiB, loaded {loaded['peak_mb']:.0f} MiB, streamed {streamed['peak_mb']:.0f} MiB")
        print(f"resident memory the merge adds (sampled every 2 ms): both models loaded (A1111's way) "
              f"{loaded['merge_mb']:.0f} MiB in {loaded['seconds']:.1f} s; streamed (guardforge) "
              f"{streamed['merge_mb']:.0f} MiB in {streamed['seconds']:.1f} s, hashing A, B and the result included")
        print(f"ratio loaded / streamed = {loaded['merge_mb'] / max(1.0, streamed['merge_mb']):.1f}x")


if __name__ == "__main__":
    main()
