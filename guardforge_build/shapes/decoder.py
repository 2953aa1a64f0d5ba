"""Stage 3 of tiny-shapes: the VAE's decoder fine-tuned alone, on posterior means (like SD's ft-MSE VAE)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from guardforge_build.shapes.config import ShapesTrainConfig
from guardforge_build.shapes.stage import StageRun, probe_images, psnr
from guardforge_build.shapes.vae import ImageDataModule, reconstruction_loss


class DecoderModule(L.LightningModule):
    """Train the decoder alone; the encoder, hence the latent space the UNet learned, does not move.

    A batch is images (decoded from their posterior means: sharpening, like SD's ft-MSE VAE) or (latents,
    images) pairs given by the stage (the UNet's own samples, see shapes/sample_decoder.py).
    """

    def __init__(self, vae, lr: float, object_weight: float = 0.0, name: str = "decoder"):
        super().__init__()
        self.lr, self.object_weight, self.name = lr, object_weight, name
        self.vae = vae
        self.vae.requires_grad_(False)
        self.vae.decoder.requires_grad_(True)
        self.vae.post_quant_conv.requires_grad_(True)

    def training_step(self, batch, batch_idx):
        if len(batch) == 2:
            latents, x = batch
        else:
            (x,) = batch
            with torch.no_grad():
                latents = self.vae.encode(x).latent_dist.mean
        recon = self.vae.decode(latents).sample
        loss = reconstruction_loss(recon, x, self.object_weight)
        self.log_dict({f"{self.name}/loss": loss, f"{self.name}/psnr": psnr(recon.detach(), x)}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.vae.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)


def finetune_decoder(cfg: ShapesTrainConfig, work: Path, resume: bool) -> dict:
    """Stage 3: decoder-only fine-tuning; writes work/vae-decoder (same encoder, sharper decoder)."""
    from diffusers import AutoencoderKL

    run = StageRun(work, "decoder", cfg.seed + 2)
    vae = AutoencoderKL.from_pretrained(work / "vae")
    module = DecoderModule(vae, cfg.vae.decoder_lr, cfg.vae.object_weight)
    steps = run.fit(module, ImageDataModule(cfg.vae.n_images, cfg.vae.batch_size, cfg.seed + 2),
                    cfg.vae.decoder_max_steps, cfg.vae.decoder_max_minutes, resume)
    return run.save_vae(module.vae.eval(), "vae-decoder", probe_images(cfg), steps)
