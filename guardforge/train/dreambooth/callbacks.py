"""Lightning callbacks: progress events, cancellation between steps, validation images at an interval."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from threading import Event

import lightning as L
import torch
from PIL import Image

from guardforge.train.dreambooth.config import TrainProgress
from guardforge.train.dreambooth.services import ScreenOutputs

ProgressFn = Callable[[TrainProgress], None]


def _metric(outputs, name: str) -> float | None:
    if isinstance(outputs, dict) and name in outputs:
        return float(outputs[name])
    return None


class ProgressReporter(L.Callback):
    """One TrainProgress per optimizer step: step, losses (mean over its micro-batches), it/s and ETA."""

    def __init__(self, progress: ProgressFn):
        self.progress = progress
        self._started = time.perf_counter()
        self._first_step = 0
        self._last_step = 0
        self._sums: dict[str, list[float]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        self._first_step = self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for name in ("loss", "instance_loss", "prior_loss"):
            value = _metric(outputs, name)
            if value is not None:
                self._sums.setdefault(name, []).append(value)
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch inside gradient accumulation
            return
        self._last_step = step
        means = {name: sum(values) / len(values) for name, values in self._sums.items()}
        self._sums = {}
        elapsed = time.perf_counter() - self._started
        rate = (step - self._first_step) / elapsed if elapsed > 0 else None
        total = trainer.max_steps
        self.progress(TrainProgress(
            phase="training", step=step, total=total, loss=means.get("loss"),
            instance_loss=means.get("instance_loss"), prior_loss=means.get("prior_loss"), it_per_s=rate,
            eta_s=(total - step) / rate if rate else None,
        ))


class CancelOnEvent(L.Callback):
    """Stops cleanly after the current optimizer step once `cancel` is set; run.py then saves a checkpoint."""

    def __init__(self, cancel: Event):
        self.cancel = cancel
        self.cancelled = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        # The cancel reaches one process; under DDP/FSDP a rank that stopped alone would leave the others
        # waiting in their next collective, and the checkpoint save after fit is collective too: agree first.
        if trainer.strategy.reduce_boolean_decision(self.cancel.is_set(), all=False):
            self.cancelled = True
            trainer.should_stop = True


def build_pipeline(pl_module):
    """A StableDiffusionPipeline over the module's live weights (nothing copied)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=pl_module.vae, text_encoder=pl_module.text_encoder, tokenizer=pl_module.tokenizer,
        unet=pl_module.unet, scheduler=pl_module.inference_scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


class GatheredCopy:
    """Under FSDP the trained weights live in shards across ranks, wrapped in FSDP units that only run in
    lock-step on every rank. This keeps an unwrapped CPU copy of the module, on rank 0 only (`copy` is None
    elsewhere), that receives the gathered weights: validation images render from it and exports write it.
    Gathering is collective, so every rank calls `refresh`.
    """

    def __init__(self, copy: L.LightningModule | None):
        self.copy = copy

    def refresh(self, trainer) -> L.LightningModule | None:
        state = trainer.strategy.lightning_module_state_dict()  # full on rank 0, empty elsewhere
        if not trainer.is_global_zero or self.copy is None:
            return None
        names = self.copy.trainable_names()
        missing = names - state.keys()
        if missing:
            raise RuntimeError(f"the gathered state lacks {len(missing)} trained weights, e.g. {sorted(missing)[:3]}")
        self.copy.load_state_dict({k: v for k, v in state.items() if k in names}, strict=False)
        return self.copy


class ValidationImages(L.Callback):
    """Every `interval` steps, one image per validation prompt with a fixed seed, to disk and to the logger."""

    def __init__(self, prompts: list[str], interval: int, output_dir: Path, *, seed: int = 0,
                 steps: int = 25, resolution: int = 512, screen: ScreenOutputs | None = None,
                 gathered: GatheredCopy | None = None):
        self.prompts = prompts
        self.interval = interval
        self.output_dir = output_dir
        self.seed = seed
        self.steps = steps
        self.resolution = resolution
        self.screen = screen
        self.gathered = gathered

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last_micro_batch = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not self.prompts or not self.interval or not last_micro_batch or step % self.interval:
            return
        if self.gathered is None:
            if trainer.is_global_zero:
                self.render(trainer, pl_module, step)
            return
        copy = self.gathered.refresh(trainer)
        if copy is not None:
            device = pl_module.device
            copy.to(device)
            try:
                self.render(trainer, copy, step)
            finally:
                copy.to("cpu")

    @torch.no_grad()
    def render(self, trainer, pl_module, step: int) -> list[Path]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            pipe = build_pipeline(pl_module)
            pipe.set_progress_bar_config(disable=True)
            images = []
            for i, prompt in enumerate(self.prompts):
                generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + i)
                images.append(pipe(prompt, num_inference_steps=self.steps, generator=generator,
                                   height=self.resolution, width=self.resolution).images[0])
        finally:
            pl_module.train(was_training)
        shown = self.screen(images) if self.screen is not None else images
        folder = self.output_dir / "validation" / f"step-{step:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, image in enumerate(shown):
            if image is None:  # withheld by the guard: neither written nor logged
                continue
            path = folder / f"{i:02d}.png"
            image.save(path)
            written.append(path)
            self._log_image(trainer, f"validation/{i:02d}", image, step)
        return written

    @staticmethod
    def _log_image(trainer, tag: str, image: Image.Image, step: int) -> None:
        import numpy as np

        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image(tag, np.asarray(image), step, dataformats="HWC")
            elif hasattr(logger, "log_image"):  # Weights & Biases
                logger.log_image(key=tag, images=[image], step=step)
