"""DreamBooth step speed and peak memory: our Lightning module vs a plain PyTorch loop (diffusers semantics).

Both train the same tiny SD model on the same batches (instance + class, prior preservation, AdamW,
constant LR, grad clipping). Each measurement runs in a fresh subprocess (so peak memory is its own),
and the two variants alternate round by round so that load from other processes hits both alike.

    python benchmarks/dreambooth_step.py --rounds 3 --steps 30 --resolution 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(workdir: Path, resolution: int):
    import numpy as np
    from PIL import Image

    from tests.tiny import save_tiny_sd

    model = workdir / "tiny-sd"
    if not model.exists():
        save_tiny_sd(model)
    for name, colour in (("instance", (200, 40, 40)), ("class", (40, 40, 200))):
        folder = workdir / name
        folder.mkdir(exist_ok=True)
        for i in range(4):
            array = np.full((resolution + 8, resolution + 8 * i, 3), colour, dtype=np.uint8)
            Image.fromarray(array).save(folder / f"{i}.png")
    return model


def config_for(workdir: Path, model: Path, steps: int, resolution: int, out: str):
    from guardforge.train.dreambooth.config import DreamBoothConfig

    return DreamBoothConfig(
        base_model=str(model), instance_data_dir=workdir / "instance", instance_prompt="a photo of sks dog",
        class_prompt="a photo of dog", class_data_dir=workdir / "class", num_class_images=4,
        resolution=resolution, max_steps=steps, learning_rate=1e-4, output_dir=workdir / out,
        accelerator="auto", logger="csv", checkpoint_interval=10**6, validation_prompts=[], seed=0,
        train_text_encoder=True)


def dataset_for(config, tokenizer):
    from guardforge.train.dreambooth.data import (
        DreamBoothBatches,
        ImageTransform,
        list_images,
        tokenize,
    )

    return DreamBoothBatches(
        list_images(config.instance_data_dir), list_images(config.class_data_dir),
        instance_batch_size=config.train_batch_size, class_batch_size=config.resolved_class_batch_size,
        transform=ImageTransform(config.resolution), instance_input_ids=tokenize(tokenizer, config.instance_prompt),
        class_input_ids=tokenize(tokenizer, config.class_prompt), seed=config.seed)


def run_ours(config, warmup: int) -> list[float]:
    """Our path as users run it: DreamBoothModule + Lightning Trainer (fit), timed per optimizer step."""
    import lightning as L
    import torch

    from guardforge.train.dreambooth.data import list_images
    from guardforge.train.dreambooth.run import BaseComponents, fit

    stamps: list[float] = []

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # as the plain loop does: time finished work, not queued work
            stamps.append(time.perf_counter())

    fit(config, BaseComponents.from_folder(Path(config.base_model)), list_images(config.instance_data_dir),
        list_images(config.class_data_dir), extra_callbacks=[Stamp()])
    return stamps[warmup:]


def run_plain(config, warmup: int) -> list[float]:
    """diffusers' train_dreambooth.py step, written out: one forward over instance+class, chunk, two MSEs."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from guardforge.train.dreambooth.run import BaseComponents

    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = BaseComponents.from_folder(Path(config.base_model))
    unet, vae, text_encoder = base.unet.to(device), base.vae.to(device), base.text_encoder.to(device)
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    vae.requires_grad_(False)
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=0,
                                 num_training_steps=config.max_steps)
    batches = iter(dataset_for(config, base.tokenizer))
    stamps = []
    for _ in range(config.max_steps):
        batch = next(batches)
        pixel_values = batch["pixel_values"].to(device)
        input_ids = batch["input_ids"].to(device)
        with torch.no_grad():
            latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids)[0]
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
        target, target_prior = torch.chunk(noise, 2, dim=0)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
        loss = loss + config.prior_loss_weight * prior_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return stamps[warmup:]


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    model = workdir / "tiny-sd"
    config = config_for(workdir, model, args.steps + args.warmup, args.resolution, f"out-{args.variant}")
    stamps = (run_ours if args.variant == "ours" else run_plain)(config, args.warmup)
    steps_per_s = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    print(json.dumps({"variant": args.variant, "steps_per_s": steps_per_s, "peak_mb": peak_memory_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    parser.add_argument("--variant", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, list[dict]] = {"ours": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp), args.resolution)
        for round_index in range(args.rounds):
            order = ("ours", "plain") if round_index % 2 == 0 else ("plain", "ours")
            for variant in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--workdir", tmp, "--steps", str(args.steps),
                     "--warmup", str(args.warmup), "--resolution", str(args.resolution),
                     "--threads", str(args.threads)],
                    capture_output=True, text=True, check=True, env=os.environ)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results[variant].append(result)
                print(f"round {round_index + 1} {variant:5s} {result['steps_per_s']:.2f} steps/s "
                      f"peak {result['peak_mb']:.0f} MB", flush=True)
    ours = statistics.median(r["steps_per_s"] for r in results["ours"])
    plain = statistics.median(r["steps_per_s"] for r in results["plain"])
    print(f"median steps/s: ours {ours:.2f}, plain loop {plain:.2f}, ratio {ours / plain:.3f} (goal >= 0.95)")
    print(f"peak memory MB: ours {max(r['peak_mb'] for r in results['ours']):.0f}, "
          f"plain loop {max(r['peak_mb'] for r in results['plain']):.0f}")


if __name__ == "__main__":
    main()
