"""The data of tiny-shapes' last training stage: the UNet's own samples of captions that fix the whole image.

On this data a caption that states size, colour, shape, position and background determines every pixel, so
each sample the trained UNet draws for one has an exact target: the generator's image of that scene. Guided
sampling (CFG well above 1) overshoots the latents the decoder was trained on, by about a fifth in every
channel and more on the object, and the decoder turns such latents into wrong colours (a green star decodes
black). Fine-tuning the decoder on (sampled latents, true image) pairs, beside posterior means so that plain
decoding keeps its quality, teaches it to decode what the UNet actually produces. Only training pairs are
sampled: the held-out colour/shape pairs stay unseen by every stage.
"""

from __future__ import annotations

import random

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from guardforge.train.shapes import data
from guardforge.train.shapes.adherence import true_pixels


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


def fully_described_scenes(n: int, seed: int) -> list[tuple[data.Scene, str]]:
    """n single-object training scenes, each with a varied caption that states every attribute."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(n):
        background = rng.choice(data.COLOURS)
        scene = data.Scene(background, [data.random_object(rng, background, rng.choice(list(data.POSITIONS)))])
        scenes.append((scene, data.describe(scene, rng, say_size=True, say_position=True)))
    return scenes


@torch.no_grad()
def sample_pairs(pipe, cfg: SampleDecoderConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, images): the pipeline's final latents, unscaled as the decoder takes them, and the true images
    in [-1, 1] of the scenes their captions describe."""
    scenes = fully_described_scenes(cfg.n_samples, seed)
    rng = random.Random(seed + 1)
    latents = []
    for start in range(0, len(scenes), cfg.sample_batch):
        chunk = [caption for _, caption in scenes[start:start + cfg.sample_batch]]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        latents.append(pipe(chunk, num_inference_steps=cfg.steps, guidance_scale=rng.uniform(*cfg.cfg_range),
                            generator=generators, output_type="latent").images)
    pixels = true_pixels([(scene.objects[0], scene.background, caption) for scene, caption in scenes])
    return torch.cat(latents) / pipe.vae.config.scaling_factor, pixels
