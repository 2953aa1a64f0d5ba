"""Variation seeds and "resize seed from", as A1111 makes them (modules/rng.py, ImageRNG.first).

An image's starting noise is its seed's noise slerped toward its variation seed's (subseed's) noise by
subseed_strength. With "resize seed from" WxH the seed's (and subseed's) noise is drawn at WxH and pasted, centred,
into the noise of the image's own size, so that a composition found at one size mostly survives at another.

The seed's own noise is always the one the diffusers pipeline draws from the image's CPU generator, so a strength
of 0 gives the image without variation bit for bit, and the generator goes on to hand the sampler the noise it
would have handed it (ancestral samplers keep drawing from the seed, as in A1111: there, as here, strength 1 gives
the subseed's image only with a sampler that draws no noise while sampling). Where the pipeline's noise enters:

- txt2img: the pipeline's `latents`, drawn here from the pipeline's own generators as prepare_latents would.
- img2img, and inpainting below full strength: the pipeline adds its noise to the image through
  `scheduler.add_noise`; the batch's scheduler (a fresh object per batch) gets an add_noise that swaps that noise
  for the varied one.
- inpainting at full strength: the pipeline starts from its noise alone, so `latents` again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from guardforge.engine.request import GenerationRequest


def resize_from(request: GenerationRequest) -> tuple[int, int] | None:
    """(width, height) the seed's noise is drawn at, or None. As A1111, 0 or -1 in either means off."""
    w, h = request.seed_resize_from_w, request.seed_resize_from_h
    return (w, h) if w > 0 and h > 0 else None


def with_fixed_subseed(request: GenerationRequest) -> GenerationRequest:
    """The request with subseed -1 replaced by a drawn one, so that the subseeds used can be reported and
    written in infotext (A1111 draws it the same way, whether or not the strength uses it)."""
    if request.subseed != -1:
        return request
    total = request.batch_size * request.n_iter
    return request.model_copy(update={"subseed": secrets.randbelow(2**32 - total)})


def request_subseeds(request: GenerationRequest) -> list[int]:
    """One subseed per image: subseed, subseed+1, ... as A1111 numbers them (call with_fixed_subseed first)."""
    return [request.subseed + i for i in range(request.batch_size * request.n_iter)]


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp on one image's (C, H, W) noise, norms over dim 1 included: with A1111's RNG source set to
    CPU, the same seed pair then gives A1111's noise. Its near-parallel fallback is A1111's too (never met by two
    independent noises)."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def paste_centred(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """`small` (C, h, w) over the centre of `big` (C, H, W), cropped centrally where it is larger (A1111's)."""
    dx = (big.shape[2] - small.shape[2]) // 2
    dy = (big.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    out = big.clone()
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out


def _draw(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((1, *shape), generator=generator, device=None, dtype=dtype)[0]


def _generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator("cpu").manual_seed(seed)


# Draws a pipeline makes from an image's generator before its noise: none, or the VAE's sample of the image.
Recipe = tuple["torch.dtype", ...]


def _replay(seed: int, shape: tuple[int, ...], dtype: torch.dtype, before: Recipe) -> torch.Tensor:
    generator = _generator(seed)
    for pre in before:
        _draw(generator, shape, pre)
    return _draw(generator, shape, dtype)


_UNSUPPORTED = ("variation seeds and seed resize work on UNet models (SD 1.x/2.x, SDXL) only; leave "
                "subseed_strength at 0 and seed_resize_from unset for this model")


def check_family(request: GenerationRequest, family: str) -> None:
    """Refuse at submit what Variation.of refuses once the model is loaded: SD3 and Flux have no UNet."""
    if family in ("sd3", "flux") and (request.subseed_strength > 0 or resize_from(request) is not None):
        raise InvalidRequest(f"{_UNSUPPORTED} ({family})")


@dataclass(frozen=True)
class Variation:
    """One request's variation settings; `vary` makes one image's noise from the pipeline's noise for it."""

    strength: float
    resize_from: tuple[int, int] | None  # pixels (width, height)
    scale_factor: int  # pixels per latent cell

    @classmethod
    def of(cls, request: GenerationRequest, pipe: DiffusionPipeline) -> Variation | None:
        size = resize_from(request)
        if request.subseed_strength == 0 and size is None:
            return None
        if getattr(pipe, "unet", None) is None:
            raise InvalidRequest(_UNSUPPORTED)
        return cls(request.subseed_strength, size, int(getattr(pipe, "vae_scale_factor", 8)))

    def vary(self, base: torch.Tensor, seed: int, subseed: int, before: Recipe) -> torch.Tensor:
        """`base` is the pipeline's own noise for `seed` (C, H, W), drawn after the draws `before`; the subseed's
        noise is drawn the same way, so that strength 1 starts from the noise the subseed would have had."""
        channels = base.shape[0]
        old = None
        if self.resize_from is not None:
            old = (channels, self.resize_from[1] // self.scale_factor, self.resize_from[0] // self.scale_factor)
            if old == tuple(base.shape) or min(old[1:]) < 1:
                old = None
        # A1111 draws the resized noise as each seed's first noise at the old size.
        noise = _replay(seed, old, base.dtype, ()).float() if old else base.float()
        if self.strength > 0:
            sub = _replay(subseed, old, base.dtype, ()) if old else _replay(subseed, tuple(base.shape), base.dtype,
                                                                           before)
            noise = slerp(self.strength, noise, sub.float())
        if old:
            noise = paste_centred(noise, base.float())
        return noise.to(base.dtype)

    # -- where the noise enters each pipeline ---------------------------------------------------------------
    def prepare_batch(self, pipe: DiffusionPipeline, mode: str, inputs: dict[str, Any],
                      generators: list[torch.Generator], seeds: list[int], subseeds: list[int],
                      dtype: torch.dtype) -> dict[str, Any]:
        """The extra pipeline arguments for one batch (`latents`), or the batch's scheduler patched; call after
        the batch's scheduler is in place and before the pipeline runs."""
        import torch

        full_strength_inpaint = mode == "inpaint" and "mask_image" in inputs and inputs.get("strength") == 1.0
        if mode != "txt2img" and not full_strength_inpaint:
            self._swap_added_noise(pipe, seeds, subseeds)
            return {}
        width, height = inputs["width"], inputs["height"]
        if mode == "txt2img":
            channels = pipe.unet.config.in_channels  # as StableDiffusion(XL)Pipeline.prepare_latents
        else:
            channels = pipe.vae.config.latent_channels  # as the inpaint pipelines' prepare_latents
        shape = (channels, height // self.scale_factor, width // self.scale_factor)
        latents = []
        for index, (generator, seed, subseed) in enumerate(zip(generators, seeds, subseeds, strict=True)):
            before: Recipe = ()
            if full_strength_inpaint and index == 0 and pipe.unet.config.in_channels == 4:
                # A plain (4-channel) UNet's inpaint pipeline samples the image's latents with the first image's
                # generator before drawing its noise. That sample must stay the pipeline's own draw, so the noise is
                # read from a copy of the generator. (The generator then stands one draw behind where it would
                # without variation: for this image an ancestral sampler's noise differs from the plain run's.)
                before = (pipe.vae.dtype,)
                copy = torch.Generator("cpu")
                copy.set_state(generator.get_state())
                _draw(copy, shape, before[0])
                base = _draw(copy, shape, dtype)
            else:
                base = _draw(generator, shape, dtype)  # the pipeline's own draw, from its own generator
            latents.append(self.vary(base, seed, subseed, before))
        return {"latents": torch.stack(latents).to(pipe._execution_device)}

    def _swap_added_noise(self, pipe: DiffusionPipeline, seeds: list[int], subseeds: list[int]) -> None:
        """The batch's scheduler adds the varied noise where the pipeline's own would go: the first noise tensor
        add_noise sees is the pipeline's (img2img and inpaint draw it just before), and a 4-channel inpaint
        pipeline passes that same tensor again at every step; any other (LatentBlend's) passes untouched."""
        import torch

        scheduler = pipe.scheduler
        original: Callable = scheduler.add_noise
        swapped: dict[str, Any] = {}
        dtypes = list(dict.fromkeys([pipe.vae.dtype, torch.float32]))

        def add_noise(samples, noise, timesteps):
            if "from" not in swapped:
                swapped["from"], swapped["to"] = noise, self._varied_batch(noise, seeds, subseeds, dtypes)
            if noise is swapped["from"]:
                noise = swapped["to"]
            return original(samples, noise, timesteps)

        # An attribute of this batch's own scheduler object (build_scheduler makes one per batch): nothing shared.
        scheduler.add_noise = add_noise

    def _varied_batch(self, noise: torch.Tensor, seeds: list[int], subseeds: list[int],
                      dtypes: list[torch.dtype]) -> torch.Tensor:
        import torch

        out = []
        for base, seed, subseed in zip(noise.cpu(), seeds, subseeds, strict=True):
            out.append(self.vary(base, seed, subseed, _recipe(base, seed, dtypes)))
        return torch.stack(out).to(noise.device, noise.dtype)


def _recipe(base: torch.Tensor, seed: int, dtypes: list[torch.dtype]) -> Recipe:
    """Which draws came before the pipeline's noise for `seed`: found by replaying the candidates (nothing, or
    the VAE's sample of the image in the VAE's dtype) and keeping the one that gives `base` exactly. img2img
    samples the image with each image's generator first; a 4-channel inpaint pipeline with the first one only."""
    import torch

    shape = tuple(base.shape)
    for before in [(), *((dtype,) for dtype in dtypes)]:
        if torch.equal(_replay(seed, shape, base.dtype, before), base):
            return before
    return ()  # a pipeline that draws otherwise: the subseed's noise is its first draw, txt2img's noise
