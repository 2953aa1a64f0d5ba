"""What the masked area holds before denoising: A1111's inpainting_fill ("Masked content").

- "original": the image as it is (for an outpainted canvas, its edge pixels carried outward).
- "fill": the masked area painted with the image's colours, blurred in from around it (A1111's masking.fill).
- "latent noise" / "latent nothing": the image's latents in the masked area replaced by random noise / zeros before
  the pipeline adds its noise to them, as A1111 replaces its init_latent there. The pipeline adds that noise in
  `scheduler.add_noise` (img2img, and inpainting below full strength), so this batch's scheduler gets an add_noise
  that changes the image latents it is first handed; at full strength nothing of the image is noised in, and the
  latent modes change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image, ImageFilter, ImageOps

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from guardforge.engine.request import GenerationRequest

InpaintingFill = Literal["fill", "original", "latent noise", "latent nothing"]
# In A1111's order: its API sends inpainting_fill as an index into this.
FILLS: tuple[str, ...] = get_args(InpaintingFill)


def fill_mode(request: GenerationRequest) -> str:
    """The mode in force: the request's, else "fill" for outpainting (the new area has nothing worth keeping;
    A1111's outpainting script defaults to it) and "original" for inpainting (A1111's UI default)."""
    if request.inpainting_fill is not None:
        return request.inpainting_fill
    return "fill" if request.outpaint is not None else "original"


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masking.fill: the unmasked image blurred at falling radii and laid over itself, so that the masked
    area takes the colours around it; pixels the mask leaves fully alone come back unchanged."""
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def source_image(original: Image.Image, mask: Image.Image, mode: str) -> Image.Image:
    """The image the pipeline starts from (the overlay afterwards still uses `original`)."""
    return fill(original, mask) if mode == "fill" else original


class LatentFill:
    """"latent noise" or "latent nothing" for one request: `install` patches one batch's scheduler."""

    def __init__(self, mode: str, mask: Image.Image):
        self.mode = mode
        # As diffusers' inpaint pipeline reads a mask: white at 0.5 and above is repainted.
        self.white = (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)

    @classmethod
    def of(cls, request: GenerationRequest, mask: Image.Image | None) -> LatentFill | None:
        mode = fill_mode(request)
        return cls(mode, mask) if mask is not None and mode in ("latent noise", "latent nothing") else None

    def install(self, pipe: DiffusionPipeline, seeds: list[int]) -> None:
        import torch

        original: Callable = pipe.scheduler.add_noise
        done: dict[str, Any] = {}

        def add_noise(samples, noise, timesteps):
            # The first call noises the image's latents (prepare_latents); later ones (a 4-channel inpaint
            # pipeline's, LatentBlend's) re-noise the kept area only, where the fill never reaches.
            if not done:
                done["yes"] = True
                mask = torch.from_numpy(self.white)[None, None]
                mask = torch.nn.functional.interpolate(mask, size=samples.shape[-2:]).to(samples.device, samples.dtype)
                if self.mode == "latent noise":
                    # Each image's own seed, from a generator of its own: the pipeline's stay untouched.
                    filler = torch.cat([torch.randn((1, *samples.shape[1:]),
                                                    generator=torch.Generator("cpu").manual_seed(seed))
                                        for seed in seeds]).to(samples.device, samples.dtype)
                else:
                    filler = torch.zeros_like(samples)
                samples = samples * (1 - mask) + filler * mask
            return original(samples, noise, timesteps)

        # An attribute of this batch's own scheduler object (build_scheduler makes one per batch): nothing shared.
        pipe.scheduler.add_noise = add_noise
