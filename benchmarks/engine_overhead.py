"""Engine overhead: Studio.generate against a plain diffusers call, and CPU precision settings on SD 1.5's UNet.

Run from the repository root:  python benchmarks/engine_overhead.py [--rounds 5] [--skip-unet] [--compile]

Part 1 builds a small SD-architecture model (random weights, written to a temporary guardforge home),
then times, interleaved, Studio.generate (guard off, image saved) and the same pipeline called directly
with the same prompt, seed, sampler and steps. It prints the median time ratio (goal <= 1.03) and the peak
memory each path added (resident set on CPU, sampled every 5 ms; torch.cuda.max_memory_allocated on CUDA).

Part 2 builds SD 1.5's UNet at full size with random weights and times denoising steps (batch 2, as with
CFG) at 256x256 and 512x512: plain fp32 against fp32 + channels_last, bf16 autocast + channels_last and,
with --compile, torch.compile (inductor), and prints the best of them as a ratio to fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import torch

# SD 1.5's UNet config (runwayml/stable-diffusion-v1-5 unet/config.json), written out so nothing is downloaded.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu",
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
    norm_eps=1e-5,
)


class PeakMemory:
    """Peak memory a block adds: CUDA allocator peak on CUDA, else resident set sampled by a thread."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self, base: int) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - base)
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()


def save_small_sd(folder: Path) -> None:
    """An SD 1.x-shaped model big enough that denoising, not bookkeeping, dominates each call."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.tiny import write_char_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 256), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
        num_hidden_layers=4, pad_token_id=1, vocab_size=1000, max_position_embeddings=77))
    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(folder.parent / ".tokenizer")))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                            ).save_pretrained(folder, safe_serialization=True)


def overhead(rounds: int, steps: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="gf-bench-"))
    save_small_sd(home / "models" / "Stable-diffusion" / "small-sd")
    os.environ["GUARDFORGE_HOME"] = str(home)
    os.environ["GUARDFORGE_GUARD__POLICY"] = "off"

    from diffusers import EulerAncestralDiscreteScheduler

    from guardforge.engine.request import GenerationRequest
    from guardforge.studio import Studio

    studio = Studio()
    request = GenerationRequest(prompt="a lighthouse on a cliff at dusk", negative_prompt="blurry", model="small-sd",
                                sampler="Euler a", steps=steps, seed=1234, cfg_scale=7)
    loaded = studio.pipelines.get("small-sd")
    pipe = loaded.pipeline
    width, height = studio.engine.size_for(loaded, request)

    def plain() -> None:
        base = pipe.scheduler
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(base.config)
        try:
            pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=steps,
                 guidance_scale=request.cfg_scale, width=width, height=height,
                 generator=torch.Generator("cpu").manual_seed(request.seed))
        finally:
            pipe.scheduler = base

    def ours() -> None:
        studio.generate(request)

    pipe.set_progress_bar_config(disable=True)
    ours(), plain()  # warm-up: model hash, first-call allocations
    times: dict[str, list[float]] = {"studio": [], "plain": []}
    peaks: dict[str, int] = {"studio": 0, "plain": 0}
    for _ in range(rounds):
        for name, fn in (("studio", ours), ("plain", plain)):
            with PeakMemory(loaded.device) as mem:
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], mem.peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"size": f"{width}x{height}", "steps": steps, "rounds": rounds, "median_s": med,
            "ratio": med["studio"] / med["plain"], "peak_mb": {k: v / 2**20 for k, v in peaks.items()},
            "device": str(loaded.device)}


UNET_SETTINGS = ("fp32", "fp32+channels_last", "bf16+channels_last")


def unet_precision(sizes: list[int], steps: int, compile_unet: bool) -> list[dict]:
    """Seconds per UNet step for each CPU setting; each setting gets a fresh copy so none inherits another's
    memory format or compiled graph."""
    import copy

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    base = UNet2DConditionModel(**SD15_UNET).eval()
    text = torch.randn(2, 77, 768)
    settings = (*UNET_SETTINGS, "fp32+torch.compile") if compile_unet else UNET_SETTINGS
    rows = []
    for size in sizes:
        latents = torch.randn(2, 4, size // 8, size // 8)
        timings = {}
        for setting in settings:
            unet = copy.deepcopy(base)
            channels_last = "channels_last" in setting
            bf16 = setting.startswith("bf16")
            if channels_last:
                unet.to(memory_format=torch.channels_last)
            x = latents.to(memory_format=torch.channels_last) if channels_last else latents
            if setting.endswith("torch.compile"):
                unet = torch.compile(unet)
            per_step = []
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for i in range(steps + 1):  # the first step is a warm-up (and, compiled, the compilation)
                    started = time.perf_counter()
                    unet(x, 999 - i, encoder_hidden_states=text)
                    if i:
                        per_step.append(time.perf_counter() - started)
            timings[setting] = statistics.median(per_step)
            del unet
        best = min((s for s in timings if s != "fp32"), key=timings.get)
        rows.append({"size": f"{size}x{size}", "s_per_step": timings, "best": best,
                     "ratio_best_over_fp32": timings[best] / timings["fp32"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--unet-steps", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor; slow to compile)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if not args.skip_overhead:
        result = overhead(args.rounds, args.steps)
        print(f"overhead [{result['device']}, {result['size']}, {result['steps']} steps, {result['rounds']} rounds]: "
              f"Studio.generate {result['median_s']['studio']:.3f}s, plain diffusers "
              f"{result['median_s']['plain']:.3f}s, ratio {result['ratio']:.3f} (goal <= 1.03); peak memory added: "
              f"Studio {result['peak_mb']['studio']:.0f} MiB, plain {result['peak_mb']['plain']:.0f} MiB")
    if not args.skip_unet:
        for row in unet_precision(args.sizes, args.unet_steps, args.compile):
            t = row["s_per_step"]
            print(f"SD 1.5 UNet {row['size']} batch 2: " + ", ".join(f"{k} {v:.2f} s/step" for k, v in t.items())
                  + f"; best other than fp32: {row['best']}, ratio {row['ratio_best_over_fp32']:.2f}")


if __name__ == "__main__":
    main()
