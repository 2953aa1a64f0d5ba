"""What every training stage of tiny-shapes does alike: seed, time, fit (resumable), measure, save, report."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.config import ShapesTrainConfig

# Steps between checkpoints: a time-boxed stage that stops or is stopped resumes from at most this far back.
CHECKPOINT_EVERY_N_STEPS = 50


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def psnr(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (a peak-to-peak of 2, hence 4), the reconstruction clamped to that range."""
    return 10 * torch.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), x))


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means (unscaled) of images in [-1, 1]."""
    vae.eval()
    return torch.cat([vae.encode(images[i:i + batch_size]).latent_dist.mean
                      for i in range(0, len(images), batch_size)])


def probe_images(cfg: ShapesTrainConfig) -> torch.Tensor:
    """The 512 images every VAE stage reports its PSNR on (and the VAE stage its latent scale from)."""
    return images_to_tensor(shapes_data.make_dataset(512, seed=cfg.seed + 99)[0])


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    vae.eval()
    return float(psnr(vae.decode(encode_latents(vae, images)).sample, images))


class StageRun:
    """One run of a stage, named as in STAGES: seeded and timed from its creation; its checkpoints in
    <stage>-ckpt, its report in <stage>_report.json (keys prefixed so), both under the work folder."""

    def __init__(self, work: Path, stage: str, seed: int, label: str | None = None):
        self.work, self.stage, self.label = work, stage, label or stage
        self.key = stage.replace("-", "_")
        L.seed_everything(seed)
        self.started = time.perf_counter()

    def minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60

    def fit(self, module: L.LightningModule, data: L.LightningDataModule, max_steps: int, max_minutes: float,
            resume: bool, callbacks: Sequence[L.Callback] = ()) -> int:
        """Train on the CPU up to max_steps or max_minutes, whichever comes first, from the last checkpoint when
        resuming; the global step reached."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        ckpt_dir = self.work / f"{self.stage}-ckpt"
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=CHECKPOINT_EVERY_N_STEPS,
                                     save_top_k=0)
        trainer = L.Trainer(
            max_steps=max_steps, max_time={"minutes": max_minutes}, accelerator="cpu", devices=1,
            callbacks=[checkpoint, *callbacks], logger=L.pytorch.loggers.CSVLogger(self.work, name="logs"),
            enable_model_summary=False, log_every_n_steps=10, num_sanity_val_steps=0,
        )
        last = ckpt_dir / "last.ckpt"
        trainer.fit(module, data, ckpt_path=str(last) if resume and last.exists() else None)
        return trainer.global_step

    def save_vae(self, vae, folder: str, probe: torch.Tensor, steps: int, **extra: float) -> dict:
        """Measure the VAE's PSNR on the probe images, save it as <work>/<folder>, report PSNR, steps, `extra`
        and the stage's minutes."""
        report = {f"{self.key}_psnr_db": vae_psnr(vae, probe), f"{self.key}_steps": steps,
                  **{f"{self.key}_{name}": value for name, value in extra.items()},
                  f"{self.key}_minutes": self.minutes()}
        vae.save_pretrained(self.work / folder, safe_serialization=True)
        return self.report(report)

    def report(self, report: dict) -> dict:
        (self.work / f"{self.key}_report.json").write_text(json.dumps(report, indent=1))
        print(f"{self.label}: {report}", flush=True)
        return report
