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
from pydantic import BaseModel, ConfigDict

from guardforge.train.shapes import data
from guardforge.train.shapes.adherence import true_pixels


class SampleDecoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_samples: int = 1200  # single-object scenes with every attribute stated, seen colour/shape pairs only
    steps: int = 20  # Euler, as the pipeline ships
    # One guidance scale per sampling batch, uniform in this range: the decoder should serve every CFG a user
    # picks, not one.
    cfg_range: tuple[float, float] = (1.0, 10.0)
    sample_batch: int = 20
    sample_fraction: float = 0.5  # of each training batch; the rest are posterior means of dataset images
    n_images: int = 4000
    batch_size: int = 16
    lr: float = 5e-4
    max_steps: int = 3000
    max_minutes: float = 5.0


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
