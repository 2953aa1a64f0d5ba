"""configs/tiny-shapes.yaml as types: every stage's settings, validated before any stage runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class SampleDecoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Single-object scenes with every attribute stated, seen colour/shape pairs only.
    n_samples: int = Field(1200, ge=1)
    steps: int = Field(20, ge=1)  # Euler, as the pipeline ships
    # One guidance scale per sampling batch, uniform in this range: the decoder should serve every CFG a user
    # picks, not one.
    cfg_range: tuple[float, float] = (1.0, 10.0)
    sample_batch: int = Field(20, ge=1)
    # Of each training batch; the rest are posterior means of dataset images.
    sample_fraction: float = Field(0.5, ge=0.0, le=1.0)
    n_images: int = Field(4000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0.0)
    max_steps: int = Field(3000, ge=1)
    max_minutes: float = Field(5.0, gt=0.0)

    @field_validator("cfg_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1]:
            raise ValueError(f"cfg_range must be [low, high] with 0 <= low <= high, got {list(value)}")
        return value


class ShapesTrainConfig(BaseModel):
    """configs/tiny-shapes.yaml: where to work, where to export, and every stage's settings."""

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
