"""Stage 2 of tiny-shapes: UNet + text encoder on the frozen VAE's latents, with the diffusion loss."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.components import build_noise_scheduler, build_text_encoder, build_unet, latent_size
from guardforge_build.shapes.config import ShapesTrainConfig, UNetConfig
from guardforge_build.shapes.export import ExportCallback
from guardforge_build.shapes.stage import StageRun, encode_latents, images_to_tensor


class LatentDataModule(L.LightningDataModule):
    """Scaled latents and token ids, computed once from a frozen VAE."""

    def __init__(self, cfg: UNetConfig, vae, tokenizer, seed: int):
        super().__init__()
        self.cfg, self.vae, self.tokenizer, self.seed = cfg, vae, tokenizer, seed

    def setup(self, stage=None):
        images, captions = shapes_data.make_dataset(self.cfg.n_images, seed=self.seed + 1)
        latents = encode_latents(self.vae, images_to_tensor(images)) * self.vae.config.scaling_factor
        ids = self.tokenizer(captions, padding="max_length", max_length=self.cfg.max_length, truncation=True,
                             return_tensors="pt").input_ids
        self.dataset = torch.utils.data.TensorDataset(latents, ids)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.batch_size, shuffle=True,
                                           drop_last=True)


class TextToImageModule(L.LightningModule):
    """The diffusion loss (v-prediction, Min-SNR weighted) on UNet + text encoder, VAE frozen outside."""

    def __init__(self, cfg: UNetConfig, unet, text_encoder, empty_ids: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.unet, self.text_encoder = unet, text_encoder
        self.noise_scheduler = build_noise_scheduler()
        self.register_buffer("empty_ids", empty_ids, persistent=False)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)

    def training_step(self, batch, batch_idx):
        latents, ids = batch
        drop = torch.rand(len(ids), device=ids.device) < self.cfg.uncond_rate
        ids = torch.where(drop[:, None], self.empty_ids.expand_as(ids), ids)
        context = self.text_encoder(ids).last_hidden_state
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(self.alphas_cumprod), (len(latents),), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        target = self.noise_scheduler.get_velocity(latents, noise, t)
        pred = self.unet(noisy, t, context).sample
        if self.cfg.min_snr_gamma > 0:  # Min-SNR-gamma for v-prediction
            snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])
            weight = snr.clamp(max=self.cfg.min_snr_gamma) / (snr + 1)
        else:  # plain v-loss: high-noise steps, where layout is decided, keep their full weight
            weight = torch.ones_like(t, dtype=latents.dtype)
        loss = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        self.log("unet/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=1e-2)
        warmup, start, end = self.cfg.warmup_steps, self.cfg.lr_decay_start, self.cfg.max_steps

        def schedule(step: int) -> float:
            if start and step >= start:
                progress = min(1.0, (step - start) / max(1, end - start))
                return 1.0 - (1.0 - self.cfg.lr_min_ratio) * progress
            return min(1.0, (step + 1) / warmup)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def train_unet(cfg: ShapesTrainConfig, work: Path, tokenizer, vae_dir: Path, resume: bool) -> dict:
    """Stage 2: UNet + text encoder on the frozen VAE's latents, exported every few hundred steps and at the end."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    run = StageRun(work, "unet", cfg.seed, label="UNet")
    unet = build_unet(cfg.unet, vae.config.latent_channels, latent_size(cfg.vae))
    text_encoder = build_text_encoder(cfg.unet, tokenizer)
    empty_ids = tokenizer([""], padding="max_length", max_length=cfg.unet.max_length,
                          return_tensors="pt").input_ids
    module = TextToImageModule(cfg.unet, unet, text_encoder, empty_ids)
    callbacks = []
    if cfg.unet.ema_decay > 0:
        # With averaging on, a checkpoint's state_dict holds the average, so export_final ships it too.
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=cfg.unet.ema_decay))
    export = ExportCallback(vae, tokenizer, Path(cfg.export_dir), cfg.unet.export_every_n_steps,
                            ema=callbacks[0] if callbacks else None)
    steps = run.fit(module, LatentDataModule(cfg.unet, vae, tokenizer, cfg.seed), cfg.unet.max_steps,
                    cfg.unet.max_minutes, resume, [*callbacks, export])
    return run.report({
        "unet_steps": steps, "unet_minutes_this_run": run.minutes(),
        "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "text_encoder_params_m": sum(p.numel() for p in text_encoder.parameters()) / 1e6,
    })
