"""A1111-compatible /sdapi/v1, so webuiapi, Open WebUI and SillyTavern work unchanged; generations go through the queue."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from PIL import Image, ImageDraw, ImageFont
from starlette.concurrency import run_in_threadpool

from guardforge.engine.infotext import parse_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.errors import GuardforgeError
from guardforge.imaging import decode_image
from guardforge.jobs.queue import Job
from guardforge.server.auth import Caller, get_caller, get_limited_caller, sees_server_paths
from guardforge.server.schemas import (
    SCHEDULERS_LISTED,
    ImageResponse,
    Img2ImgPayload,
    Lora,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    Sampler,
    Scheduler,
    SdModel,
    Txt2ImgPayload,
    errors,
    to_generation_request,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/sdapi/v1", tags=["sdapi (A1111)"])
A1111_VERSION = "guardforge-0.1.0"
PRIORITY = 0  # sdapi callers wait on the answer, but are not ahead of native jobs


def blocked_placeholder(width: int, height: int) -> str:
    """A grey image of the requested size that says 'blocked', for clients that expect one image per slot."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, min(height // 3, width // 5)))  # 'blocked' spans ~60% of the width
    box = draw.textbbox((0, 0), "blocked", font=font)
    draw.text(((width - (box[2] - box[0])) / 2 - box[0], (height - (box[3] - box[1])) / 2 - box[1]),
              "blocked", fill=(255, 255, 255), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def a1111_info(request: GenerationRequest, job: Job, ignored: list[str], sent: int,
               size: tuple[int, int]) -> dict[str, Any]:
    """`size`: what the request was made at when no image says so (a blocked prompt, a failure)."""
    result = job.result
    images = result.images if result else []
    seeds = (result.seeds if result else []) or [image.seed for image in images]
    width, height = (images[0].width, images[0].height) if images else size
    prompt_verdict = result.prompt_verdict if result else None
    prompts = [request.prompt] * max(len(seeds), 1)
    return {
        "prompt": request.prompt, "all_prompts": prompts,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * len(prompts),
        "seed": seeds[0] if seeds else request.seed, "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0,
        "width": width, "height": height, "sampler_name": request.sampler, "scheduler": request.schedule,
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "n_iter": request.n_iter, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": result.model if result else request.model,
        "sd_model_hash": result.model_hash if result else None,
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if request.init_image else None,
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [image.infotext for image in images], "styles": [],
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


def caller_options(request: Request, caller: Caller) -> dict[str, Any]:
    """The /options this caller set (its own, see app.state.sdapi_options), the server's defaults otherwise."""
    default = {"sd_model_checkpoint": request.app.state.studio.settings.default_model}
    return request.app.state.sdapi_options.setdefault(caller.owner, default)


async def generate(request: Request, payload: Txt2ImgPayload, caller: Caller) -> ImageResponse:
    studio = request.app.state.studio
    gen, ignored = to_generation_request(payload, caller_options(request, caller)["sd_model_checkpoint"])
    # Off the event loop: checking the request decodes its images and may rescan the models folder.
    job = await run_in_threadpool(studio.submit, gen, caller, priority=PRIORITY, save=payload.save_images)
    request.app.state.metrics.submitted.labels("sdapi").inc()
    job = await studio.wait(job.id, caller)
    try:
        return await answer(request, payload, caller, gen, ignored, job)
    finally:
        if not payload.save_images:
            # A1111 keeps nothing it was not asked to save: the images were read into the answer above, so the
            # job's pixels (its images and its init image and mask) go now; the job row and infotexts stay.
            try:
                await run_in_threadpool(studio.forget_job_images, job.id)
            except Exception:  # the answer is good; jobs.retention_hours or `jobs prune` gets the data later
                log.exception("job %s: dropping its image data failed", job.id)


async def answer(request: Request, payload: Txt2ImgPayload, caller: Caller, gen: GenerationRequest,
                 ignored: list[str], job: Job) -> ImageResponse:
    """The A1111 response for an ended job."""
    studio = request.app.state.studio
    if job.state == "failed":
        # Validation happened at submit, so a failure here is the server's (a backend or a model crashed).
        raise HTTPException(500, f"generation failed: {job.error}")
    width, height = gen.width, gen.height
    if width is None or height is None:
        try:
            native = await run_in_threadpool(studio.native_size, gen.model)
        except (GuardforgeError, OSError, ValueError):  # the model left the folder since: A1111's default
            native = (512, 512)
        width, height = width or native[0], height or native[1]
    images: list[str] = []
    if payload.send_images:
        if job.result is not None and job.result.blocked:
            # As large as the images the request would have made, so clients lay them out alike.
            images = [blocked_placeholder(width, height)] * (gen.batch_size * gen.n_iter)
        for stored in job.images:
            if stored["action"] == "block":
                meta = job.result.images[stored["index"]]
                images.append(blocked_placeholder(meta.width, meta.height))
            else:
                data, _ = await run_in_threadpool(studio.image_bytes, stored["id"], caller)
                images.append(base64.b64encode(data).decode("ascii"))
    parameters = payload.model_dump()
    if isinstance(payload, Img2ImgPayload) and not payload.include_init_images:
        parameters["init_images"] = None  # A1111 drops them too unless asked
        parameters["mask"] = None
    info = a1111_info(gen, job, ignored, len(images), (width, height))
    return ImageResponse(images=images, parameters=parameters, info=json.dumps(info))


@router.post("/txt2img", response_model=ImageResponse, summary="Text to image (A1111), answered when done",
             responses=errors(401, 404, 413, 422, 429))
async def txt2img(payload: Txt2ImgPayload, request: Request,
                  caller: Caller = Depends(get_limited_caller)) -> ImageResponse:
    return await generate(request, payload, caller)


@router.post("/img2img", response_model=ImageResponse,
             summary="Image to image, or inpainting with `mask` (A1111), answered when done",
             responses=errors(401, 404, 413, 422, 429))
async def img2img(payload: Img2ImgPayload, request: Request,
                  caller: Caller = Depends(get_limited_caller)) -> ImageResponse:
    return await generate(request, payload, caller)


@router.get("/progress", response_model=ProgressResponse, summary="Progress of the caller's current job",
            responses=errors(401))
def progress(request: Request, skip_current_image: bool = False,
             caller: Caller = Depends(get_caller)) -> ProgressResponse:
    # A plain def, as every route here that reads the database or the models folder: FastAPI runs it in the
    # thread pool, off the event loop.
    studio = request.app.state.studio
    job = studio.active_job(caller)
    if job is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    latest = studio.latest_event(job.id) or {}
    step, total = int(latest.get("step") or 0), int(latest.get("total") or 0)
    reason = studio.stop_reason(job.id)
    state = ProgressState(
        job=job.id, job_count=1, job_no=0, sampling_step=step, sampling_steps=total,
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(job.started_at or job.created_at)),
        interrupted=reason == "interrupted", skipped=reason == "skipped",
    )
    return ProgressResponse(progress=min(1.0, step / total) if total else 0.0,
                            eta_relative=float(latest.get("eta") or 0.0), state=state,
                            textinfo=f"{job.state}" + (f", {job.position} ahead" if job.position else ""))


def _running_job(request: Request, caller: Caller):
    job = request.app.state.studio.active_job(caller)
    return job if job is not None and job.state == "running" else None


@router.post("/interrupt", summary="End the caller's running job after its current batch, cut short; "
             "the images made so far are returned, as in A1111", responses=errors(401))
def interrupt(request: Request, caller: Caller = Depends(get_caller)) -> None:
    job = _running_job(request, caller)
    if job is not None:
        request.app.state.studio.interrupt(job.id, caller)


@router.post("/skip", summary="End the current batch of the caller's running job early and go on with the "
             "next one, as in A1111", responses=errors(401))
def skip(request: Request, caller: Caller = Depends(get_caller)) -> None:
    job = _running_job(request, caller)
    if job is not None:
        request.app.state.studio.skip(job.id, caller)


def infotext_of(image: Image.Image) -> str:
    """storage.outputs.read_infotext's reading (PNG `parameters` chunk, else EXIF UserComment), of an image
    already decoded under the upload rules instead of a file opened again."""
    from guardforge.storage.outputs import decode_user_comment

    text = image.info.get("parameters")
    if text:
        return str(text)
    try:
        raw = image.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD, UserComment
    except Exception:  # a malformed EXIF block (Pillow raises what it trips on): no readable infotext there
        return ""
    return decode_user_comment(raw) if raw else ""


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


@router.post("/png-info", response_model=PngInfoResponse,
             summary="The generation parameters stored in an image (A1111's PNG info)",
             responses=errors(401, 413, 422))
async def png_info(body: PngInfoRequest, request: Request, caller: Caller = Depends(get_caller)) -> PngInfoResponse:
    max_pixels = request.app.state.studio.settings.limits.max_image_pixels
    image = await run_in_threadpool(decode_image, body.image, max_pixels, "image")
    info = infotext_of(image)
    items = {str(k): _json_safe(v) for k, v in image.info.items() if k not in _NOT_ITEMS}
    return PngInfoResponse(info=info, items=items, parameters=parse_infotext(info))


def _title(entry) -> str:
    short = entry.short_hash_if_known
    return f"{entry.name} [{short}]" if short else entry.name


@router.get("/options", summary="The caller's options (sd_model_checkpoint and a few read-only ones)",
            responses=errors(401))
def get_options(request: Request, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    studio = request.app.state.studio
    current = caller_options(request, caller)["sd_model_checkpoint"]
    try:
        current = _title(studio.model(current))
    except Exception:  # the default model may be absent; show the name as configured
        pass
    return {"sd_model_checkpoint": current, "sd_checkpoint_hash": None,
            "CLIP_stop_at_last_layers": 1, "samples_format": studio.settings.output_format,
            "sd_vae": "Automatic", "sd_lora": "None"}


@router.post("/options", summary="Set the caller's sd_model_checkpoint (other options are reported as ignored)",
             responses=errors(401, 404, 422))
def set_options(request: Request, options: dict[str, Any] = Body(...),
                caller: Caller = Depends(get_caller)) -> dict[str, list[str]]:
    studio = request.app.state.studio
    updated: list[str] = []
    if "sd_model_checkpoint" in options:
        entry = studio.usable_checkpoint(str(options["sd_model_checkpoint"]))
        caller_options(request, caller)["sd_model_checkpoint"] = entry.name
        updated.append("sd_model_checkpoint")
    return {"updated": updated, "ignored": sorted(k for k in options if k not in updated)}


def shown_path(request: Request, entry) -> str:
    """Where a model's file is, as this caller may see it: the full path for the open server's local user,
    else the path inside the models folder (a shipped model: its name). The server's layout is its own."""
    if sees_server_paths(request):
        return str(entry.path)
    models_dir = request.app.state.studio.settings.resolved_models_dir
    if entry.source != "user" or not entry.path.is_relative_to(models_dir):
        return entry.name
    return entry.path.relative_to(models_dir).as_posix()


@router.get("/sd-models", response_model=list[SdModel], summary="Checkpoints in the registry (`filename` is "
            "inside the models folder, a full path only for a local caller of an open server)", responses=errors(401))
def sd_models(request: Request, caller: Caller = Depends(get_caller)) -> list[SdModel]:
    entries = request.app.state.studio.models("checkpoint")
    return [SdModel(title=_title(e), model_name=e.name, hash=e.short_hash_if_known,
                    sha256=e.sha256() if e.short_hash_if_known else None, filename=shown_path(request, e))
            for e in entries]


@router.post("/refresh-checkpoints", summary="Rescan the models folder", responses=errors(401))
def refresh_checkpoints(request: Request, caller: Caller = Depends(get_caller)) -> None:
    request.app.state.studio.refresh_models()


@router.post("/refresh-loras", summary="Rescan the models folder", responses=errors(401))
def refresh_loras(request: Request, caller: Caller = Depends(get_caller)) -> None:
    request.app.state.studio.refresh_models()


@router.get("/samplers", response_model=list[Sampler], summary="Sampler names (A1111's)", responses=errors(401))
async def samplers(caller: Caller = Depends(get_caller)) -> list[Sampler]:
    from guardforge.engine.samplers import SAMPLERS, sampler_spec

    return [Sampler(name=name, aliases=list(sampler_spec(name).aliases), options={}) for name in SAMPLERS]


@router.get("/schedulers", response_model=list[Scheduler], summary="Noise schedules", responses=errors(401))
async def schedulers(caller: Caller = Depends(get_caller)) -> list[Scheduler]:
    return [Scheduler(**s) for s in SCHEDULERS_LISTED]


@router.get("/loras", response_model=list[Lora], summary="LoRAs in models/Lora", responses=errors(401))
def loras(request: Request, caller: Caller = Depends(get_caller)) -> list[Lora]:
    entries = request.app.state.studio.models("lora")
    return [Lora(name=e.name, alias=e.name, path=shown_path(request, e)) for e in entries]


@router.get("/sd-vae", summary="VAEs in models/VAE", responses=errors(401))
def sd_vae(request: Request, caller: Caller = Depends(get_caller)) -> list[dict[str, str]]:
    return [{"model_name": e.name, "filename": shown_path(request, e)}
            for e in request.app.state.studio.models("vae")]


@router.get("/upscalers", summary="Upscalers (none: guardforge has no upscaler)", responses=errors(401))
async def upscalers(caller: Caller = Depends(get_caller)) -> list[dict[str, Any]]:
    return []


@router.get("/scripts", summary="Scripts (none: A1111 scripts do not run here)", responses=errors(401))
async def scripts(caller: Caller = Depends(get_caller)) -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@router.get("/latent-upscale-modes", summary="Latent upscale modes (none: no hires fix here)", responses=errors(401))
async def latent_upscale_modes(caller: Caller = Depends(get_caller)) -> list[dict[str, str]]:
    # SillyTavern lists these beside /upscalers; an empty list says "no hires fix" without a 404.
    return []
