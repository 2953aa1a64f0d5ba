"""A1111-compatible /sdapi/v1, so webuiapi, Open WebUI and SillyTavern work unchanged: each route one call of the A1111
adapter (guardforge/a1111/adapter.py) or the Studio; generations go through the queue."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from starlette.concurrency import run_in_threadpool

from guardforge.a1111 import extras, xyz
from guardforge.a1111.adapter import A1111, title
from guardforge.a1111.adapter import png_info as png_info_of
from guardforge.a1111.scripts import ScriptInfo, script_info, scripts_listed
from guardforge.a1111.schemas import (
    SCHEDULERS_LISTED,
    ExtrasBatchImagesPayload,
    ExtrasBatchImagesResponse,
    ExtrasSingleImagePayload,
    ExtrasSingleImageResponse,
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
    UpscalerItem,
)
from guardforge.engine.styles import PromptStyle
from guardforge.errors import InvalidRequest
from guardforge.imaging import decode_image
from guardforge.server.auth import Caller, get_caller, get_limited_caller, sees_server_paths
from guardforge.server.schemas import errors

router = APIRouter(prefix="/sdapi/v1", tags=["sdapi (A1111)"])


def a1111(request: Request) -> A1111:
    return request.app.state.a1111


async def generate(request: Request, payload: Txt2ImgPayload, caller: Caller) -> ImageResponse:
    adapter = a1111(request)
    if xyz.asks_for_xyz(payload):  # the X/Y/Z plot script: one grid job (a1111/xyz.py)
        pending = await run_in_threadpool(xyz.submit, adapter, payload, caller)
        request.app.state.metrics.submitted.labels("sdapi").inc()
        return await xyz.answer_when_done(adapter, pending, payload, caller)
    pending = await run_in_threadpool(adapter.submit, payload, caller)
    request.app.state.metrics.submitted.labels("sdapi").inc()
    return await adapter.answer_when_done(pending, payload, caller)


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
    job = studio.active_job(caller) or studio.active_job(caller, kind="grid")
    if job is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    latest = studio.latest_event(job.id) or job.progress or {}  # job.progress: when another server runs it
    step, total = int(latest.get("step") or 0), int(latest.get("total") or 0)
    reason = studio.stop_reason(job.id)
    state = ProgressState(
        job=job.id, job_count=1, job_no=0, sampling_step=step, sampling_steps=total,
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(job.started_at or job.created_at)),
        interrupted=reason == "interrupted", skipped=reason == "skipped",
    )
    return ProgressResponse(progress=min(1.0, step / total) if total else 0.0,
                            eta_relative=float(latest.get("eta") or 0.0), state=state,
                            # The latest live preview, screened by the guard as outputs are (engine/preview.py).
                            current_image=None if skip_current_image else latest.get("preview"),
                            textinfo=f"{job.state}" + (f", {job.position} ahead" if job.position else ""))


def _running_job(request: Request, caller: Caller):
    studio = request.app.state.studio
    job = studio.active_job(caller) or studio.active_job(caller, kind="grid")
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


@router.post("/png-info", response_model=PngInfoResponse,
             summary="The generation parameters stored in an image (A1111's PNG info)",
             responses=errors(401, 413, 422))
async def png_info(body: PngInfoRequest, request: Request, caller: Caller = Depends(get_caller)) -> PngInfoResponse:
    max_pixels = request.app.state.studio.settings.limits.max_image_pixels
    image = await run_in_threadpool(decode_image, body.image, max_pixels, "image")
    info, items, parameters = await run_in_threadpool(_png_info_with_styles, request.app.state.studio, image)
    return PngInfoResponse(info=info, items=items, parameters=parameters)


def _png_info_with_styles(studio, image):
    try:
        styles = studio.prompt_styles()
    except InvalidRequest:  # a broken styles file is the styles routes' to report: PNG info reads on without it
        styles = None
    return png_info_of(image, styles)


@router.get("/options", summary="The caller's options (sd_model_checkpoint, sd_vae and a few read-only ones)",
            responses=errors(401))
def get_options(request: Request, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    return a1111(request).shown_options(caller)


@router.post("/options", summary="Set the caller's sd_model_checkpoint and sd_vae (other options are reported as "
             "ignored)",
             responses=errors(401, 404, 422))
def set_options(request: Request, options: dict[str, Any] = Body(...),
                caller: Caller = Depends(get_caller)) -> dict[str, list[str]]:
    return a1111(request).set_options(caller, options)


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
    return [SdModel(title=title(e), model_name=e.name, hash=e.short_hash_if_known,
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


@router.get("/embeddings", summary="Textual inversion embeddings in models/embeddings (\"loaded\": those that fit "
            "the caller's checkpoint)", responses=errors(401, 404))
def embeddings(request: Request, caller: Caller = Depends(get_caller)) -> dict[str, dict]:
    return a1111(request).embeddings(caller)


@router.post("/refresh-embeddings", summary="Rescan the models folder", responses=errors(401))
def refresh_embeddings(request: Request, caller: Caller = Depends(get_caller)) -> None:
    request.app.state.studio.refresh_models()


@router.get("/prompt-styles", response_model=list[PromptStyle],
            summary="The styles of styles.csv (and styles/*.csv) in the server's home, read now",
            responses=errors(401, 422))
def prompt_styles(request: Request, caller: Caller = Depends(get_caller)) -> list[PromptStyle]:
    return list(request.app.state.studio.prompt_styles().values())


@router.get("/sd-vae", summary="VAEs in models/VAE", responses=errors(401))
def sd_vae(request: Request, caller: Caller = Depends(get_caller)) -> list[dict[str, str]]:
    return [{"model_name": e.name, "filename": shown_path(request, e)}
            for e in request.app.state.studio.models("vae")]


@router.get("/upscalers", response_model=list[UpscalerItem], summary="Upscalers: None, Lanczos, Nearest, then "
            "the models in models/ESRGAN and models/RealESRGAN", responses=errors(401))
def upscalers(request: Request, caller: Caller = Depends(get_caller)) -> list[UpscalerItem]:
    # A built-in's scale is A1111's UpscalerData default, 4; a model's is its own, read from its tensors.
    return [UpscalerItem(name=u.name, model_name=u.entry.name if u.entry else None,
                         model_path=shown_path(request, u.entry) if u.entry else None,
                         scale=u.scale if u.entry else 4.0)
            for u in request.app.state.studio.upscalers_listed()]


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse,
             summary="Upscale one image (A1111's extras): the image is guarded as an input, the result as an output",
             responses=errors(401, 404, 413, 422, 429))
async def extra_single_image(payload: ExtrasSingleImagePayload, request: Request,
                             caller: Caller = Depends(get_limited_caller)) -> ExtrasSingleImageResponse:
    return await run_in_threadpool(extras.extra_single_image, request.app.state.studio, payload, caller)


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse,
             summary="Upscale several images (A1111's extras), each guarded as an input and as an output",
             responses=errors(401, 404, 413, 422, 429))
async def extra_batch_images(payload: ExtrasBatchImagesPayload, request: Request,
                             caller: Caller = Depends(get_limited_caller)) -> ExtrasBatchImagesResponse:
    return await run_in_threadpool(extras.extra_batch_images, request.app.state.studio, payload, caller)


@router.get("/scripts", summary="Scripts a payload's script_name or alwayson_scripts may name: poor man's "
            "outpainting (img2img), controlnet (sd-webui-controlnet's units), then the installed scripts "
            "(docs/scripts.md)", responses=errors(401))
def scripts(request: Request, caller: Caller = Depends(get_caller)) -> dict[str, list[str]]:
    # A plain def: the first call finds the scripts through their entry points, which imports them.
    return scripts_listed(request.app.state.studio.scripts_installed())


@router.get("/script-info", response_model=list[ScriptInfo], summary="Each script of each tab with its arguments "
            "(label, default value, minimum, maximum, step, choices), in script_args order", responses=errors(401))
def script_info_route(request: Request, caller: Caller = Depends(get_caller)) -> list[ScriptInfo]:
    return script_info(request.app.state.studio.scripts_installed())


@router.get("/latent-upscale-modes", summary="Latent upscale modes (hires fix's hr_upscaler)", responses=errors(401))
async def latent_upscale_modes(caller: Caller = Depends(get_caller)) -> list[dict[str, str]]:
    from guardforge.engine.upscalers import LATENT_UPSCALE_MODES

    return [{"name": name} for name in LATENT_UPSCALE_MODES]
