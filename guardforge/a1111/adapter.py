"""A1111 <-> Studio: the one place that translates AUTOMATIC1111's API (its payloads, options, answers, PNG info)
to and from Studio calls. The /sdapi/v1 routes are this module's calls over HTTP; the UI reads PNG info with it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from guardforge.a1111.hires import HIRES_FIELDS, hires_from_payload
from guardforge.a1111.controlnet import units_from_payload
from guardforge.a1111.ip_adapter import split_ip_adapter
from guardforge.a1111.scripts import check_script_fields, scripts_from_payload
from guardforge.a1111.schemas import SCHEDULERS_LISTED, SCHEDULES, ImageResponse, Img2ImgPayload, Txt2ImgPayload
from guardforge.access.caller import Caller
from guardforge.engine.hires import hires_sizes
from guardforge.engine.infotext import parse_infotext
from guardforge.engine.masked_content import FILLS
from guardforge.engine.outpaint import POOR_MANS_OUTPAINTING, SIDES
from guardforge.engine.request import AUTOMATIC_VAE, GenerationRequest
from guardforge.engine.samplers import split_legacy_sampler
from guardforge.errors import GuardforgeError, InvalidRequest, JobFailed, caller_error
from guardforge.guard.blur import withheld_tile
from guardforge.imaging import encode_image
from guardforge.jobs.queue import Job
from guardforge.storage.outputs import infotext_of

log = logging.getLogger(__name__)
A1111_VERSION = "guardforge-0.1.0"
PRIORITY = 0  # A1111 callers wait on the answer, but are not ahead of native jobs


def to_generation_request(payload: Txt2ImgPayload, default_model: str, default_vae: str = "Automatic",
                          max_pixels: int = 4096 * 4096) -> tuple[GenerationRequest, list[str]]:
    """The GenerationRequest a payload asks for, and the names of the fields that had no effect.

    `default_model` and `default_vae` are the caller's options; override_settings replace them for this request.
    `max_pixels` caps the images the payload's ControlNet units are decoded from, where one carries a mask."""
    extra = dict(payload.model_extra or {})
    styles = extra.pop("styles", None) or []  # A1111's style names, applied by the Studio (engine/styles.py)
    img2img = isinstance(payload, Img2ImgPayload)
    # Installed scripts (a1111/scripts.py) by name; controlnet stays in alwayson_scripts for the units below.
    script_fields, alwayson = scripts_from_payload(
        extra.pop("alwayson_scripts", None), payload.script_name if img2img else extra.pop("script_name", None),
        payload.script_args if img2img else extra.pop("script_args", None), img2img)
    # sd-webui-controlnet's IP-Adapter units are the request's ip_adapter here; the others are ControlNet units.
    scripts, ip_adapter, ip_ignored = split_ip_adapter(
        alwayson,
        payload.init_images[0] if isinstance(payload, Img2ImgPayload) and payload.init_images else None)
    controlnet, ignored = units_from_payload(scripts, max_pixels)
    ignored += ip_ignored
    hires, hires_ignored = (None, []) if isinstance(payload, Img2ImgPayload) else hires_from_payload(
        extra, payload.denoising_strength, SCHEDULES)
    hires_keys = set() if isinstance(payload, Img2ImgPayload) else set(HIRES_FIELDS)
    ignored = sorted(ignored + hires_ignored + [k for k, v in extra.items()
                                                if k not in hires_keys and v not in (None, False, 0, "", [], {})])
    overrides = dict(payload.override_settings or {})
    model = overrides.pop("sd_model_checkpoint", None) or default_model
    vae = overrides.pop("sd_vae", None)
    vae = default_vae if vae is None else vae
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", 1)
    ignored += [f"override_settings.{k}" for k in sorted(overrides)]
    schedule = "Automatic"
    if payload.scheduler:
        schedule = SCHEDULES.get(payload.scheduler.strip().lower())
        if schedule is None:
            raise InvalidRequest(f"unknown scheduler {payload.scheduler!r}; choose one of: "
                                 f"{', '.join(s['name'] for s in SCHEDULERS_LISTED)}")
    fields: dict[str, Any] = dict(
        prompt=payload.prompt, negative_prompt=payload.negative_prompt, seed=payload.seed,
        # The registry reads A1111 titles 'name [hash]' itself.
        model=str(model), vae=str(vae), schedule=schedule, batch_size=payload.batch_size,
        n_iter=payload.n_iter, cfg_scale=payload.cfg_scale, width=payload.width, height=payload.height,
        clip_skip=clip_skip, subseed=payload.subseed, subseed_strength=payload.subseed_strength,
        # A1111 reads 0 and below as "off"; one spelling of off here.
        seed_resize_from_w=max(payload.seed_resize_from_w, -1),
        seed_resize_from_h=max(payload.seed_resize_from_h, -1), controlnet=controlnet,
        ip_adapter=ip_adapter, styles=styles, scripts=script_fields,
    )
    sampler = payload.sampler_name or payload.sampler_index
    if sampler:
        # A1111 before 1.9 (and clients written for it) put the schedule in the name: "DPM++ 2M Karras".
        sampler, legacy_schedule = split_legacy_sampler(sampler)
        fields["sampler"] = sampler
        if legacy_schedule and not payload.scheduler:
            fields["schedule"] = legacy_schedule
    if payload.steps is not None:
        fields["steps"] = payload.steps
    if (payload.refiner_checkpoint or "").strip().lower() not in ("", "none"):
        switch_at = 0.8 if payload.refiner_switch_at is None else payload.refiner_switch_at
        fields["refiner"] = {"checkpoint": payload.refiner_checkpoint, "switch_at": switch_at}
    elif payload.refiner_switch_at is not None:
        ignored.append("refiner_switch_at")
    if isinstance(payload, Img2ImgPayload):
        fields.update(init_image=payload.init_images[0], mask=payload.mask or None, mask_blur=payload.mask_blur,
                      inpainting_mask_invert=bool(payload.inpainting_mask_invert))
        if payload.inpainting_fill is not None and payload.mask:  # A1111 fills only a masked area
            fields["inpainting_fill"] = _fill_name(payload.inpainting_fill)
        if (payload.script_name or "").strip().lower() == POOR_MANS_OUTPAINTING:
            fields.update(outpaint_script(payload))
        if payload.denoising_strength is not None:
            fields["denoising_strength"] = payload.denoising_strength
        if len(payload.init_images) > 1:
            ignored.append("init_images[1:]")
    elif hires is not None:
        fields["hires"] = hires
    elif payload.denoising_strength is not None:
        ignored.append("denoising_strength")  # only hires fix uses it in txt2img
    return GenerationRequest(**fields), ignored


def _fill_name(index: Any) -> str:
    if not isinstance(index, int) or not 0 <= index < len(FILLS):
        raise InvalidRequest(f"inpainting_fill {index!r}: give 0 to {len(FILLS) - 1} "
                             f"({', '.join(f'{i}: {name}' for i, name in enumerate(FILLS))})")
    return FILLS[index]


def outpaint_script(payload: Img2ImgPayload) -> dict[str, Any]:
    """The request fields for A1111's "Poor man's outpainting" script, script_args [pixels, mask_blur,
    inpainting_fill, direction] with its defaults (128, 4, fill, all four sides). Done in one pass at the init
    image's own size (A1111 works in tiles of the payload's width x height): width and height are not used."""
    if payload.mask:
        raise InvalidRequest("poor man's outpainting makes its own mask: send no mask with it")
    args = list(payload.script_args or [])
    defaults = [128, 4, 0, list(SIDES)]
    if len(args) > len(defaults):
        raise InvalidRequest(f"poor man's outpainting takes {len(defaults)} script_args (pixels, mask_blur, "
                             f"inpainting_fill, direction), not {len(args)}")
    pixels, mask_blur, fill, direction = args + defaults[len(args):]
    if isinstance(direction, str):
        direction = [direction]
    if not isinstance(direction, list) or not direction or any(str(d).lower() not in SIDES for d in direction):
        raise InvalidRequest(f"poor man's outpainting: direction {direction!r} must list some of "
                             f"{', '.join(SIDES)}")
    if not isinstance(pixels, int) or isinstance(pixels, bool) or not isinstance(mask_blur, int):
        raise InvalidRequest("poor man's outpainting: pixels and mask_blur (script_args[0:2]) are whole numbers")
    return {"outpaint": {str(side).lower(): pixels for side in direction}, "mask_blur": mask_blur,
            "inpainting_fill": _fill_name(fill), "width": None, "height": None, "mask": None}


def blocked_placeholder(width: int, height: int) -> str:
    """The withheld tile as base64 PNG, for clients that expect one image per slot."""
    return encode_image(withheld_tile(width, height))


def a1111_info(request: GenerationRequest, job: Job, ignored: list[str], sent: int,
               size: tuple[int, int]) -> dict[str, Any]:
    """`size`: what the request was made at when no image says so (a blocked prompt, a failure)."""
    result = job.result
    images = result.images if result else []
    seeds = (result.seeds if result else []) or [image.seed for image in images]
    subseeds = result.subseeds if result else []
    width, height = (images[0].width, images[0].height) if images else size
    prompt_verdict = result.prompt_verdict if result else None
    # What each image read (its styles merged, its dynamic prompts expanded), as A1111's all_prompts: its infotext's.
    used = [parse_infotext(image.infotext) for image in images]
    prompts = [p["Prompt"] for p in used] or [request.prompt] * max(len(seeds), 1)
    negatives = [p["Negative prompt"] for p in used] or [request.negative_prompt] * len(prompts)
    return {
        "prompt": request.prompt, "all_prompts": prompts,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": negatives,
        "seed": seeds[0] if seeds else request.seed, "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.subseed, "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength,
        "width": width, "height": height, "sampler_name": request.sampler, "scheduler": request.schedule,
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "n_iter": request.n_iter, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": result.model if result else request.model,
        "sd_model_hash": result.model_hash if result else None,
        "sd_vae_name": result.vae if result else request.vae, "sd_vae_hash": result.vae_hash if result else None,
        "seed_resize_from_w": request.seed_resize_from_w, "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength if request.init_image else (
            request.hires.denoising_strength if request.hires else None),
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [image.infotext for image in images], "styles": request.styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
        "clip_skip": request.clip_skip, "is_using_inpainting_conditioning": False, "version": A1111_VERSION,
        "guardforge": {
            "job_id": job.id, "state": job.state, "error": job.error, "blocked": bool(result and result.blocked),
            "interrupted": bool(result and result.interrupted) or job.state == "cancelled",
            "prompt_verdict": prompt_verdict.model_dump(mode="json") if prompt_verdict else None,
            "verdicts": [image.verdict.model_dump(mode="json") if image.verdict else None for image in images],
            "actions": [image.action for image in images], "ignored_fields": ignored,
            "images_sent": sent,
        },
    }


@dataclass
class Pending:
    """A queued A1111 generation: its job, the request it became and the payload fields that had no effect."""

    job: Job
    request: GenerationRequest
    ignored: list[str] = field(default_factory=list)


class A1111:
    """The A1111 API over one Studio, with what A1111 keeps per caller: the options a caller set (its
    sd_model_checkpoint and sd_vae), in memory, as A1111 keeps them until restart."""

    def __init__(self, studio):
        self.studio = studio
        self._options: dict[str, dict[str, Any]] = {}

    def options(self, caller: Caller) -> dict[str, Any]:
        """The /options this caller set (its own), the server's defaults otherwise."""
        return self._options.setdefault(caller.owner, {"sd_model_checkpoint": self.studio.settings.default_model,
                                                       "sd_vae": "Automatic"})

    def shown_options(self, caller: Caller) -> dict[str, Any]:
        options = self.options(caller)
        current = options["sd_model_checkpoint"]
        try:
            current = title(self.studio.model(current))
        except Exception:  # the default model may be absent; show the name as configured
            pass
        return {"sd_model_checkpoint": current, "sd_checkpoint_hash": None,
                "CLIP_stop_at_last_layers": 1, "samples_format": self.studio.settings.output_format,
                "sd_vae": options["sd_vae"], "sd_lora": "None"}

    def set_options(self, caller: Caller, options: dict[str, Any]) -> dict[str, list[str]]:
        """Sets the caller's sd_model_checkpoint and sd_vae, each refused now for whatever would fail its every
        generation later (a name not in the registry, a pickle); other options are reported as ignored. Nothing
        is set unless all are good."""
        updated: dict[str, str] = {}
        if "sd_model_checkpoint" in options:
            updated["sd_model_checkpoint"] = self.studio.usable_checkpoint(str(options["sd_model_checkpoint"])).name
        if "sd_vae" in options:
            updated["sd_vae"] = self._usable_vae(str(options["sd_vae"]))
        self.options(caller).update(updated)
        return {"updated": list(updated), "ignored": sorted(k for k in options if k not in updated)}

    def _usable_vae(self, name: str) -> str:
        """The sd_vae option's value for `name`: "Automatic" or "None" as spelt (both the checkpoint's own VAE),
        else the registry's name of that VAE; ModelNotFound or UnsafeModelFormat when it would fail later."""
        if name.strip().lower() in AUTOMATIC_VAE:
            return "None" if name.strip().lower() == "none" else "Automatic"
        return self.studio.usable_vae(name).name

    def embeddings(self, caller: Caller) -> dict[str, dict]:
        """/embeddings: those that fit the caller's current checkpoint are "loaded", as A1111 says."""
        return self.studio.embeddings(self.options(caller)["sd_model_checkpoint"])

    def submit(self, payload: Txt2ImgPayload, caller: Caller) -> Pending:
        """Check and queue the generation a txt2img or img2img payload asks for (in a thread: it decodes images
        and may rescan the models folder)."""
        options = self.options(caller)
        check_script_fields(payload, self.studio.scripts)
        request, ignored = to_generation_request(payload, options["sd_model_checkpoint"], options["sd_vae"],
                                                 self.studio.settings.limits.max_image_pixels)
        job = self.studio.submit(request, caller, priority=PRIORITY, save=payload.save_images)
        return Pending(job, request, ignored)

    async def answer_when_done(self, pending: Pending, payload: Txt2ImgPayload, caller: Caller) -> ImageResponse:
        """Await the job's end (the event loop stays free), then the A1111 answer. With save_images false (A1111's
        default) the job's pixels are dropped once read into the answer: A1111 keeps nothing it was not asked to
        save; the job row and its infotexts stay."""
        job = await self.studio.wait(pending.job.id, caller)
        try:
            return await asyncio.to_thread(self.answer, pending, payload, caller, job)
        finally:
            if not payload.save_images:
                try:
                    await asyncio.to_thread(self.studio.forget_job_images, job.id)
                except Exception:  # the answer is good; jobs.retention_hours or `jobs prune` gets the data later
                    log.exception("job %s: dropping its image data failed", job.id)

    def answer(self, pending: Pending, payload: Txt2ImgPayload, caller: Caller, job: Job) -> ImageResponse:
        """The A1111 response for an ended job: its images as base64 PNGs (a blocked one as a tile saying so, as
        large as the image it stands for), the payload echoed, the info JSON."""
        gen = pending.request
        if job.state == "failed":
            # The caller's error when the job recorded one (its model left the folder after submit), else the
            # server's: validation happened at submit, so a backend or a model crashed.
            raise caller_error(job.error_kind, job.error) or JobFailed(f"generation failed: {job.error}")
        width, height = gen.width, gen.height
        if width is None or height is None:
            try:
                native = self.studio.native_size(gen.model)
            except (GuardforgeError, OSError, ValueError):  # the model left the folder since: A1111's default
                native = (512, 512)
            width, height = width or native[0], height or native[1]
        if gen.outpaint is not None:  # placeholders as large as the canvas it would have made
            from guardforge.engine.outpaint import canvas_size
            from guardforge.imaging import decode_image

            start = decode_image(gen.init_image, self.studio.settings.limits.max_image_pixels, "init_image")
            width, height = canvas_size(gen, start.size)
        if gen.hires is not None:  # a blocked request's placeholders stand for the upscaled images
            width, height = hires_sizes(width, height, gen.hires)[1]
        images: list[str] = []
        if payload.send_images:
            if job.result is not None and job.result.blocked:
                # As large as the images the request would have made, so clients lay them out alike.
                images = [blocked_placeholder(width, height)] * (gen.batch_size * gen.n_iter)
            for stored in job.images:
                if stored.action == "block":
                    meta = job.result.images[stored.index]
                    images.append(blocked_placeholder(meta.width, meta.height))
                else:
                    data, _ = self.studio.image_bytes(stored.id, caller)
                    images.append(base64.b64encode(data).decode("ascii"))
        parameters = payload.model_dump()
        if isinstance(payload, Img2ImgPayload) and not payload.include_init_images:
            parameters["init_images"] = None  # A1111 drops them too unless asked
            parameters["mask"] = None
        info = a1111_info(gen, job, pending.ignored, len(images), (width, height))
        return ImageResponse(images=images, parameters=parameters, info=json.dumps(info))


def title(entry) -> str:
    """A1111's checkpoint title: `name [short hash]` once the hash is known."""
    short = entry.short_hash_if_known
    return f"{entry.name} [{short}]" if short else entry.name


# A1111's IGNORED_INFO_KEYS (Pillow's decoding details, not text the file carries), and the infotext itself.
_NOT_ITEMS = {"parameters", "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop",
              "background", "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
              "photoshop"}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    return str(value)


def png_info(image: Image.Image, styles: dict | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A1111's PNG info of an opened image: (infotext, the other text items it carries, the parameters the
    infotext holds). Reads the header and text chunks only. Given the server's `styles`, the parameters are read
    as A1111 1.8 reads them: the styles whose text the prompts carry are taken out of Prompt and Negative prompt
    and named in "Styles array", so a client that sends both back gets the styles once, not twice."""
    info = infotext_of(image)
    items = {str(k): _json_safe(v) for k, v in image.info.items() if k not in _NOT_ITEMS}
    parameters = parse_infotext(info)
    if styles and info:
        from guardforge.engine.styles import extract_styles

        found, prompt, negative = extract_styles(styles, parameters["Prompt"], parameters["Negative prompt"])
        if found:
            parameters.update({"Prompt": prompt, "Negative prompt": negative, "Styles array": found})
    return info, items, parameters
