"""Train tiny-shapes, an SD-architecture text-to-image model: a VAE stage, then a UNet + text-encoder stage."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.sample_decoder import SampleDecoderConfig, sample_pairs
from guardforge_build.shapes.tokenizer import write_tokenizer


class VAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_out_channels: list[int] = [16, 32, 32, 32]  # four blocks: 64x64 -> 8x8 (f=8)
    norm_num_groups: int = 8
    latent_channels: int = 4
    n_images: int = 20000
    batch_size: int = 16
    lr: float = 2e-3
    kl_weight: float = 1e-6
    # > 0: pixels of an object weigh 1 + object_weight in the reconstruction loss. Backgrounds are ~90% of the
    # pixels, so with plain L1 + MSE the encoder can drop a small star's points at almost no cost. The loss is
    # not renormalised: at 9 (about 10% object pixels) reconstruction weighs about twice as much, which halves
    # kl_weight in effect (kept so, since the runs in docs/tiny-shapes.md were made that way).
    object_weight: float = 0.0
    max_steps: int = 2000
    max_minutes: float = 6.0
    # Decoder-only fine-tuning (encoder frozen, so the latents the UNet learned stay valid), like SD's ft-MSE VAE.
    decoder_lr: float = 1e-3
    decoder_max_steps: int = 3000
    decoder_max_minutes: float = 15.0


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_out_channels: list[int] = [32, 64]
    # Per level, whether it has (self- and cross-) attention; skipping it at the largest level saves most time.
    attention_levels: list[bool] = [True, True]
    attention_head_dim: int = 8
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 32  # tokens; the tokenizer pads to this, so the pipeline does too
    n_images: int = 8000  # latents are computed once, so the UNet stage never runs the VAE
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    # From this step the LR falls linearly to lr_min_ratio * lr at max_steps (0: constant after warm-up).
    # Set it when resuming for a final annealing stretch: the schedule is code, so a resumed run picks it up.
    lr_decay_start: int = 0
    lr_min_ratio: float = 0.1
    uncond_rate: float = 0.1  # empty caption, so classifier-free guidance has an unconditional model
    # > 0: Min-SNR-gamma weighting, min(snr, gamma) / (snr + 1) on the v-loss. It is ~snr at high noise
    # (3e-4 at t=900), so the steps where an object's position and outline are decided get almost no
    # gradient. 0: the plain v-loss (weight 1 at every t).
    min_snr_gamma: float = 5.0
    max_steps: int = 3000
    max_minutes: float = 30.0
    export_every_n_steps: int = 200
    # > 0: keep an exponential moving average of the weights (Lightning's EMAWeightAveraging) and ship it;
    # the average samples better than the last step's weights of a short, noisy run. 0: ship the last step.
    ema_decay: float = 0.0


class ShapesTrainConfig(BaseModel):
    """configs/tiny-shapes.yaml: where to work, where to export, and both stages' settings."""

    model_config = ConfigDict(extra="forbid")

    work_dir: Path = Path("runs/tiny-shapes")
    # Overwriting the shipped model takes a config that names it (configs/tiny-shapes.yaml does): a config that
    # leaves export_dir out exports beside its checkpoints, since the UNet stage exports every few hundred steps.
    export_dir: Path = Path("runs/tiny-shapes/export")
    seed: int = 0
    threads: int = 2
    vae: VAEConfig = VAEConfig()
    unet: UNetConfig = UNetConfig()
    sample_decoder: SampleDecoderConfig = SampleDecoderConfig()

    @classmethod
    def from_yaml(cls, path: Path) -> ShapesTrainConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


# -- components -------------------------------------------------------------------------------------------

def build_vae(cfg: VAEConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=cfg.norm_num_groups, sample_size=shapes_data.SIZE,
    )


def build_unet(cfg: UNetConfig, latent_channels: int, latent_size: int):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=1,
        down_block_types=down, up_block_types=up,
        cross_attention_dim=cfg.text_hidden_size, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=math.gcd(32, *cfg.block_out_channels),  # GroupNorm needs groups dividing every width
    )


def build_text_encoder(cfg: UNetConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size, intermediate_size=cfg.text_hidden_size * 4,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_noise_scheduler():
    """DDPM's linear schedule (terminal SNR ~4e-5, so pure noise at T carries no colour) with v-prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                         prediction_type="v_prediction", clip_sample=False, steps_offset=1)


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# -- stage 1: the VAE -------------------------------------------------------------------------------------

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
        psnr = 10 * torch.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), x).detach())
        self.log_dict({"vae/loss": loss, "vae/psnr": psnr}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.vae.parameters(), lr=self.cfg.lr, weight_decay=0.0)


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
        psnr = 10 * torch.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), x).detach())
        self.log_dict({f"{self.name}/loss": loss, f"{self.name}/psnr": psnr}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.vae.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)


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


class PairDataModule(L.LightningDataModule):
    """(latents, images) from two pools, drawn so that `first_fraction` of the examples come from the first."""

    def __init__(self, first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor],
                 first_fraction: float, batch_size: int):
        super().__init__()
        self.first, self.second, self.first_fraction, self.batch_size = first, second, first_fraction, batch_size

    def train_dataloader(self):
        dataset = torch.utils.data.TensorDataset(torch.cat([self.first[0], self.second[0]]),
                                                 torch.cat([self.first[1], self.second[1]]))
        n_first, n_second = len(self.first[0]), len(self.second[0])
        weights = torch.cat([torch.full((n_first,), self.first_fraction / n_first),
                             torch.full((n_second,), (1 - self.first_fraction) / n_second)])
        sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)


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
    recon = vae.decode(encode_latents(vae, images)).sample.clamp(-1, 1)
    return float(10 * torch.log10(4.0 / F.mse_loss(recon, images)))


# -- stage 2: UNet + text encoder -------------------------------------------------------------------------

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


# -- export -----------------------------------------------------------------------------------------------

def make_pipeline(vae, unet, text_encoder, tokenizer):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler.from_config(build_noise_scheduler().config)
    return StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def export_pipeline(vae, unet, text_encoder, tokenizer, folder: Path) -> Path:
    """Save a diffusers folder (safetensors), writing into a temp folder first so readers never see half."""
    import shutil

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = make_pipeline(vae, unet, text_encoder, tokenizer)
    pipe.save_pretrained(tmp, safe_serialization=True)
    card = folder / "MODEL_CARD.md"
    if card.exists():  # the card is written by hand from measured figures; keep it across exports
        shutil.copy(card, tmp / "MODEL_CARD.md")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


class ExportCallback(L.Callback):
    """Every N steps, export the pipeline (the EMA weights when averaging) so a usable model exists while
    training goes on."""

    def __init__(self, vae, tokenizer, folder: Path, every: int, ema=None):
        self.vae, self.tokenizer, self.folder, self.every, self.ema = vae, tokenizer, folder, every, ema

    def _shipped(self, module):
        # Lightning keeps the average in a private AveragedModel; it wraps a copy of the whole module.
        average = getattr(self.ema, "_average_model", None)
        return average.module if average is not None else module

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step and step % self.every == 0:
            shipped = self._shipped(module)
            export_pipeline(self.vae, shipped.unet, shipped.text_encoder, self.tokenizer, self.folder)
            print(f"[step {step}] exported to {self.folder}", flush=True)

    def on_train_end(self, trainer, module):
        shipped = self._shipped(module)
        export_pipeline(self.vae, shipped.unet, shipped.text_encoder, self.tokenizer, self.folder)


# -- the one command --------------------------------------------------------------------------------------

def _trainer(cfg_steps: int, minutes: float, ckpt_dir: Path, callbacks: list, every: int = 50):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=every, save_top_k=0)
    return L.Trainer(
        max_steps=cfg_steps, max_time={"minutes": minutes}, accelerator="cpu", devices=1,
        callbacks=[checkpoint, *callbacks], logger=L.pytorch.loggers.CSVLogger(ckpt_dir.parent, name="logs"),
        enable_model_summary=False, log_every_n_steps=10, num_sanity_val_steps=0,
    )


STAGES = ("vae", "unet", "decoder", "sample-decoder", "export")
# Each VAE stage writes its own folder; later stages and the export take the latest one that exists.
VAE_FOLDERS = ("vae-sampled", "vae-decoder", "vae")


def latest_vae_dir(work: Path) -> Path:
    return next((work / name for name in VAE_FOLDERS if (work / name / "config.json").exists()), work / "vae")


def finetune_decoder(cfg: ShapesTrainConfig, work: Path, resume: bool) -> dict:
    """Stage 3: decoder-only fine-tuning; writes work/vae-decoder (same encoder, sharper decoder)."""
    from diffusers import AutoencoderKL

    L.seed_everything(cfg.seed + 2)
    started = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(work / "vae")
    module = DecoderModule(vae, cfg.vae.decoder_lr, cfg.vae.object_weight)
    ckpt = work / "decoder-ckpt" / "last.ckpt"
    trainer = _trainer(cfg.vae.decoder_max_steps, cfg.vae.decoder_max_minutes, work / "decoder-ckpt", [])
    trainer.fit(module, ImageDataModule(cfg.vae.n_images, cfg.vae.batch_size, cfg.seed + 2),
                ckpt_path=str(ckpt) if resume and ckpt.exists() else None)
    vae = module.vae.eval()
    report = {"decoder_psnr_db": vae_psnr(vae, probe_images(cfg)), "decoder_steps": trainer.global_step,
              "decoder_minutes": (time.perf_counter() - started) / 60}
    vae.save_pretrained(work / "vae-decoder", safe_serialization=True)
    (work / "decoder_report.json").write_text(json.dumps(report, indent=1))
    print(f"decoder: {report}", flush=True)
    return report


def finetune_decoder_on_samples(cfg: ShapesTrainConfig, work: Path, resume: bool) -> dict:
    """Stage 4: the decoder fine-tuned on the trained UNet's own guided samples beside posterior means;
    writes work/vae-sampled. The samples are kept (decoder-samples.pt), so a resumed run does not redraw them."""
    sd = cfg.sample_decoder
    L.seed_everything(cfg.seed + 4)
    started = time.perf_counter()
    vae, unet, text_encoder, tokenizer = load_trained(cfg, work)
    samples_file = work / "decoder-samples.pt"
    if resume and samples_file.exists():
        saved = torch.load(samples_file)
        latents, images = saved["latents"], saved["images"]
    else:
        pipe = make_pipeline(vae, unet, text_encoder, tokenizer)
        pipe.set_progress_bar_config(disable=True)
        latents, images = sample_pairs(pipe, sd, seed=cfg.seed + 4)
        torch.save({"latents": latents, "images": images}, samples_file)
    sampling_minutes = (time.perf_counter() - started) / 60
    dataset_images = images_to_tensor(shapes_data.make_dataset(sd.n_images, seed=cfg.seed + 5)[0])
    posterior = (encode_latents(vae, dataset_images), dataset_images)
    module = DecoderModule(vae, sd.lr, name="sample_decoder")
    ckpt = work / "sample-decoder-ckpt" / "last.ckpt"
    trainer = _trainer(sd.max_steps, sd.max_minutes, work / "sample-decoder-ckpt", [])
    trainer.fit(module, PairDataModule((latents, images), posterior, sd.sample_fraction, sd.batch_size),
                ckpt_path=str(ckpt) if resume and ckpt.exists() else None)
    vae = module.vae.eval()
    report = {"sample_decoder_psnr_db": vae_psnr(vae, probe_images(cfg)),
              "sample_decoder_steps": trainer.global_step, "sample_decoder_sampling_minutes": sampling_minutes,
              "sample_decoder_minutes": (time.perf_counter() - started) / 60}
    vae.save_pretrained(work / "vae-sampled", safe_serialization=True)
    (work / "sample_decoder_report.json").write_text(json.dumps(report, indent=1))
    print(f"sample-decoder: {report}", flush=True)
    return report


def load_trained(cfg: ShapesTrainConfig, work: Path):
    """(vae, unet, text_encoder, tokenizer): the latest VAE and the UNet checkpoint's weights (the EMA when
    averaging)."""
    from diffusers import AutoencoderKL

    tokenizer = load_tokenizer(work / "tokenizer")
    vae = AutoencoderKL.from_pretrained(latest_vae_dir(work)).eval()
    latent_size = shapes_data.SIZE // 2 ** (len(cfg.vae.block_out_channels) - 1)
    unet = build_unet(cfg.unet, vae.config.latent_channels, latent_size)
    text_encoder = build_text_encoder(cfg.unet, tokenizer)
    state = torch.load(work / "unet-ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")},
                                 strict=False)  # position_ids buffers may or may not be saved
    return vae, unet.eval(), text_encoder.eval(), tokenizer


def export_final(cfg: ShapesTrainConfig, work: Path) -> Path:
    """Stage 5: the UNet and text encoder of the last checkpoint with the latest VAE into the shipped folder."""
    vae, unet, text_encoder, tokenizer = load_trained(cfg, work)
    return export_pipeline(vae, unet, text_encoder, tokenizer, Path(cfg.export_dir))


def train_tiny_shapes(cfg: ShapesTrainConfig, resume: bool = False, stages: tuple[str, ...] = STAGES) -> dict:
    """Run the stages (each resumable from its last checkpoint) and export the pipeline folder.

    vae and unet run in order; decoder needs only the vae (it may run beside unet); sample-decoder needs the
    unet and the decoder's VAE; export needs the unet and takes the latest VAE.
    """
    from diffusers import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    tokenizer_dir = write_tokenizer(work / "tokenizer", shapes_data.vocabulary_words(), cfg.unet.max_length)
    tokenizer = load_tokenizer(tokenizer_dir)

    vae_dir = work / "vae"
    if "vae" in stages and not (vae_dir / "config.json").exists():
        L.seed_everything(cfg.seed)
        started = time.perf_counter()
        module = VAEModule(cfg.vae)
        ckpt = work / "vae-ckpt" / "last.ckpt"
        trainer = _trainer(cfg.vae.max_steps, cfg.vae.max_minutes, work / "vae-ckpt", [])
        trainer.fit(module, ImageDataModule(cfg.vae.n_images, cfg.vae.batch_size, cfg.seed),
                    ckpt_path=str(ckpt) if resume and ckpt.exists() else None)
        vae = module.vae.eval()
        probe_t = probe_images(cfg)
        latents = encode_latents(vae, probe_t)
        # SD's convention: scale latents to unit variance for the diffusion model.
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        report["vae_psnr_db"] = vae_psnr(vae, probe_t)
        report["vae_steps"] = trainer.global_step
        report["vae_minutes"] = (time.perf_counter() - started) / 60
        vae.save_pretrained(vae_dir, safe_serialization=True)
        (work / "vae_report.json").write_text(json.dumps(report, indent=1))
        print(f"VAE: {report}", flush=True)
    if "unet" in stages:
        report |= _train_unet(cfg, work, tokenizer, vae_dir, resume)
    if "decoder" in stages and not (work / "vae-decoder" / "config.json").exists():
        report |= finetune_decoder(cfg, work, resume)
    if "sample-decoder" in stages and not (work / "vae-sampled" / "config.json").exists():
        report |= finetune_decoder_on_samples(cfg, work, resume)
    if "export" in stages:
        report["exported"] = str(export_final(cfg, work))
    return report


def _train_unet(cfg: ShapesTrainConfig, work: Path, tokenizer, vae_dir: Path, resume: bool) -> dict:
    """Stage 2: UNet + text encoder on the frozen VAE's latents."""
    from diffusers import AutoencoderKL

    report: dict = {}
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    L.seed_everything(cfg.seed)
    started = time.perf_counter()
    latent_size = shapes_data.SIZE // 2 ** (len(cfg.vae.block_out_channels) - 1)
    unet = build_unet(cfg.unet, vae.config.latent_channels, latent_size)
    text_encoder = build_text_encoder(cfg.unet, tokenizer)
    empty_ids = tokenizer([""], padding="max_length", max_length=cfg.unet.max_length,
                          return_tensors="pt").input_ids
    module = TextToImageModule(cfg.unet, unet, text_encoder, empty_ids)
    ckpt = work / "unet-ckpt" / "last.ckpt"
    callbacks = []
    if cfg.unet.ema_decay > 0:
        # With averaging on, a checkpoint's state_dict holds the average, so export_final ships it too.
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=cfg.unet.ema_decay))
    export = ExportCallback(vae, tokenizer, Path(cfg.export_dir), cfg.unet.export_every_n_steps,
                            ema=callbacks[0] if callbacks else None)
    trainer = _trainer(cfg.unet.max_steps, cfg.unet.max_minutes, work / "unet-ckpt", [*callbacks, export])
    trainer.fit(module, LatentDataModule(cfg.unet, vae, tokenizer, cfg.seed),
                ckpt_path=str(ckpt) if resume and ckpt.exists() else None)
    report["unet_steps"] = trainer.global_step
    report["unet_minutes_this_run"] = (time.perf_counter() - started) / 60
    report["unet_params_m"] = sum(p.numel() for p in unet.parameters()) / 1e6
    report["text_encoder_params_m"] = sum(p.numel() for p in text_encoder.parameters()) / 1e6
    (work / "unet_report.json").write_text(json.dumps(report, indent=1))
    print(f"UNet: {report}", flush=True)
    return report
