"""The pipeline's components at tiny-shapes' sizes: VAE, UNet, text encoder, noise schedule, tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.config import UNetConfig, VAEConfig


def build_vae(cfg: VAEConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=cfg.norm_num_groups, sample_size=shapes_data.SIZE,
    )


def latent_size(cfg: VAEConfig) -> int:
    """The side of a latent: each VAE block after the first halves the image."""
    return shapes_data.SIZE // 2 ** (len(cfg.block_out_channels) - 1)


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


def make_pipeline(vae, unet, text_encoder, tokenizer):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler.from_config(build_noise_scheduler().config)
    return StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
