"""The web UI's "XYZ plot" tab: the form's request over up to three axes, one grid job per click."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import gradio as gr
from PIL import Image

from guardforge.engine.xyz import AXES
from guardforge.errors import GuardforgeError
from guardforge.guard.blur import withheld_tile
from guardforge.ui import guard_view

AXIS_CHOICES = [axis.label for axis in AXES]  # A1111's labels, "Nothing" first


def xyz_tab(studio, rate_limit: Callable[[str], None] | None, caller_of: Callable, owner_of: Callable,
            prompt, negative, params: list) -> None:
    """The tab inside the caller's gr.Tabs. It reads the page's prompt, negative prompt and `params` (model, VAE,
    sampler, schedule, steps, CFG, width, height, seed: the txt2img form's) as the base request."""
    from pydantic import ValidationError

    from guardforge.engine.request import GenerationRequest
    from guardforge.engine.xyz import GridRequest

    reasons = guard_view.Reasons(studio.guard.policy)

    def axis(kind: str, values: str) -> dict | None:
        return None if kind in (None, "Nothing") else {"field": kind, "values": values or ""}

    def run_grid(prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed,
                 x_type, x_values, y_type, y_values, z_type, z_values, legend, keep_random, sub_grids, margin,
                 request: gr.Request):
        if rate_limit is not None:
            try:
                rate_limit(owner_of(request))  # what a POST /v1/grids costs
            except GuardforgeError as exc:
                raise gr.Error(f"Too many requests: {exc}") from None
        caller = caller_of(request)
        try:
            base = GenerationRequest(prompt=prompt, negative_prompt=negative, model=model or None, vae=vae or None,
                                     sampler=sampler, schedule=schedule, steps=int(steps), cfg_scale=float(cfg),
                                     width=int(width), height=int(height), seed=int(seed))
            grid = GridRequest(request=base, x=axis(x_type, x_values), y=axis(y_type, y_values),
                               z=axis(z_type, z_values), draw_legend=bool(legend), no_fixed_seeds=bool(keep_random),
                               include_sub_grids=bool(sub_grids), margin_size=int(margin))
            job_id = studio.submit_grid(grid, caller).id
        except ValidationError as exc:
            raise gr.Error("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        except GuardforgeError as exc:  # a limit, an unknown name: the reason, the page alive
            raise gr.Error(str(exc)) from None
        yield guard_view.bar(0, 0, "queued"), gr.update(), gr.update(), gr.update()
        while True:
            job = studio.job(job_id, caller)
            if job.state in ("succeeded", "failed", "cancelled"):
                break
            latest = studio.latest_event(job_id) or job.progress or {}  # progress: run by another server
            yield (guard_view.bar(int(latest.get("step") or 0), int(latest.get("total") or 0), job.state),
                   gr.update(), gr.update(), gr.update())
            time.sleep(0.25)
        if job.state != "succeeded":
            yield guard_view.bar(0, 0, job.state, f"{job.state}: {job.error}", "error"), None, [], ""
            return
        result = job.result
        stored = {image.index: image for image in job.images}

        def picture(index: int) -> Image.Image:
            meta = result.images[index]
            if stored[index].action == "block":
                return withheld_tile(meta.width, meta.height)
            data, _ = studio.image_bytes(stored[index].id, caller)
            return Image.open(io.BytesIO(data))  # our own output, written by this server

        cells = []
        for cell in result.cells:
            label = " | ".join(text for text in cell.labels if text)
            if cell.image_index is not None:
                meta = result.images[cell.image_index]
                cells.append((picture(cell.image_index), f"{label}: {guard_view.caption(meta, reasons)}"))
        blocked = sum(cell.blocked for cell in result.cells)
        note = f"{len(result.cells)} cells, {blocked} blocked by the guard" if blocked else ""
        yield (guard_view.bar(1, 1, "succeeded", note, "block" if blocked else "allow"), picture(0), cells,
               result.images[0].infotext)

    with gr.Tab("XYZ plot"):
        gr.Markdown("The prompt and the settings above, one image per combination of the axes' values. Values as "
                    "A1111 takes them: `1,4,7`, ranges `1-5`, `1-10 (+2)`, `1-10 [5]`; Prompt S/R replaces its "
                    "first value with each.")
        rows = []
        for letter, default in (("X", "CFG Scale"), ("Y", "Nothing"), ("Z", "Nothing")):
            with gr.Row():
                kind = gr.Dropdown(AXIS_CHOICES, value=default, label=f"{letter} type",
                                   elem_id=f"gf-xyz-{letter.lower()}-type")
                values = gr.Textbox(label=f"{letter} values", elem_id=f"gf-xyz-{letter.lower()}-values")
            rows += [kind, values]
        with gr.Row():
            legend = gr.Checkbox(True, label="Draw legend")
            keep_random = gr.Checkbox(False, label="Keep -1 for seeds")
            sub_grids = gr.Checkbox(False, label="Include sub grids")
            margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)")
        button = gr.Button("Generate grid", variant="primary", elem_id="gf-xyz-generate")
        progress = gr.HTML(guard_view.bar(0, 0, "idle"))
        grid_image = gr.Image(type="pil", format="png", label="Grid", interactive=False, elem_id="gf-xyz-grid")
        cells = gr.Gallery(label="Cells", columns=4, object_fit="contain", elem_id="gf-xyz-cells")
        infotext = gr.Textbox(label="Grid infotext", lines=3, elem_id="gf-xyz-infotext")
    button.click(run_grid, [prompt, negative, *params, *rows, legend, keep_random, sub_grids, margin],
                 [progress, grid_image, cells, infotext], concurrency_limit=None, api_name="xyz_plot")
