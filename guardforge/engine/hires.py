"""Hires fix, as A1111 runs it: a txt2img first pass at the requested size, an upscale (of the latents, by one of
A1111's latent modes, or of the decoded image by any upscaler), then an img2img second pass at its own denoising
strength, steps, sampler and prompt. Sizes, infotext keys and defaults are A1111's (processing.py's
StableDiffusionProcessingTxt2Img), on diffusers' own img2img pipeline, which takes latents as its `image`."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image

    from guardforge.engine.request import GenerationRequest
    from guardforge.engine.upscalers import Upscalers
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import Limits

SIZE_MULTIPLE = 8  # A1111's opt_f: hires sizes come out as multiples of 8


class HiresOptions(BaseModel):
    """The second pass of a txt2img request (A1111's enable_hr and hr_* fields). Left at None, a field takes the
    first pass's value, as A1111's "Use same sampler" and an empty hires prompt do."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, ge=1.0, le=8.0, description="Upscale by (ignored when resize_x or resize_y is set)")
    upscaler: str = Field("Latent", max_length=1000, description="A latent mode (GET /v1/upscalers) or an upscaler")
    steps: int = Field(0, ge=0, description="Second-pass steps before the strength cuts them; 0: the first pass's")
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0)
    resize_x: int = Field(0, ge=0, description="Upscale to this width (0: from resize_y, or by scale)")
    resize_y: int = Field(0, ge=0, description="Upscale to this height (0: from resize_x, or by scale)")
    sampler: str | None = None
    schedule: str | None = None
    prompt: str | None = Field(None, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    cfg_scale: float | None = Field(None, ge=0.0, le=100.0, description="Second-pass CFG scale (Forge's hr_cfg)")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        from guardforge.engine.samplers import SAMPLERS, canonical_sampler_name

        if value is None:
            return None
        name = canonical_sampler_name(value)
        if name is None:
            raise ValueError(f"unknown sampler {value!r}; choose one of: {', '.join(SAMPLERS)}")
        return name

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str | None) -> str | None:
        from guardforge.engine.request import SCHEDULE_TYPES

        if value is not None and value not in SCHEDULE_TYPES:
            raise ValueError(f"unknown schedule {value!r}; choose one of: {', '.join(SCHEDULE_TYPES)}")
        return value


def is_latent(upscaler: str) -> bool:
    from guardforge.engine.upscalers import LATENT_UPSCALE_MODES

    return upscaler in LATENT_UPSCALE_MODES


def hires_sizes(width: int, height: int, options: HiresOptions) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the size the first pass is upscaled to, the final size after the centre crop), A1111's
    calculate_target_resolution: resize_x and resize_y both set crop to fill them; one alone keeps the aspect."""
    x, y = options.resize_x, options.resize_y
    if not x and not y:
        up = (int(width * options.scale), int(height * options.scale))
        target = up
    elif not y:
        up = target = (x, x * height // width)
    elif not x:
        up = target = (y * width // height, y)
    else:
        target = (x, y)
        up = (x, x * height // width) if width / height < x / y else (y * width // height, y)
    up = (max(up[0] // SIZE_MULTIPLE, 1) * SIZE_MULTIPLE, max(up[1] // SIZE_MULTIPLE, 1) * SIZE_MULTIPLE)
    final = (min(max(target[0] // SIZE_MULTIPLE, 1) * SIZE_MULTIPLE, up[0]),
             min(max(target[1] // SIZE_MULTIPLE, 1) * SIZE_MULTIPLE, up[1]))
    return up, final


def check_hires_size(width: int, height: int, options: HiresOptions, limits: Limits) -> None:
    """InvalidRequest when the final (or the upscaled) size is over the server's width or height limit."""
    up, final = hires_sizes(width, height, options)
    for name, value, cap in (("width", max(up[0], final[0]), limits.max_width),
                             ("height", max(up[1], final[1]), limits.max_height)):
        if value > cap:
            raise InvalidRequest(f"hires fix: the upscaled {name} {value} (from {width}x{height}) is over this "
                                 f"server's limit of {cap}")


def second_pass_steps(request: GenerationRequest) -> int:
    return request.hires.steps or request.steps


def check_hires(request: GenerationRequest, upscalers: Upscalers) -> None:
    """What the hires pass would refuse, refused without loading anything: an upscaler that is not there or not
    allowed, a sampler without the schedule asked for, LoRA tags in the hires prompt other than the prompt's."""
    from guardforge.engine.prompts import extract_lora_tags, prompt_chunks
    from guardforge.engine.samplers import check_sampler

    options = request.hires
    if request.mode != "txt2img":
        raise InvalidRequest("hires fix is for txt2img: leave hires out with an init_image")
    if not is_latent(options.upscaler):
        upscalers.resolve(options.upscaler, hires=True)
    check_sampler(options.sampler or request.sampler, options.schedule or request.schedule)
    if options.prompt is not None:
        text, tags = extract_lora_tags(options.prompt)
        if tags and tags != extract_lora_tags(request.prompt)[1]:
            # The LoRAs are loaded into the model once for both passes: A1111's per-pass networks would mean
            # loading them twice per image.
            raise InvalidRequest("hires fix: the hires prompt's <lora:...> tags must be the prompt's (or none)")
        prompt_chunks(text)
    if options.negative_prompt is not None:
        prompt_chunks(options.negative_prompt)


def infotext_params(request: GenerationRequest) -> dict[str, Any]:
    """A1111's hires keys for the infotext, in its order; values equal to the first pass's are left out as A1111
    leaves them out."""
    options = request.hires
    params: dict[str, Any] = {}
    if options.resize_x or options.resize_y:
        params["Hires resize"] = f"{options.resize_x}x{options.resize_y}"
    else:
        params["Hires upscale"] = f"{options.scale:g}"
    params["Hires steps"] = options.steps or None
    params["Hires upscaler"] = options.upscaler
    params["Hires sampler"] = options.sampler if options.sampler and options.sampler != request.sampler else None
    params["Hires schedule type"] = (options.schedule if options.schedule and options.schedule != request.schedule
                                     else None)
    params["Hires prompt"] = options.prompt if options.prompt and options.prompt != request.prompt else None
    params["Hires negative prompt"] = (options.negative_prompt if options.negative_prompt
                                       and options.negative_prompt != request.negative_prompt else None)
    # Forge's key (A1111 has no hires CFG); written only where it differs, as the other hires keys.
    params["Hires CFG Scale"] = (f"{options.cfg_scale:g}" if options.cfg_scale is not None
                                 and options.cfg_scale != request.cfg_scale else None)
    return params


def fields_from_params(p: dict[str, Any]) -> dict[str, Any] | None:
    """The `hires` request field an infotext's parsed parameters give (values unchecked), or None without one."""
    if not any(key in p for key in ("Hires upscale", "Hires resize-1", "Hires upscaler")):
        return None
    mapping = {"Hires upscale": "scale", "Hires steps": "steps", "Hires upscaler": "upscaler",
               "Hires resize-1": "resize_x", "Hires resize-2": "resize_y", "Hires sampler": "sampler",
               "Hires schedule type": "schedule", "Hires prompt": "prompt", "Hires negative prompt": "negative_prompt",
               "Hires CFG Scale": "cfg_scale", "Denoising strength": "denoising_strength"}
    return {name: p[key] for key, name in mapping.items() if key in p}


def pass_steps(base_config: dict, sampler: str, schedule: str, steps: int, strength: float | None = None) -> int:
    """The denoising steps a diffusers pass will report (its scheduler's timesteps; img2img starts part-way)."""
    from guardforge.engine.samplers import build_scheduler

    scheduler = build_scheduler(base_config, sampler, schedule)
    scheduler.set_timesteps(steps)
    count = len(scheduler.timesteps)
    if strength is None:
        return count
    start = max(steps - min(int(steps * strength), steps), 0)
    return max(count - start * scheduler.order, 0)


def decode_latents(pipe: DiffusionPipeline, latents) -> list[Image.Image]:
    """Latents to images as SD and SDXL pipelines decode them (the VAE upcast where its config asks for it)."""
    import torch

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        with torch.no_grad():
            latents = latents.to(vae.device, dtype) / vae.config.scaling_factor
            if getattr(vae.config, "shift_factor", None):
                latents = latents + vae.config.shift_factor
            decoded = vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    return pipe.image_processor.postprocess(decoded, output_type="pil")


class _EmptyFp32Warning:
    """Drops diffusers' "modules ... should be kept in float32: []" warning: from_pipe always calls `.to(dtype=...)`
    on each model, which warns even when no module is to be kept in float32 (the list is empty) and the dtype
    does not change, so every hires run with a latent upscaler printed two warnings about nothing."""

    def filter(self, record) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


class _no_empty_fp32_warning:
    def __enter__(self):
        import logging

        self.logger = logging.getLogger("diffusers.models.modeling_utils")
        self.filter = _EmptyFp32Warning()
        self.logger.addFilter(self.filter)

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self.filter)


def _start_from_latents(base: type) -> type:
    """`base` (an img2img pipeline class) starting from latents of the VAE's own channel count. diffusers reads
    `image` as latents only when it has 4 channels (SD's, SDXL's) and would run any other through the VAE's
    encoder: a model with 8 latent channels, such as the shipped tiny-shapes, could not take latent hires fix."""

    def prepare_latents(self, image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None,
                        *args, **kwargs):
        from diffusers.utils.torch_utils import randn_tensor

        if image.ndim != 4 or image.shape[1] != self.vae.config.latent_channels:
            return base.prepare_latents(self, image, timestep, batch_size, num_images_per_prompt, dtype, device,
                                        generator, *args, **kwargs)
        latents = image.to(device=device, dtype=dtype)
        total = batch_size * num_images_per_prompt
        if total % latents.shape[0]:
            raise InvalidRequest(f"{latents.shape[0]} latents cannot make a batch of {total}")
        latents = latents.repeat(total // latents.shape[0], 1, 1, 1)
        # As diffusers' own 4-channel branch: noise for the starting timestep, from the per-image generators.
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(latents, noise, timestep)

    return type(f"Latent{base.__name__}", (base,), {"prepare_latents": prepare_latents})


class HiresPass:
    """The hires fix of one request: built once per request (its pipeline, sizes, texts), then run for each batch
    from that batch's first pass. The engine encodes its texts after loading the LoRAs."""

    def __init__(self, loaded: LoadedModel, request: GenerationRequest, upscalers: Upscalers, size: tuple[int, int],
                 prompt: str, base_config: dict):
        from guardforge.engine.prompts import extract_lora_tags

        self.loaded = loaded
        self.request = request
        self.options = request.hires
        self.upscalers = upscalers
        self.up, self.final = hires_sizes(*size, self.options)
        self.base_config = base_config
        self.sampler = self.options.sampler or request.sampler
        self.schedule = self.options.schedule or request.schedule
        self.steps = second_pass_steps(request)
        self.strength = self.options.denoising_strength
        self.cfg_scale = request.cfg_scale if self.options.cfg_scale is None else self.options.cfg_scale
        self.prompt = prompt if self.options.prompt is None else extract_lora_tags(self.options.prompt)[0]
        negative = self.options.negative_prompt
        self.negative = request.negative_prompt if negative is None else negative
        if getattr(loaded.pipeline, "unet", None) is None:  # Flux and SD3 pack their latents: no latent modes
            raise InvalidRequest("hires fix needs an SD 1.x, SD 2.x or SDXL model (a UNet); this one has none")
        self.pipe = loaded.for_mode("img2img")
        if self.latent:  # a pipeline object of its own, over the same modules: from_pipe copies no weight
            from diffusers.image_processor import VaeImageProcessor

            with _no_empty_fp32_warning():
                self.pipe = _start_from_latents(type(self.pipe)).from_pipe(self.pipe)
            # Its own image processor passes latents of the VAE's channel count through (its default knows 4).
            self.pipe.image_processor = VaeImageProcessor(vae_scale_factor=self.pipe.vae_scale_factor,
                                                          vae_latent_channels=self.pipe.vae.config.latent_channels)
        self.pipe.set_progress_bar_config(disable=True)
        self.runs = int(self.steps * self.strength) >= 1  # strength 0: an upscale alone, no second pass

    def steps_per_batch(self) -> int:
        """Both passes' steps, for progress over the whole request."""
        request = self.request
        first = pass_steps(self.base_config, request.sampler, request.schedule, request.steps)
        second = pass_steps(self.base_config, self.sampler, self.schedule, self.steps, self.strength)
        return first + (second if self.runs else 0)

    @property
    def latent(self) -> bool:
        return is_latent(self.options.upscaler)

    def run_batch(self, first_pipe: DiffusionPipeline, first_kwargs: dict, seeds: list[int], embeds: Any,
                  progress: Any, cancel: threading.Event | None = None) -> list[Image.Image]:
        """The first pass, the upscale, the second pass, for one batch. `embeds`: the second pass's
        conditioning (prompt_schedule.PassConditioning)."""
        import torch
        from torch.nn import functional as F

        from guardforge.engine.samplers import build_scheduler
        from guardforge.engine.upscalers import LATENT_UPSCALE_MODES, center_crop

        first = first_pipe(**first_kwargs, output_type="latent" if self.latent else "pil").images
        progress.check_cancel()
        if progress.ends_batch():  # skipped or interrupted in the first pass: deliver it as it is, as A1111
            return decode_latents(first_pipe, first) if self.latent else first
        factor = getattr(self.pipe, "vae_scale_factor", 8)
        width, height = self.final
        if self.latent:
            mode, antialias = LATENT_UPSCALE_MODES[self.options.upscaler]
            latents = F.interpolate(first, size=(self.up[1] // factor, self.up[0] // factor), mode=mode,
                                    antialias=antialias)
            top, left = (latents.shape[2] - height // factor) // 2, (latents.shape[3] - width // factor) // 2
            image: Any = latents[:, :, top:top + height // factor, left:left + width // factor]
            if not self.runs:
                return decode_latents(self.pipe, image)
        else:
            device = self.loaded.device
            image = [center_crop(self.upscalers.resize(picture, self.options.upscaler, *self.up, device=device,
                                                       cancel=cancel), width, height) for picture in first]
            if not self.runs:
                return image
        base = self.pipe.scheduler
        self.pipe.scheduler = build_scheduler(self.base_config, self.sampler, self.schedule, seed=seeds[0])
        try:
            return self.pipe(
                **embeds.kwargs, image=image, strength=self.strength, num_inference_steps=self.steps,
                guidance_scale=self.cfg_scale, num_images_per_prompt=len(seeds),
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pil",
                **embeds.step_kwargs(progress.callback),
            ).images
        finally:
            self.pipe.scheduler = base
