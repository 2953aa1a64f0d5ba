"""A1111's "X/Y/Z plot" script over /sdapi/v1: its positional script_args as a GridRequest, its answer from the job."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from guardforge.a1111.schemas import Img2ImgPayload, ImageResponse, Txt2ImgPayload
from guardforge.access.caller import Caller
from guardforge.engine.request import GenerationRequest
from guardforge.engine.xyz import AXES, GridRequest
from guardforge.errors import InvalidRequest, JobFailed
from guardforge.jobs.queue import Job

log = logging.getLogger(__name__)
SCRIPT_NAME = "x/y/z plot"  # A1111 matches a script by its title, lower-cased
PRIORITY = 0  # as the adapter's: A1111 callers wait on the answer, but are not ahead of native jobs

# A1111's axis_options (scripts/xyz_grid.py, 1.10) in its order, with the tab each is shown in (None: both). The
# script's X/Y/Z type is an index into the list of those the tab shows, so an index means a label only here.
_A1111_AXES: tuple[tuple[str, str | None], ...] = (
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None),
    ("Sigma min", None), ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None),
    ("Schedule min sigma", None), ("Schedule max sigma", None), ("Schedule rho", None), ("Eta", None),
    ("Clip skip", None), ("Denoising", None), ("Initial noise multiplier", None), ("Extra noise", None),
    ("Hires upscaler", "txt2img"), ("Cond. Image Mask Weight", "img2img"), ("VAE", None), ("Styles", None),
    ("UniPC Order", None), ("Face restore", None), ("Token merging ratio", None),
    ("Token merging ratio high-res", None), ("Always discard next-to-last sigma", None),
    ("SGM noise multiplier", None), ("Refiner checkpoint", None), ("Refiner switch at", None),
    ("RNG source", None),
)
_SUPPORTED = MappingProxyType({axis.label.lower(): axis.name for axis in AXES})
# The trailing script_args after the three axes, with A1111's defaults: older versions send fewer.
_OPTIONS = (("draw_legend", True), ("include_lone_images", False), ("include_sub_grids", False),
            ("no_fixed_seeds", False), ("margin_size", 0), ("csv_mode", False), ("raw_mode", False))


def axis_labels(img2img: bool = False) -> list[str]:
    """The labels A1111's X/Y/Z types index in the txt2img (or img2img) tab."""
    tab = "img2img" if img2img else "txt2img"
    return [label for label, only in _A1111_AXES if only in (None, tab)]


def script_arg_infos(img2img: bool = False) -> list[dict[str, Any]]:
    """script-info's args for the X/Y/Z plot in script_args order (label, default, choices), as A1111 1.6+ lists
    them: three (type, values, dropdown) axes, then the options."""
    labels = axis_labels(img2img)
    infos: list[dict[str, Any]] = []
    for letter, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing")):
        infos += [{"label": f"{letter} type", "value": default, "choices": labels},
                  {"label": f"{letter} values", "value": ""},
                  {"label": f"{letter} values (dropdown)", "value": None}]
    for name, default in _OPTIONS:
        infos.append({"label": name.replace("_", " ").capitalize(), "value": default})
    return infos


def script_name_of(payload: Txt2ImgPayload) -> str | None:
    name = getattr(payload, "script_name", None) or (payload.model_extra or {}).get("script_name")
    return name.strip().lower() if isinstance(name, str) and name.strip() else None


def asks_for_xyz(payload: Txt2ImgPayload) -> bool:
    return script_name_of(payload) == SCRIPT_NAME


def _axis_field(kind: Any, letter: str, img2img: bool) -> str:
    labels = axis_labels(img2img)
    if isinstance(kind, bool) or not isinstance(kind, (int, str)):
        raise InvalidRequest(f"X/Y/Z plot: the {letter} type must be an index into A1111's axis list or its "
                             f"label, not {kind!r}")
    if isinstance(kind, int):
        if not 0 <= kind < len(labels):
            raise InvalidRequest(f"X/Y/Z plot: {letter} type {kind} is not an axis (0 to {len(labels) - 1}: "
                                 f"{', '.join(f'{i} {label}' for i, label in enumerate(labels))})")
        label = labels[kind]
    else:
        label = kind.strip()
    name = _SUPPORTED.get(label.lower())
    if name is None:
        known = label.lower() in (known_label.lower() for known_label in labels)
        raise InvalidRequest(f"X/Y/Z plot: the {letter} axis {label!r} " + (
            "has no equivalent in guardforge" if known else "is not one of A1111's axes") +
            f"; these run here: {', '.join(axis.label for axis in AXES)}")
    return name


def grid_from_script_args(request: GenerationRequest, script_args: list[Any] | None,
                          img2img: bool = False) -> GridRequest:
    """The GridRequest of A1111's X/Y/Z plot script_args: [x_type, x_values, x_values_dropdown, y_type, ...,
    z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, margin_size,
    csv_mode, raw_mode] (A1111 1.6 and later; the options may be cut short, taking A1111's defaults), or A1111
    1.0-1.5's [x_type, x_values, y_type, y_values, z_type, z_values, draw_legend, ...] without the dropdowns.
    A type is an index into A1111's axis list for the tab (axis_labels) or a label. A dropdown's list is used
    when it holds values, as A1111 does for axes with choices (samplers, checkpoints), else the text."""
    args = list(script_args or [])
    with_dropdowns = len(args) < 3 or isinstance(args[2], list) or args[2] is None
    width = 3 if with_dropdowns else 2
    if len(args) < width:
        raise InvalidRequest("X/Y/Z plot: script_args needs at least the X axis: [x_type, x_values, "
                             "x_values_dropdown, ...]")
    axes_args = args[:3 * width]
    options_args = args[3 * width:]
    if len(options_args) > len(_OPTIONS):
        raise InvalidRequest(f"X/Y/Z plot takes {3 * width + len(_OPTIONS)} script_args, not {len(args)}")
    options = {name: default for name, default in _OPTIONS}
    options.update(zip((name for name, _ in _OPTIONS), options_args))
    axes: dict[str, dict[str, Any] | None] = {}
    for position, letter in enumerate("xyz"):
        chunk = axes_args[position * width:(position + 1) * width]
        if not chunk:
            axes[letter] = None
            continue
        kind, text = chunk[0], chunk[1] if len(chunk) > 1 else ""
        dropdown = chunk[2] if len(chunk) > 2 else None
        name = _axis_field(kind, letter.upper(), img2img)
        if name == "nothing":
            axes[letter] = None
            continue
        if isinstance(dropdown, list) and dropdown and not options["csv_mode"]:
            values: str | list = [str(value) for value in dropdown]
        elif not isinstance(text, str):
            raise InvalidRequest(f"X/Y/Z plot: the {letter.upper()} values must be text, not {text!r}")
        elif options["raw_mode"] and "\n" in text.strip():
            values = text.strip().split("\n")
        else:
            values = text
        axes[letter] = {"field": name, "values": values}
    for name in ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds"):
        options[name] = bool(options[name])
    margin = options["margin_size"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise InvalidRequest(f"X/Y/Z plot: margin_size must be a number of pixels, not {margin!r}")
    return GridRequest(request=request, **axes, draw_legend=options["draw_legend"],
                       include_lone_images=options["include_lone_images"],
                       include_sub_grids=options["include_sub_grids"], no_fixed_seeds=options["no_fixed_seeds"],
                       margin_size=int(margin))


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
        raise JobFailed(f"X/Y/Z plot failed: {job.error}")
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
    seeds = [cell.seed for cell in cells if cell.seed is not None]
    first = result.images[0] if result and result.images else None
    info = {
        "prompt": request.prompt, "all_prompts": [request.prompt] * max(len(seeds), 1),
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
