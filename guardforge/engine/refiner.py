"""The SDXL refiner: a base model denoises the first part of the schedule and hands its latents to a second
model (A1111's `refiner_checkpoint` / `refiner_switch_at`), the way diffusers does it: the base pipeline with
`denoising_end=switch, output_type="latent"`, then the refiner's img2img pipeline with `denoising_start=switch`
on those latents.

`switch_at` is, as in A1111, a fraction of the steps the request runs: for txt2img that is the fraction of the
whole schedule diffusers' `denoising_end` takes; for img2img the base starts where its strength puts it, so the
switch sits `switch_at` of the way from there to the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image

    from guardforge.engine.prompt_schedule import PassTexts
    from guardforge.engine.request import GenerationRequest
    from guardforge.models.cache import LoadedModel
    from guardforge.models.registry import ModelEntry

# diffusers hands over between models (denoising_end on one pipeline, denoising_start on the next) only in its
# SDXL pipelines; SD 1.x/2.x, SD3 and Flux img2img pipelines take no denoising_start.
HANDOVER_FAMILIES = ("sdxl",)


def check_refiner(request: GenerationRequest, base: ModelEntry, refiner: ModelEntry) -> None:
    """InvalidRequest, naming what is wrong, for a refiner that cannot take over from `base` in `request`."""
    if request.mode == "inpaint":
        raise InvalidRequest("a refiner runs with txt2img and img2img, not inpaint; leave the refiner out")
    if refiner.family != base.family:
        raise InvalidRequest(
            f"refiner {refiner.name!r} is a {refiner.family} model and the model {base.name!r} a {base.family} one: "
            "their latent spaces differ, so one cannot finish the other's image; choose a refiner of the same family")
    if base.family not in HANDOVER_FAMILIES:
        raise InvalidRequest(
            f"refiner {refiner.name!r} and model {base.name!r} are {base.family} models: diffusers hands over "
            f"between two models only for {', '.join(HANDOVER_FAMILIES)} pipelines; leave the refiner out")


def switch_fraction(request: GenerationRequest) -> float:
    """Where the hand-over falls as a fraction of the whole noise schedule (diffusers' denoising_end/start)."""
    assert request.refiner is not None
    if request.mode == "txt2img":
        return request.refiner.switch_at
    strength = request.denoising_strength
    return (1 - strength) + strength * request.refiner.switch_at


def base_share(base: Any, request: GenerationRequest, switch: float) -> int:
    """The denoising steps the base part runs, counted on a fresh copy of its scheduler as diffusers' SDXL
    pipelines count them (the refiner's steps count on from there: prompt editing's schedule goes on)."""
    base.set_timesteps(request.steps, device="cpu")
    timesteps = base.timesteps
    if request.mode != "txt2img":
        start = request.steps - min(int(request.steps * request.denoising_strength), request.steps)
        timesteps = timesteps[start * base.order:]
    total = base.config.num_train_timesteps
    cutoff = int(round(total - switch * total))
    return int((timesteps >= cutoff).sum().item())


def planned_steps(base: Any, refiner: Any, request: GenerationRequest, switch: float) -> int:
    """Steps per batch over both parts, counted on fresh copies of each part's scheduler as diffusers' SDXL
    pipelines count them, so that progress has its total from the first step (each part's pipeline knows only
    its own)."""
    counted = base_share(base, request, switch)
    refiner.set_timesteps(request.steps, device="cpu")
    total = refiner.config.num_train_timesteps
    cutoff = int(round(total - switch * total))
    refined = int((refiner.timesteps < cutoff).sum().item())
    if refiner.order == 2 and refined % 2 == 0:
        refined += 1  # diffusers' img2img ends on a whole second-order step
    return counted + refined


def decode_latents(pipe: DiffusionPipeline, latents: Any) -> list[Image.Image]:
    """The images of SDXL latents, decoded as the pipeline's own final step decodes them (a batch skipped during
    the base part ends there, as a skipped batch does without a refiner)."""
    import torch

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        pipe.upcast_vae()
    latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    with torch.no_grad():
        image = vae.decode(latents, return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil")


class Handover:
    """Stands in for the base pipeline in Engine.run: called with the base pipeline's keyword arguments, it runs
    the base to the switch and the refiner from there, and returns what the pipeline would (`.images`).

    Built inside Engine.run, with the base model's lock held; it takes the refiner's lock for each batch (one
    worker runs one request at a time on its own copies, so the two locks are never taken in the other order by
    another thread holding the refiner's first)."""

    def __init__(self, refiner: LoadedModel, request: GenerationRequest, texts: PassTexts, progress: Any):
        self.loaded = refiner
        self.request = request
        self.texts = texts
        self.progress = progress
        self.switch = switch_fraction(request)
        self.embeds: Any = None  # the refiner's share of the schedule, encoded once the base's share is known
        with refiner.lock:
            self.pipe = refiner.for_mode("img2img")
            self.pipe.set_progress_bar_config(disable=True)

    def wrap(self, base: DiffusionPipeline) -> Callable[..., Any]:
        from types import SimpleNamespace

        from guardforge.engine.samplers import build_scheduler

        def fresh(pipe: DiffusionPipeline) -> Any:
            return build_scheduler(pipe.scheduler.config, self.request.sampler, self.request.schedule, seed=0)

        self.progress.planned = planned_steps(fresh(base), fresh(self.pipe), self.request, self.switch)
        import torch

        from guardforge.engine.prompt_schedule import PassConditioning
        from guardforge.engine.prompts import PromptEncoder

        with self.loaded.lock, torch.no_grad():
            # The refiner's own text encoders (SDXL's refiner has only the second): its embeddings, weighted by the
            # same rules as the base's, for the steps after the base's share.
            encoder = PromptEncoder(self.pipe, self.request.clip_skip, self.pipe._execution_device)
            self.embeds = PassConditioning(encoder, self.texts,
                                           offset=base_share(fresh(base), self.request, self.switch))

        def run(**kwargs: Any) -> Any:
            kwargs.pop("output_type", None)
            latents = base(**kwargs, denoising_end=self.switch, output_type="latent").images
            if self.progress.ends_batch():
                return SimpleNamespace(images=decode_latents(base, latents))
            return SimpleNamespace(images=self._refine(latents, kwargs))

        return run

    def _refine(self, latents: Any, base_kwargs: dict) -> list[Image.Image]:
        from guardforge.engine.samplers import build_scheduler

        generators = base_kwargs["generator"]
        pipe = self.pipe
        with self.loaded.lock:
            own = pipe.scheduler
            # The request's sampler on the refiner too, seeded as the base's (DPM++ SDE's noise is per batch).
            pipe.scheduler = build_scheduler(own.config, self.request.sampler, self.request.schedule,
                                             seed=generators[0].initial_seed())
            try:
                return pipe(
                    **self.embeds.kwargs,
                    image=latents.to(pipe._execution_device),
                    denoising_start=self.switch,
                    num_inference_steps=self.request.steps,
                    guidance_scale=self.request.cfg_scale,
                    num_images_per_prompt=latents.shape[0],
                    # Each image's own generator, where the base left it: seeds stay per image.
                    generator=generators,
                    output_type="pil",
                    **self.embeds.step_kwargs(self.progress.callback, pipe),
                ).images
            finally:
                pipe.scheduler = own
