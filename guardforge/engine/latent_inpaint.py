"""Inpainting for plain UNets on a latent width that diffusers' SD inpaint pipeline refuses.

StableDiffusionInpaintPipeline takes a 9-channel inpainting UNet or a plain 4-channel one (SD 1.x/2.x), and
raises for any other width, such as tiny-shapes' 8-channel latent. For a plain UNet that pipeline only runs
img2img and, after every step, puts the known region back at the next step's noise level; A1111 inpaints
non-inpainting models the same way. This module does that with the img2img pipeline and diffusers' step-end
callback, so no pipeline code is copied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image


def needs_latent_blend(pipe: DiffusionPipeline) -> bool:
    """True for a plain UNet (its input is the latent alone) on a latent width other than SD's 4.

    Transformer pipelines (SD3, Flux) have no `unet`; their own inpaint pipelines take any latent width."""
    unet = getattr(pipe, "unet", None)
    return unet is not None and unet.config.in_channels == pipe.vae.config.latent_channels != 4


class LatentBlend:
    """Step-end callback: latents outside the mask become the original's, noised to the next step's level."""

    def __init__(self, pipe: DiffusionPipeline, original: Image.Image, mask: Image.Image):
        import torch

        device, dtype = pipe._execution_device, pipe.unet.dtype
        image = pipe.image_processor.preprocess(original).to(device=device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            latents = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        self.image_latents = latents.to(dtype)
        # As diffusers' inpaint pipeline: the mask binarised at 0.5, then nearest-resized to the latent grid.
        white = torch.from_numpy((np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 >= 0.5).astype(np.float32))
        self.mask = torch.nn.functional.interpolate(white[None, None], size=latents.shape[-2:]).to(device, dtype)
        self.noise = None

    def start_batch(self, seeds: list[int]) -> None:
        """Fixed noise per image, from its own seed, so the known region is noised the same way every step."""
        import torch

        shape = self.image_latents.shape
        self.noise = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
                                for seed in seeds]).to(self.image_latents.device, self.image_latents.dtype)

    def __call__(self, pipe: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        latents = kwargs["latents"]
        known = self.image_latents.expand_as(latents)
        # img2img runs the last num_timesteps of the schedule (strength); `step` indexes those. After the
        # last step the known region is put back clean, as diffusers does.
        timesteps = pipe.scheduler.timesteps[-pipe.num_timesteps:]
        if step + 1 < len(timesteps):
            next_t = timesteps[step + 1:step + 2].repeat(len(latents))
            known = pipe.scheduler.add_noise(known, self.noise, next_t)
        kwargs["latents"] = (1 - self.mask) * known + self.mask * latents
        return kwargs
