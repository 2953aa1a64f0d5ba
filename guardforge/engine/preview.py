"""Live previews: a running job's latents as a small RGB image, by A1111's "Approx cheap" linear factors (no VAE
call, so a preview costs a matrix product at the latents' size), screened before anyone sees it."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from guardforge.engine.request import ProgressEvent

# Latent channel -> (R, G, B) weights, as A1111's modules/sd_vae_approx.py cheap_approximation has them (fitted
# on SD 1.4's VAE; SD 2 shares that VAE's latent space). SDXL's VAE has its own. SD3 and Flux (16 channels,
# packed latents) have none here: they get no preview rather than a wrong-coloured one.
SD1_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
SDXL_FACTORS = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                (-0.3730, -0.2499, -0.2088))
FACTORS = {"sd1": SD1_FACTORS, "sd2": SD1_FACTORS, "sdxl": SDXL_FACTORS}


def latent_preview(latents, family: str) -> Image.Image | None:
    """The first image of a batch of latents (batch, channels, h, w) as RGB at the latents' size; None when the
    family has no factors or the latents are not laid out as its are."""
    import torch

    factors = FACTORS.get(family)
    if factors is None or latents.ndim != 4 or latents.shape[1] != len(factors):
        return None
    weights = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    with torch.no_grad():
        rgb = torch.einsum("chw,cr->hwr", latents[0].float(), weights)
        pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


class Previews:
    """Every `every` steps, the step's latents as a preview on the progress event, after `screen` (the guard's
    output-image check and enforcement: None withholds it, a blurred image replaces it). The last step makes no
    preview: the finished image follows at once."""

    def __init__(self, every: int, family: str, screen: Callable[[Image.Image], Image.Image | None]):
        self.every = every
        self.family = family
        self.screen = screen

    def attach(self, event: ProgressEvent, latents) -> ProgressEvent:
        if self.every <= 0 or event.step % self.every or event.step >= event.total or latents is None:
            return event
        image = latent_preview(latents, self.family)
        if image is None:
            return event
        return event.model_copy(update={"preview": self.screen(image)})
