"""A1111's "X/Y/Z plot" over /sdapi/v1 as a `grid` job: its script_args as a GridRequest, its answer from the job."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from guardforge.a1111.schemas import Img2ImgPayload, ImageResponse, Txt2ImgPayload
from guardforge.a1111.scripts import check_script_fields
from guardforge.access.caller import Caller
from guardforge.engine.infotext import parse_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.engine.xyz import GridRequest
from guardforge.errors import InvalidRequest, JobFailed, caller_error
from guardforge.jobs.queue import Job
from guardforge.scripts.xyz_plot import SCRIPT_NAME, args_from_script_args
from guardforge.scripts.xyz_plot import axis_labels  # noqa: F401  (where A1111 callers' code looks for it)

log = logging.getLogger(__name__)
PRIORITY = 0  # as the adapter's: A1111 callers wait on the answer, but are not ahead of native jobs


def script_name_of(payload: Txt2ImgPayload) -> str | None:
    name = getattr(payload, "script_name", None) or (payload.model_extra or {}).get("script_name")
    return name.strip().lower() if isinstance(name, str) and name.strip() else None


def asks_for_xyz(payload: Txt2ImgPayload) -> bool:
    return script_name_of(payload) == SCRIPT_NAME


def grid_from_script_args(request: GenerationRequest, script_args: list[Any] | None,
                          img2img: bool = False) -> GridRequest:
    """The GridRequest of A1111's X/Y/Z plot script_args (scripts/xyz_plot.py reads their layout)."""
    return GridRequest(request=request, **args_from_script_args(script_args, img2img))


@dataclass
class GridPending:
    """A queued A1111 X/Y/Z plot: its job, the grid it became and the payload fields that had no effect."""

    job: Job
    grid: GridRequest
    ignored: list[str] = field(default_factory=list)


def submit(adapter, payload: Txt2ImgPayload, caller: Caller) -> GridPending:
    """Check and queue the grid a payload with script_name "x/y/z plot" asks for (in a thread: it checks every
    cell as a request)."""
    from pydantic import ValidationError

    from guardforge.a1111.adapter import to_generation_request

    options = adapter.options(caller)
    check_script_fields(payload, adapter.studio.scripts)
    # The cells' base request: the payload without the script that makes it a grid (an installed script by that
    # name is not what runs the cells).
    base = payload.model_copy(update={"script_name": None, "script_args": []})
    request, ignored = to_generation_request(base, options["sd_model_checkpoint"], options["sd_vae"],
                                             adapter.studio.settings.limits.max_image_pixels)
    try:
        grid = grid_from_script_args(request, payload.script_args if isinstance(payload, Img2ImgPayload)
                                     else (payload.model_extra or {}).get("script_args"),
                                     img2img=isinstance(payload, Img2ImgPayload))
    except ValidationError as exc:  # built here, not at the edge: the same 422 with its reason
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidRequest(f"X/Y/Z plot: {where + ': ' if where else ''}"
                             f"{error['msg'].removeprefix('Value error, ')}") from None
    job = adapter.studio.submit_grid(grid, caller, priority=PRIORITY, save=payload.save_images)
    return GridPending(job, grid, [name for name in ignored if name not in ("script_name", "script_args")])


async def answer_when_done(adapter, pending: GridPending, payload: Txt2ImgPayload, caller: Caller) -> ImageResponse:
    """Await the grid job's end, then A1111's answer; with save_images false its pixels are dropped once read."""
    job = await adapter.studio.wait(pending.job.id, caller)
    try:
        return await asyncio.to_thread(answer, adapter, pending, payload, caller, job)
    finally:
        if not payload.save_images:
            try:
                await asyncio.to_thread(adapter.studio.forget_job_images, job.id)
            except Exception:  # the answer is good; retention or `jobs prune` gets the data later
                log.exception("job %s: dropping its image data failed", job.id)


def answer(adapter, pending: GridPending, payload: Txt2ImgPayload, caller: Caller, job: Job) -> ImageResponse:
    """A1111's answer for an X/Y/Z plot: the grid, then the sub-grids (include_sub_grids), then each cell
    (include_lone_images; a blocked one as the withheld tile), and the info of the grid's first cell."""
    from guardforge.a1111.adapter import A1111_VERSION, blocked_placeholder

    if job.state == "failed":
        raise caller_error(job.error_kind, job.error) or JobFailed(f"X/Y/Z plot failed: {job.error}")
    grid = pending.grid
    result = job.result
    images: list[str] = []
    infotexts: list[str] = []
    if result is not None:
        count = result.grid_count if grid.include_sub_grids else 1
        shown = list(range(count))
        if grid.include_lone_images:
            shown += [cell.image_index for cell in result.cells if cell.image_index is not None]
        stored = {image.index: image for image in job.images}
        for index in shown:
            meta = result.images[index]
            infotexts.append(meta.infotext)
            if not payload.send_images:
                continue
            if stored[index].action == "block":
                images.append(blocked_placeholder(meta.width, meta.height))
            else:
                data, _ = adapter.studio.image_bytes(stored[index].id, caller)
                images.append(base64.b64encode(data).decode("ascii"))
    request = grid.request
    cells = result.cells if result else []
    made = [cell for cell in cells if cell.seed is not None]
    seeds = [cell.seed for cell in made]
    # Each made cell's texts as it read them (after Prompt S/R, its styles and its dynamic prompts), one per seed
    # in all_seeds, as a generation's all_prompts are its images' own.
    used = [parse_infotext(result.images[cell.image_index].infotext) for cell in made
            if cell.image_index is not None]
    first = result.images[0] if result and result.images else None
    info = {
        "prompt": request.prompt,
        "all_prompts": [p["Prompt"] for p in used] or [request.prompt] * max(len(seeds), 1),
        "all_negative_prompts": [p["Negative prompt"] for p in used] or [request.negative_prompt],
        "negative_prompt": request.negative_prompt, "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds, "subseed": request.subseed, "subseed_strength": request.subseed_strength,
        "width": first.width if first else request.width, "height": first.height if first else request.height,
        "sampler_name": request.sampler, "scheduler": request.schedule, "cfg_scale": request.cfg_scale,
        "steps": request.steps, "batch_size": 1, "n_iter": 1, "restore_faces": False,
        "sd_model_name": request.model, "extra_generation_params": {"Script": "X/Y/Z plot"},
        "index_of_first_image": 1 if grid.include_lone_images else 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
        "clip_skip": request.clip_skip, "version": A1111_VERSION,
        "guardforge": {
            "job_id": job.id, "state": job.state, "error": job.error,
            "interrupted": bool(result and result.interrupted) or job.state == "cancelled",
            "labels": result.labels if result else [],
            "cells": [cell.model_dump(mode="json") for cell in cells],
            "ignored_fields": pending.ignored, "images_sent": len(images),
        },
    }
    parameters = payload.model_dump()
    if isinstance(payload, Img2ImgPayload) and not payload.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    return ImageResponse(images=images, parameters=parameters, info=json.dumps(info))
