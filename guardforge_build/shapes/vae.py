"""Stage 1 of tiny-shapes: the VAE, trained from scratch on the procedural images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.components import build_vae
from guardforge_build.shapes.config import ShapesTrainConfig, VAEConfig
from guardforge_build.shapes.stage import StageRun, encode_latents, images_to_tensor, probe_images, psnr


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, object_weight: float) -> torch.Tensor:
    """L1 + MSE, with object pixels (those unlike the image's corner, always background in this data) weighted up."""
    if object_weight <= 0:
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)
    on_object = ((x - x[:, :, :1, :1]).abs().sum(dim=1, keepdim=True) > 0.1).to(x.dtype)
    weight = 1.0 + object_weight * on_object
    error = recon - x
    return (error.abs() * weight).mean() + (error.pow(2) * weight).mean()


class VAEModule(L.LightningModule):
    """Reconstruction (L1 + MSE) plus a tiny KL term, so latents stay near a unit Gaussian in scale."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.vae = build_vae(cfg)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        rec = reconstruction_loss(recon, x, self.cfg.object_weight)
        kl = posterior.kl().mean()
        loss = rec + self.cfg.kl_weight * kl
        self.log_dict({"vae/loss": loss, "vae/psnr": psnr(recon.detach(), x)}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.vae.parameters(), lr=self.cfg.lr, weight_decay=0.0)


class ImageDataModule(L.LightningDataModule):
    def __init__(self, n_images: int, batch_size: int, seed: int):
        super().__init__()
        self.n_images, self.batch_size, self.seed = n_images, batch_size, seed

    def setup(self, stage=None):
        images, _ = shapes_data.make_dataset(self.n_images, seed=self.seed)
        self.images = images_to_tensor(images)

    def train_dataloader(self):
        dataset = torch.utils.data.TensorDataset(self.images)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)


def train_vae(cfg: ShapesTrainConfig, work: Path, resume: bool) -> dict:
    """Stage 1: writes work/vae, its latents scaled to unit variance."""
    run = StageRun(work, "vae", cfg.seed, label="VAE")
    module = VAEModule(cfg.vae)
    steps = run.fit(module, ImageDataModule(cfg.vae.n_images, cfg.vae.batch_size, cfg.seed),
                    cfg.vae.max_steps, cfg.vae.max_minutes, resume)
    vae = module.vae.eval()
    probe = probe_images(cfg)
    # SD's convention: scale latents to unit variance for the diffusion model.
    vae.register_to_config(scaling_factor=float(1.0 / encode_latents(vae, probe).std()))
    return run.save_vae(vae, "vae", probe, steps)
