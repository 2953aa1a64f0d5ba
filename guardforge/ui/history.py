"""The UI's Gallery tab: the caller's past generations from the job store (so they outlive a restart), filtered by
day, model and verdict, each with its infotext and verdict, and re-run, send to img2img / inpaint / extras,
download and delete. Every read and write goes through the Studio as the caller: one key never sees another's."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from guardforge.engine.request import GenerationRequest
from guardforge.errors import GuardforgeError
from guardforge.guard.blur import withheld_tile
from guardforge.jobs.history import OUTCOMES, HistoryFilter, job_model, outcome
from guardforge.ui import guard_view, live

ANY = "Any"
THUMBNAIL = 192  # px, the longer side: the gallery's cells are about this big
SHOWN = 60  # images in the gallery at once; narrow the filter to reach older ones


@dataclass
class Targets:
    """Where "send to" puts an image: the components, the tab each lives in, and the form the parameters fill."""

    tabs: gr.Tabs
    init_image: gr.Image
    editor: gr.ImageEditor
    extras_image: gr.Image
    fields: list
    fields_update: Callable[[dict], tuple]


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'filter'}: {e['msg']}" for e in exc.errors())


def history_tab(studio, targets: Targets, caller_of: Callable, owner_of: Callable,
                rate_limit: Callable[[str], None] | None, model_names: Callable[[], list[str]]) -> None:
    """The tab and its events; call inside the app's gr.Tabs, after the components in `targets` exist."""
    reasons = guard_view.Reasons(studio.guard.policy)

    def image_of(job_id: str, index: int, request, job=None) -> Image.Image:
        """The delivered image, or the grey tile of a withheld one; gr.Error if it is gone."""
        caller = caller_of(request)
        job = job or studio.job(job_id, caller)
        ref = next((image for image in job.images if image.index == index), None)
        meta = job.result.images[index] if job.result and index < len(job.result.images) else None
        if ref is None or meta is None:
            raise gr.Error("that image is no longer in your history")
        if ref.action == "block":
            return withheld_tile(meta.width, meta.height)
        data, _ = studio.image_bytes(ref.id, caller)
        return Image.open(io.BytesIO(data))  # our own output, written by this server

    def listing(since, until, model, verdict, selected, request: gr.Request):
        try:
            where = HistoryFilter(since=since or None, until=until or None,
                                  model=None if model in (None, ANY) else model,
                                  verdict=None if verdict in (None, ANY) else verdict)
        except ValidationError as exc:
            raise gr.Error(f"check the filter: {_errors(exc)}") from None
        caller = caller_of(request)
        cells, entries = [], []
        for job in studio.history(caller, where, limit=SHOWN):
            asked = job.payload.get("request", {})
            made = outcome(job) or job.state
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
            label = f"{when} · {job_model(job) or 'default model'} · {made} · {asked.get('prompt', '')[:40]}"
            images = job.result.images if job.result is not None else []
            if not images:  # blocked at the door, failed or cancelled: one cell says so
                cells.append((withheld_tile(THUMBNAIL, THUMBNAIL), label))
                entries.append([job.id, -1])
            for index, meta in enumerate(images):
                try:
                    image = image_of(job.id, index, request, job)
                except GuardforgeError:  # its file was moved or its pixels purged: the entry stays, as a tile
                    image = withheld_tile(meta.width, meta.height)
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                cells.append((image, label))
                entries.append([job.id, index])
            if len(cells) >= SHOWN:
                break
        note = f"{len(entries)} shown" + (" (the newest; narrow the filter for older ones)"
                                           if len(entries) >= SHOWN else "")
        if selected and list(selected) in entries:  # still listed: what was picked stays picked
            return cells, entries, selected, gr.update(), gr.update(), gr.update(), note
        return cells, entries, None, "", "", {}, note

    def chosen(entries, selected) -> tuple[str, int]:
        if not selected or selected[0] not in {entry[0] for entry in entries or []}:
            raise gr.Error("choose an image in the gallery first")
        return selected[0], int(selected[1])

    def select(entries, evt: gr.SelectData, request: gr.Request):
        job_id, index = entries[evt.index]
        job = studio.job(job_id, caller_of(request))
        result = job.result
        if result is None:
            return [job_id, index], f"{job.state}: {job.error or ''}", "", {}
        if result.blocked or index < 0:
            _, action, note = guard_view.outcome(result, reasons)
            return ([job_id, index], "", line(action, note, guard_view.hover(result, reasons)),
                    guard_view.verdict_json(result))
        meta = result.images[index]
        hover = "\n".join(text for text in (guard_view.scores_line(result.prompt_verdict, reasons),
                                             guard_view.scores_line(meta.verdict, reasons)) if text)
        status = line(meta.action, guard_view.caption(meta, reasons).capitalize() + ".", hover)
        return [job_id, index], meta.infotext, status, guard_view.verdict_json(result, index)

    def line(action: str, note: str, hover: str | None = None) -> str:
        return guard_view.verdict_line(action, note, hover, elem_id="gf-hist-guard")

    def request_of(job_id: str, request) -> dict:
        return studio.job(job_id, caller_of(request)).payload["request"]

    def send(target: str):
        def to_tab(entries, selected, request: gr.Request):
            job_id, index = chosen(entries, selected)
            if index < 0:
                raise gr.Error("this job made no image to send")
            image = image_of(job_id, index, request).convert("RGB")
            value = {"background": image, "layers": [], "composite": image} if target == "inpaint" else image
            fields = targets.fields_update(request_of(job_id, request)) if target != "extras" else \
                (gr.update(),) * len(targets.fields)
            return (gr.Tabs(selected=target), value, *fields)
        return to_tab

    def rerun(entries, selected, request: gr.Request):
        job_id, _ = chosen(entries, selected)
        if rate_limit is not None:
            try:
                rate_limit(owner_of(request))  # a re-run costs what a Generate click costs
            except GuardforgeError as exc:
                raise gr.Error(f"Too many generations: {exc}") from None
        caller = caller_of(request)
        try:
            # Checked again as a new request: the limits, the model and the guard may have changed since.
            new = studio.submit(GenerationRequest.model_validate(request_of(job_id, request)), caller)
        except ValidationError as exc:
            raise gr.Error(f"this job cannot run again: {_errors(exc)}") from None
        except GuardforgeError as exc:
            raise gr.Error(str(exc)) from None
        while True:
            job = studio.job(new.id, caller)
            if job.state in ("succeeded", "failed", "cancelled"):
                break
            yield line("idle", f"Re-run: {live.waiting(job) or job.state}")
            time.sleep(0.25)
        if job.state != "succeeded":
            yield line("error", f"Re-run {job.state}: {job.error}")
            return
        _, action, note = guard_view.outcome(job.result, reasons)
        yield line(action, f"Re-run done (Show lists it first). {note}", guard_view.hover(job.result, reasons))

    def download(entries, selected, request: gr.Request):
        job_id, index = chosen(entries, selected)
        if index < 0:
            raise gr.Error("this job made no image to download")
        image = image_of(job_id, index, request)
        job = studio.job(job_id, caller_of(request))
        if job.images[index].action == "block":
            raise gr.Error("this image was withheld by the guard: there is nothing to download")
        # In the UI's own cache, the one folder its file route serves (ui/mount.py); a fresh folder per file.
        folder = Path(tempfile.mkdtemp(dir=file.GRADIO_CACHE))
        path = folder / f"{job_id[:8]}-{index}.png"
        image.save(path, format="PNG", pnginfo=_infotext_chunk(job.result.images[index].infotext))
        return gr.update(value=str(path), visible=True)

    def delete(entries, selected, since, until, model, verdict, request: gr.Request):
        job_id, _ = chosen(entries, selected)
        try:
            studio.delete_job(job_id, caller_of(request))
        except GuardforgeError as exc:
            raise gr.Error(str(exc)) from None
        return listing(since, until, model, verdict, None, request)

    with gr.Tab("Gallery", id="gallery") as tab:
        with gr.Row():
            since = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="gf-hist-since", scale=1)
            until = gr.Textbox(label="To (YYYY-MM-DD)", elem_id="gf-hist-until", scale=1)
            model = gr.Dropdown([ANY] + model_names(), value=ANY, label="Model", elem_id="gf-hist-model", scale=1)
            verdict = gr.Dropdown([ANY, *OUTCOMES.values()], value=ANY, label="Verdict", elem_id="gf-hist-verdict",
                                  scale=1)
            show = gr.Button("Show", elem_id="gf-hist-show", scale=1)
        gallery = gr.Gallery(label="Your past images", columns=6, height=360, object_fit="contain",
                             allow_preview=False, elem_id="gf-hist-gallery")
        count = gr.Markdown(elem_id="gf-hist-count")
        entries = gr.State([])
        selected = gr.State(None)
        status = gr.HTML(elem_id="gf-hist-status")
        infotext = gr.Textbox(label="Infotext", lines=3, elem_id="gf-hist-infotext")
        with gr.Accordion("Verdict (raw JSON)", open=False):
            raw = gr.JSON(label="Verdict", elem_id="gf-hist-verdict-json")
        with gr.Row():
            again = gr.Button("Re-run", elem_id="gf-hist-rerun")
            to_img2img = gr.Button("Send to img2img", elem_id="gf-hist-img2img")
            to_inpaint = gr.Button("Send to inpaint", elem_id="gf-hist-inpaint")
            to_extras = gr.Button("Send to extras", elem_id="gf-hist-extras")
            fetch = gr.Button("Download", elem_id="gf-hist-download")
            remove = gr.Button("Delete", variant="stop", elem_id="gf-hist-delete")
        file = gr.File(label="Download", visible=False, interactive=False, elem_id="gf-hist-file")

    filters = [since, until, model, verdict]
    shown = [gallery, entries, selected, infotext, status, raw, count]
    show.click(listing, [*filters, selected], shown, api_name="show_gallery")
    tab.select(listing, [*filters, selected], shown)
    gallery.select(select, [entries], [selected, infotext, status, raw])
    again.click(rerun, [entries, selected], [status], concurrency_limit=None)
    for button, target, component in ((to_img2img, "img2img", targets.init_image),
                                      (to_inpaint, "inpaint", targets.editor),
                                      (to_extras, "extras", targets.extras_image)):
        button.click(send(target), [entries, selected], [targets.tabs, component, *targets.fields])
    fetch.click(download, [entries, selected], [file])
    remove.click(delete, [entries, selected, *filters], shown, api_name="delete_from_gallery")


def _infotext_chunk(infotext: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", infotext)  # as the outputs folder's files carry it
    return info
