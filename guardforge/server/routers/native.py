"""Native /v1: submit a GenerationRequest or a DreamBooth config as a job, follow it (poll or server-sent
events), cancel it, fetch images."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from guardforge.engine.request import GenerationRequest
from guardforge.jobs.queue import TERMINAL, Job
from guardforge.jobs.worker import TRAIN_FIELDS
from guardforge.models.registry import Kind as ModelKind
from guardforge.server.auth import Caller, get_caller, get_limited_caller
from guardforge.server.schemas import (
    JobCreated,
    JobImage,
    JobList,
    JobProgress,
    JobView,
    ModelList,
    ModelView,
    errors,
)
from guardforge.train.dreambooth.config import DreamBoothConfig

router = APIRouter(tags=["native"])

# Every database read and write and every file read of these routes runs in the thread pool, never on the event
# loop: on the loop, a write waiting for SQLite's lock (up to its 30 s busy timeout), a PostgreSQL round trip or
# a large image read would hold up every other request, status polls and event streams included.


def _without_images(payload_request: dict) -> dict:
    """A request as echoed back: echoing megabytes of base64 on every poll helps no one."""
    payload_request = dict(payload_request)
    for key in ("init_image", "mask"):
        if payload_request.get(key):
            payload_request[key] = "<base64 image>"
    if payload_request.get("controlnet"):
        payload_request["controlnet"] = [{**unit, "image": "<base64 image>" if unit.get("image") else None}
                                         for unit in payload_request["controlnet"]]
    if isinstance(payload_request.get("ip_adapter"), dict) and payload_request["ip_adapter"].get("image"):
        payload_request["ip_adapter"] = {**payload_request["ip_adapter"], "image": "<base64 image>"}
    return payload_request


def job_view(request: Request, job: Job) -> JobView:
    studio = request.app.state.studio
    progress = None
    if job.state == "running":
        latest = studio.latest_event(job.id) or job.progress  # saved by whichever server runs it
        if latest:
            progress = JobProgress(step=latest.get("step", 0), total=latest.get("total", 0), eta=latest.get("eta"),
                                   **({name: latest.get(name) for name in TRAIN_FIELDS}
                                      if "phase" in latest else {}))
    payload_request = dict(job.payload.get("request", {}))
    if job.kind == "grid" and isinstance(payload_request.get("request"), dict):  # a grid's base request
        payload_request["request"] = _without_images(payload_request["request"])
    else:
        payload_request = _without_images(payload_request)
    return JobView(
        id=job.id, kind=job.kind, state=job.state, priority=job.priority, position=job.position,
        progress=progress, error=job.error, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, request=payload_request, result=job.result,
        images=[JobImage(id=i.id, index=i.index, action=i.action,
                         url=None if i.action == "block" else f"/v1/images/{i.id}") for i in job.images],
    )


def final_event(job: Job) -> dict:
    result = job.result
    if job.kind in ("dreambooth", "grid"):  # exported models, steps, loss; a grid's cells and images
        return {"state": job.state, "error": job.error, "kind": job.kind,
                "result": result.model_dump(mode="json") if result else None,
                **({"images": [i.id for i in job.images]} if job.kind == "grid" else {})}
    return {
        "state": job.state, "error": job.error, "blocked": bool(result and result.blocked),
        "prompt_verdict": result.prompt_verdict.model_dump(mode="json") if result and result.prompt_verdict else None,
        "verdicts": [image.verdict.model_dump(mode="json") if image.verdict else None
                     for image in (result.images if result else [])],
        "images": [i.id for i in job.images],
    }


@router.post("/v1/jobs", status_code=202, response_model=JobCreated, summary="Queue a generation",
             responses=errors(401, 403, 404, 413, 422, 429))
async def create_job(body: GenerationRequest, request: Request,
                     priority: int = Query(0, ge=-100, le=100, description="Higher runs first; FIFO within. "
                                           "Above 0 only up to the API key's max_priority (403 otherwise)"),
                     save: bool = Query(True, description="Keep the images in the output folder"),
                     caller: Caller = Depends(get_limited_caller)) -> JobCreated:
    app = request.app
    # Off the event loop: checking the request decodes its images and may rescan the models folder.
    job = await run_in_threadpool(app.state.studio.submit, body, caller, priority=priority, save=save)
    app.state.metrics.submitted.labels("native").inc()
    return JobCreated(id=job.id, state=job.state, position=job.position)


@router.post("/v1/train/dreambooth", status_code=202, response_model=JobCreated,
             summary="Queue a DreamBooth training run", responses=errors(401, 403, 404, 413, 422, 429))
async def create_training_job(body: DreamBoothConfig, request: Request,
                              priority: int = Query(0, ge=-100, le=100, description="Higher runs first; above "
                                                    "0 only up to the API key's max_priority (403 otherwise)"),
                              resume: bool = Query(False, description="Continue from the newest checkpoint in "
                                                   "output_dir (left by a cancelled or stopped run)"),
                              caller: Caller = Depends(get_limited_caller)) -> JobCreated:
    """The body is a DreamBooth config (docs/dreambooth.md). Folders are confined: `instance_data_dir` inside
    the server's training-data folder, `output_dir` inside the caller's runs folder; exports go to the models
    folder under a new `export_name`. Follow and cancel it as any job under /v1/jobs/{id}."""
    app = request.app
    # Off the event loop: checking the config lists folders and may rescan the models folder.
    job = await run_in_threadpool(app.state.studio.submit_dreambooth, body, caller, priority=priority,
                                  resume=resume)
    app.state.metrics.submitted.labels("train").inc()
    return JobCreated(id=job.id, state=job.state, position=job.position)


@router.get("/v1/jobs", response_model=JobList, summary="The caller's jobs, newest first",
            responses=errors(401))
async def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500),
                    state: str | None = Query(None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
                    caller: Caller = Depends(get_caller)) -> JobList:
    def read() -> JobList:  # up to 500 rows of JSON to decode
        jobs = request.app.state.studio.list_jobs(caller, limit=limit, state=state)
        return JobList(jobs=[job_view(request, job) for job in jobs])

    return await run_in_threadpool(read)


@router.get("/v1/jobs/{job_id}", response_model=JobView, summary="One job: state, progress, result",
            responses=errors(401, 404))
async def get_job(job_id: str, request: Request, caller: Caller = Depends(get_caller)) -> JobView:
    job = await run_in_threadpool(request.app.state.studio.job, job_id, caller)
    return job_view(request, job)


@router.delete("/v1/jobs/{job_id}", response_model=JobView, summary="Cancel a queued or running job",
               responses=errors(401, 404))
async def cancel_job(job_id: str, request: Request, caller: Caller = Depends(get_caller)) -> JobView:
    job = await run_in_threadpool(request.app.state.studio.cancel, job_id, caller)  # a write: SQLite's lock
    return job_view(request, job)


@router.get("/v1/jobs/{job_id}/events", summary="Server-sent events: progress steps, then the verdicts",
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`progress` events {step, total, eta, state}, one `done` event"},
                       **errors(401, 404)})
async def job_events(job_id: str, request: Request, caller: Caller = Depends(get_caller)):
    studio = request.app.state.studio
    await run_in_threadpool(studio.job, job_id, caller)  # 404 before the stream starts

    def sse(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    async def stream():
        with studio.subscribe(job_id) as subscription:
            # Read the state after subscribing, so an event published in between is not lost.
            job = await run_in_threadpool(studio.job, job_id, caller)
            if job.state in TERMINAL:
                yield sse("done", final_event(job))
                return
            yield sse("state", {"state": job.state, "position": job.position})
            latest = studio.latest_event(job_id) or job.progress
            if latest:
                yield sse("progress", latest)
            quiet_since = time.monotonic()
            while True:
                # Another server on the same database may run the job (or claim it while it waits): its progress
                # is then read from the database every jobs.remote_poll_s, as its worker saves it.
                here = studio.runs_here(job_id)
                event = await subscription.get(timeout=10 if here else studio.settings.jobs.remote_poll_s)
                if event is None or event.get("final"):
                    job = await run_in_threadpool(studio.job, job_id, caller)
                    if job.state in TERMINAL:
                        yield sse("done", final_event(job))
                        return
                    if not here and job.progress and job.progress != latest:
                        event = job.progress
                        if (latest or {}).get("preview_step") == event.get("preview_step"):
                            event = {k: v for k, v in event.items() if k != "preview"}  # each preview once
                        latest = job.progress
                    else:
                        if time.monotonic() - quiet_since >= 10:
                            quiet_since = time.monotonic()
                            yield ": keep-alive\n\n"
                        continue
                quiet_since = time.monotonic()
                keys = (("step", "total", "eta", "state") + (TRAIN_FIELDS if "phase" in event else ())
                        # The live preview (base64 PNG), screened by the guard, every jobs.preview_every_steps.
                        + (("preview", "preview_step") if "preview" in event else ()))
                yield sse("progress", {k: event.get(k) for k in keys})

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/images/{image_id}", summary="An image a job delivered",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
                             "description": "The image file"}, **errors(401, 404, 410)})
async def get_image(image_id: str, request: Request, caller: Caller = Depends(get_caller)) -> Response:
    data, media_type = await run_in_threadpool(request.app.state.studio.image_bytes, image_id, caller)
    return Response(data, media_type=media_type)


@router.get("/v1/models", response_model=ModelList, summary="Models in the registry, of every kind or of `kind`",
            responses=errors(401, 422))
async def list_models(request: Request, kind: ModelKind | None = None,
                      caller: Caller = Depends(get_caller)) -> ModelList:
    # may rescan the models folder
    entries = await run_in_threadpool(request.app.state.studio.models, kind)
    return ModelList(models=[ModelView(name=e.name, hash=e.short_hash_if_known, path=e.path.name, kind=e.kind,
                                       family=e.family) for e in entries])

