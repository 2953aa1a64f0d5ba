"""The engine: one GenerationRequest run on a loaded diffusers pipeline (txt2img, img2img, inpaint).

Reproducibility: every image gets its own `torch.Generator` on the CPU seeded with its own seed
(seed, seed+1, ... over batch_size x n_iter, as A1111 numbers them). Initial noise is drawn on the CPU and
then moved to the device, so one seed gives the same image on CPU, CUDA, MPS or XPU (up to the device's
arithmetic) and whether it was made alone or as the third image of a batch. The exception is DPM++ SDE,
whose Brownian-tree noise is seeded once per batch with the batch's first seed.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter, ImageOps

from guardforge.engine.hires import HiresPass, check_hires, check_hires_size
from guardforge.engine.latent_inpaint import LatentBlend, needs_latent_blend
from guardforge.dependencies import require_lora_support
from guardforge.engine.embeddings import applied_embeddings, embeddings_in, read_embedding, spell_out
from guardforge.engine.lora import applied_loras, resolve_loras
from guardforge.engine.masked_content import LatentFill, fill_mode, source_image
from guardforge.engine.outpaint import check_canvas, extend
from guardforge.engine.prompt_schedule import PassConditioning, pass_texts
from guardforge.engine.prompts import PromptEncoder, extract_lora_tags, prompt_chunks
from guardforge.engine.refiner import Handover
from guardforge.engine.request import GenerationRequest, ProgressEvent
from guardforge.engine.samplers import build_scheduler, check_sampler
from guardforge.engine.variation import Variation, request_subseeds, with_fixed_subseed
from guardforge.errors import Cancelled, InvalidRequest

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from guardforge.engine.controlnet import ControlRun
    from guardforge.engine.ip_adapter import IPAdapterRun
    from guardforge.engine.preview import Previews
    from guardforge.engine.upscalers import Upscalers
    from guardforge.models.cache import LoadedModel
    from guardforge.models.registry import ModelRegistry
    from guardforge.settings import Settings

ProgressCallback = Callable[[ProgressEvent], None]


def native_size(pipe: DiffusionPipeline) -> tuple[int, int]:
    """(width, height) the model was trained at: the denoiser's sample size times the VAE's scale factor."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", 8)
    if sample is None:
        return 512, 512
    if isinstance(sample, (list, tuple)):
        return int(sample[1]) * factor, int(sample[0]) * factor
    if getattr(pipe, "transformer", None) is not None and getattr(pipe, "unet", None) is None:
        # Flux and SD3 keep their default in the pipeline (latent size before 2x2 patch packing).
        default = getattr(pipe, "default_sample_size", sample)
        return int(default) * factor, int(default) * factor
    return int(sample) * factor, int(sample) * factor


def native_size_from_configs(folder: Path) -> tuple[int, int]:
    """native_size read from a diffusers folder's config files, without loading the model (a request blocked at
    the prompt never loads it, yet its placeholder must have the size its image would have had)."""
    import json
    from types import SimpleNamespace

    def config(name: str) -> SimpleNamespace | None:
        path = Path(folder) / name / "config.json"
        return SimpleNamespace(config=SimpleNamespace(**json.loads(path.read_text()))) if path.is_file() else None

    vae = config("vae")
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae else 8  # diffusers' vae_scale_factor
    # The parts of a pipeline native_size reads, so that both answers follow one rule.
    return native_size(SimpleNamespace(unet=config("unet"), transformer=config("transformer"),
                                       vae_scale_factor=factor))


def request_seeds(request: GenerationRequest) -> list[int]:
    """One seed per image: seed, seed+1, ... over batch_size x n_iter; -1 draws a fresh random first seed.
    With a variation strength every image has the same seed and the subseeds count up instead (A1111's)."""
    total = request.batch_size * request.n_iter
    first = request.seed if request.seed != -1 else secrets.randbelow(2**32 - total)
    return [first + (i if request.subseed_strength == 0 else 0) for i in range(total)]


def binary_mask(mask: Image.Image) -> Image.Image:
    """A1111's create_binary_mask: a mask with real transparency is its alpha channel, cut at 128 (above is
    repainted); any other mask is its grey level as given. Editors and Gradio's sketch hand over an RGBA image
    whose painted strokes are opaque on a transparent (often white) canvas, where grey alone would repaint all."""
    if mask.mode in ("LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        mask = mask.convert("RGBA")
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        return mask.getchannel("A").point(lambda alpha: 255 if alpha > 128 else 0)
    return mask.convert("L")


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """The mask in A1111's order: binary_mask, inverted if asked, Gaussian-blurred at the mask's own size (so
    --mask-blur counts the mask's pixels, as in A1111), then resized to the output."""
    mask = binary_mask(mask)
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask.resize(size, Image.LANCZOS)


class _Progress:
    """Turns diffusers' per-step callback into ProgressEvents over the whole request and checks cancel."""

    def __init__(self, n_iter: int, on_progress: ProgressCallback | None, cancel: threading.Event | None,
                 skip: threading.Event | None = None, interrupt: threading.Event | None = None,
                 previews: Previews | None = None):
        self.n_iter = n_iter
        self.previews = previews
        self.on_progress = on_progress
        self.cancel = cancel
        self.skip = skip
        self.interrupt = interrupt
        self.iteration = 0
        self.done = 0
        self.per_batch = 0
        # Steps per batch when known ahead (hires fix's two passes, a refiner's two parts); None: the pipe's.
        self.planned: int | None = None
        self.started = time.perf_counter()

    def interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt.is_set()

    def ends_batch(self) -> bool:
        return self.interrupted() or (self.skip is not None and self.skip.is_set())

    def end_iteration(self) -> None:
        """A skipped batch ran fewer steps: count them as done so that step, total and ETA stay right."""
        self.done = max(self.done, (self.iteration + 1) * self.per_batch)
        if self.skip is not None:
            self.skip.clear()  # a skip ends one batch only, as in A1111

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"cancelled after {self.done} steps")

    def callback(self, pipe: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        self.done += 1
        self.per_batch = per_batch = self.planned or int(getattr(pipe, "num_timesteps", 0) or step + 1)
        if self.on_progress is not None:
            total = per_batch * self.n_iter
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            rate = self.done / elapsed
            event = ProgressEvent(step=self.done, total=total, it_per_s=rate,
                                  eta_s=max(total - self.done, 0) / rate, batch_index=self.iteration)
            if self.previews is not None:
                event = self.previews.attach(event, kwargs.get("latents"))
            self.on_progress(event)
        # Checked after reporting, so a caller that cancels from its progress handler stops at this step.
        self.check_cancel()
        if self.ends_batch():
            # diffusers' own interrupt flag: the remaining steps of this batch are passed over and the
            # latents decoded as they are, which is what A1111's skip and interrupt deliver.
            pipe._interrupt = True
        return kwargs


def _chained(first: Callable, second: Callable) -> Callable:
    """One step-end callback that runs two in turn (diffusers takes one)."""
    def callback(pipe: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        return second(pipe, step, timestep, first(pipe, step, timestep, kwargs))

    return callback


def _check_strength(request: GenerationRequest) -> None:
    if request.mode != "txt2img" and int(request.steps * request.denoising_strength) < 1:
        raise InvalidRequest(
            f"denoising_strength {request.denoising_strength} x {request.steps} steps leaves no step to run; "
            "raise either")


class Engine:
    """Runs requests on LoadedModels. Holds no model and no lock: Studio's cache holds the models, and run() takes
    the lock each LoadedModel carries, so requests on one model copy take turns."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None, upscalers: Upscalers | None = None):
        self.settings = settings
        self._registry = registry
        self._upscalers = upscalers

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            from guardforge.models.registry import ModelRegistry

            self._registry = ModelRegistry(self.settings)
        return self._registry

    @property
    def upscalers(self) -> Upscalers:
        if self._upscalers is None:
            from guardforge.engine.upscalers import Upscalers

            self._upscalers = Upscalers(self.settings, self.registry)
        return self._upscalers

    def check(self, request: GenerationRequest) -> None:
        """Refuse now, without loading anything, what run() would refuse later: an unknown sampler or a
        schedule it lacks, a strength that leaves no step, a LoRA tag or attention weight that does not parse,
        a missing or pickle LoRA."""
        check_sampler(request.sampler, request.schedule)
        _check_strength(request)
        prompt, tags = extract_lora_tags(request.prompt)
        prompt_chunks(prompt)
        prompt_chunks(request.negative_prompt)
        if tags:
            require_lora_support()
            resolve_loras(self.registry, tags, self.settings.allow_pickle)
        for entry in embeddings_in(self.registry, prompt, request.negative_prompt):
            read_embedding(entry, self.settings.allow_pickle)  # a pickle or a file of no vectors is refused now
        if request.hires is not None:
            check_hires(request, self.upscalers)

    def size_for(self, loaded: LoadedModel, request: GenerationRequest) -> tuple[int, int]:
        native_w, native_h = native_size(loaded.pipeline)
        return request.width or native_w, request.height or native_h

    def run(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        init_image: Image.Image | None = None,
        mask: Image.Image | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        skip: threading.Event | None = None,
        interrupt: threading.Event | None = None,
        control: ControlRun | None = None,
        refiner: LoadedModel | None = None,
        ip_adapter: IPAdapterRun | None = None,
        previews: Previews | None = None,
    ) -> list[tuple[Image.Image, int]]:
        """Generate batch_size x n_iter images; returns (image, seed) pairs in seed order.

        `cancel` stops the request between two steps (Cancelled is raised, nothing is returned). As in A1111,
        `skip` ends the current batch early, keeps its partly denoised images and goes on with the next batch;
        `interrupt` does the same but runs no further batch, so the images made so far are returned.
        `control`: the request's ControlNet units, prepared (engine/controlnet.py).
        `refiner` takes over from the model at request.refiner.switch_at (engine/refiner.py).
        `ip_adapter`: the request's IP-Adapter, loaded into the pipeline for this run only (engine/ip_adapter.py).
        `previews` puts a screened latent preview on every few progress events (engine/preview.py).
        """
        import torch

        mode = request.mode
        if mode != "txt2img" and init_image is None:
            raise InvalidRequest(f"{mode} needs the decoded init image")
        if mode == "inpaint" and mask is None and request.outpaint is None:
            raise InvalidRequest("inpaint needs the decoded mask")
        _check_strength(request)
        if request.outpaint is not None:  # the larger canvas and its mask, then inpainted as any other
            check_canvas(request, init_image.size, self.settings.limits)
            init_image, mask = extend(init_image, request)
        width, height = init_image.size if request.outpaint is not None else self.size_for(loaded, request)
        if request.hires is not None:
            check_hires(request, self.upscalers)
            check_hires_size(width, height, request.hires, self.settings.limits)
        seeds = request_seeds(request)
        subseeds = request_subseeds(with_fixed_subseed(request))
        prompt, tags = extract_lora_tags(request.prompt)
        loras = resolve_loras(self.registry, tags, self.settings.allow_pickle) if tags else []
        embeddings = embeddings_in(self.registry, prompt, request.negative_prompt)

        mode_inputs: dict[str, Any] = {}
        original = blend_mask = source = None
        if init_image is not None:
            original = init_image.convert("RGB").resize((width, height), Image.LANCZOS)
            mode_inputs = {"image": original, "strength": request.denoising_strength}
        if mode == "inpaint":
            blend_mask = prepare_mask(mask, (width, height), request.mask_blur, request.inpainting_mask_invert)
            # What the masked area holds before denoising; the overlay afterwards uses `original`.
            source = source_image(original, blend_mask, fill_mode(request))
            mode_inputs.update(image=source, mask_image=blend_mask, width=width, height=height)
        elif mode == "txt2img":
            mode_inputs.update(width=width, height=height)

        progress = _Progress(request.n_iter, on_progress, cancel, skip, interrupt, previews)
        results: list[tuple[Image.Image, int]] = []
        # A request swaps the scheduler and loads LoRAs into the shared pipeline, and the cache re-places
        # weights (another dtype or offload) under the same lock: so requests on one model take turns with
        # each other and with the cache, while different models run in parallel.
        with loaded.lock:
            latent_blend = None
            run_mode = mode
            if mode == "inpaint" and needs_latent_blend(loaded.pipeline):
                run_mode = "img2img"
                pipe = control.pipeline(loaded, run_mode) if control is not None else loaded.for_mode("img2img")
                latent_blend = LatentBlend(pipe, source, blend_mask)
                mode_inputs = {"image": source, "strength": request.denoising_strength}
            else:
                pipe = control.pipeline(loaded, mode) if control is not None else loaded.for_mode(mode)
            control_inputs = control.inputs(run_mode) if control is not None else {}
            variation = Variation.of(request, pipe)
            latent_fill = LatentFill.of(request, blend_mask)
            # The engine reports progress through on_progress; diffusers' own tqdm bar would only add noise.
            pipe.set_progress_bar_config(disable=True)
            progress.check_cancel()
            base_scheduler = pipe.scheduler
            try:
                with (ip_adapter.applied(pipe) if ip_adapter is not None else nullcontext({})) as ip_inputs, \
                        applied_loras(pipe, loras), \
                        applied_embeddings(pipe, embeddings, self.settings.allow_pickle) as inversions:
                    # Encoded once per request, after the LoRAs, which may patch the text encoder too: each text
                    # a step reads (prompt editing schedules them, engine/prompt_schedule.py), once.
                    encoder = PromptEncoder(pipe, request.clip_skip, pipe._execution_device)
                    passes = pass_texts(request, base_scheduler.config, prompt)
                    with torch.no_grad():
                        embeds = PassConditioning(encoder, passes[0], lambda text: spell_out(text, inversions))
                    hires = hires_embeds = None
                    if request.hires is not None:
                        hires = HiresPass(loaded, request, self.upscalers, (width, height), prompt,
                                          base_scheduler.config)
                        progress.planned = hires.steps_per_batch()
                        if len(passes) > 1:
                            with torch.no_grad():
                                hires_embeds = PassConditioning(encoder, passes[1],
                                                                lambda text: spell_out(text, inversions))
                    # A refiner's hand-over stands in for the pipeline call: batches, seeds and callbacks stay.
                    run_pipe = pipe
                    if refiner is not None:
                        run_pipe = Handover(refiner, request, passes[0], progress).wrap(pipe)
                    for iteration in range(request.n_iter):
                        progress.iteration = iteration
                        progress.check_cancel()
                        if progress.interrupted():
                            break
                        batch_seeds = seeds[iteration * request.batch_size:(iteration + 1) * request.batch_size]
                        pipe.scheduler = build_scheduler(base_scheduler.config, request.sampler, request.schedule,
                                                         seed=batch_seeds[0])
                        generators = [torch.Generator("cpu").manual_seed(s) for s in batch_seeds]
                        varied = {}
                        if variation is not None:
                            varied = variation.prepare_batch(
                                pipe, mode, mode_inputs, generators, batch_seeds,
                                subseeds[iteration * request.batch_size:(iteration + 1) * request.batch_size],
                                embeds.kwargs["prompt_embeds"].dtype)
                        if latent_fill is not None:
                            latent_fill.install(pipe, batch_seeds)
                        callback = progress.callback
                        if latent_blend is not None:
                            latent_blend.start_batch(batch_seeds)
                            callback = _chained(latent_blend, progress.callback)
                        first_pass = dict(
                            **embeds.kwargs,
                            **mode_inputs,
                            **varied,
                            **control_inputs,
                            **ip_inputs,
                            num_inference_steps=request.steps,
                            guidance_scale=request.cfg_scale,
                            num_images_per_prompt=request.batch_size,
                            generator=generators,
                            **embeds.step_kwargs(callback, pipe),
                        )
                        if hires is not None:
                            images = hires.run_batch(pipe, first_pass, batch_seeds, hires_embeds, progress, cancel)
                        else:
                            images = run_pipe(**first_pass, output_type="pil").images
                        for image, seed in zip(images, batch_seeds, strict=True):
                            if blend_mask is not None:
                                # A1111's overlay: pixels outside the (blurred) mask come back from the original
                                # exactly, undoing the VAE round trip's drift there.
                                image = Image.composite(image.convert("RGB"), original, blend_mask)
                            results.append((image, seed))
                        progress.end_iteration()
            finally:
                pipe.scheduler = base_scheduler
                if control is not None:
                    control.release(pipe)
        return results
