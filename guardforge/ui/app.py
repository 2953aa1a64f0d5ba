"""The web UI: a Gradio Blocks app on the Studio's job queue (txt2img, img2img, inpaint, history, PNG info)."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable

import gradio as gr
from PIL import Image

from guardforge.a1111.adapter import png_info
from guardforge.engine.refiner import HANDOVER_FAMILIES
from guardforge.engine.request import SCHEDULE_TYPES, GenerationRequest
from guardforge.errors import GuardforgeError
from guardforge.guard.blur import withheld_tile
from guardforge.imaging import encode_image
from guardforge.access.caller import LOCAL_OWNER, Caller
from guardforge.ui import batch, form_memory, guard_view, live, networks, outpaint_controls, seed_extras
from guardforge.ui.controlnet_panel import ControlNetPanel
from guardforge.ui.extras import extras_tab
from guardforge.ui.history import Targets, history_tab
from guardforge.ui.xyz_tab import xyz_tab
from guardforge.ui.hires import hires_options, hires_section, hires_updates, hires_upscalers
from guardforge.ui.uploads import (
    CLEAN_EVERY_S,
    KEEP_UPLOADS_S,
    UploadedFile,
    UploadedImage,
    UploadedImageEditor,
    open_upload,
    with_cap,
)


def _owner(request: gr.Request | None) -> str:
    """Whose jobs these are: the logged-in key id (server.app makes the login's user name the key's id), or the
    open API's own owner when nobody logs in."""
    return getattr(request, "username", None) or LOCAL_OWNER


def _caller(studio, request: gr.Request | None) -> Caller:
    owner = _owner(request)
    return studio.caller(None if owner == LOCAL_OWNER else owner)


SCHEDULES = list(SCHEDULE_TYPES)
# What PNG info and Reuse set: prompt, negative, the nine of `params`, the five seed extras, the ten of hires fix,
# the txt2img refiner and its switch.
FORM_FIELDS = 28


_bar = guard_view.bar


def _retry_message(exc: GuardforgeError) -> str:
    """The rate limit's refusal, saying when to come back (the API says it in Retry-After)."""
    wait = getattr(exc, "retry_after", None)
    if wait is None:
        return f"Too many generations: {exc}"
    wait = max(1, math.ceil(wait))  # as the API's Retry-After: waiting this long is enough
    hours, rest = divmod(wait, 3600)
    span = " ".join(f"{n} {unit}" for n, unit in ((hours, "h"), (rest // 60, "min"), (rest % 60, "s")) if n)
    return (f"Too many generations: rate limit reached; retry in {span} "
            f"(at {time.strftime('%H:%M:%S', time.localtime(time.time() + wait))} server time)")


def _mask_from_editor(value: dict) -> tuple[Image.Image | None, Image.Image | None]:
    """ImageEditor value -> (background RGB, white-on-black mask of everything painted on the layers)."""
    if not value or value.get("background") is None:
        return None, None
    background = value["background"].convert("RGB")
    mask = Image.new("L", background.size, 0)
    for layer in value.get("layers") or []:
        if layer.size != background.size:  # the canvas sends layers the image's size; a hand-made call may not
            raise gr.Error(f"a painted layer is {layer.width}x{layer.height}, the image "
                           f"{background.width}x{background.height}: they must match")
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        mask.paste(255, (0, 0), alpha)
    return background, mask if mask.getbbox() else None


def build_ui(studio, rate_limit: Callable[[str], None] | None = None) -> gr.Blocks:
    """The Blocks app for `studio`; every action is one Studio call.

    `rate_limit(owner)` spends one request of the owner's budget or raises: the server passes the API's own
    per-key buckets, so clicking Generate costs what a POST /v1/jobs costs.
    """
    limits = studio.settings.limits
    reasons = guard_view.Reasons(studio.guard.policy)

    def model_names() -> list[str]:
        return [e.name for e in studio.models("checkpoint")]

    def vae_names() -> list[str]:
        # "Automatic" first: the checkpoint's own VAE, as A1111 lists it.
        return ["Automatic"] + [e.name for e in studio.models("vae")]

    def vae_choice(name: str | None):
        """The dropdown's value for a request's VAE (an infotext's is a file name); None: the checkpoint's own."""
        if name is None:
            return "Automatic"
        try:
            return studio.usable_vae(name).name
        except GuardforgeError:  # gone from the models folder, or a pickle: the dropdown cannot show it
            return None

    def native_size(model: str | None) -> tuple[int, int] | None:
        """The size `model` was trained at, as the CLI defaults to; None when its configs cannot say."""
        try:
            return studio.native_size(model or None)
        except Exception:  # an unreadable or vanished model: keep whatever size the form has
            return None

    def restore_form(request: gr.Request):
        choices = {"model": model_names(), "vae": vae_names(), "sampler": sampler_names(), "schedule": SCHEDULES}
        return form_memory.restore(studio, _caller(studio, request), choices)

    def refiner_picker(elem_id: str):
        """A1111's refiner: a checkpoint that finishes the image, and after what fraction of the steps."""
        with gr.Row():
            picked = gr.Dropdown(["None"] + refiner_choices(), value="None", label="Refiner", elem_id=elem_id)
            switch = gr.Slider(0.01, 0.99, value=0.8, step=0.01, label="Refiner switch at",
                               elem_id=f"{elem_id}-switch")
        return picked, switch

    def sampler_names() -> list[str]:
        from guardforge.engine.samplers import SAMPLERS

        return list(SAMPLERS)

    def run(mode, prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed,
            init_image, strength, editor, extra, subseed, subseed_strength, resize_w, resize_h,
            out_left, out_right, out_up, out_down, fill, request: gr.Request, hires=None, refiner=None,
            switch_at=0.8, controlnet: list | None = None, batch_count=1, batch_size=1):
        owner = _owner(request)
        if rate_limit is not None:
            try:
                rate_limit(owner)  # before anything else, as the API's door: refused clicks count too
            except GuardforgeError as exc:
                raise gr.Error(_retry_message(exc)) from None
        fields = dict(prompt=prompt, negative_prompt=negative, model=model or None, vae=vae or None, sampler=sampler,
                      schedule=schedule, steps=int(steps), cfg_scale=float(cfg), width=int(width),
                      height=int(height), seed=int(seed), hires=hires)
        fields.update(seed_extras.request_fields(extra, subseed, subseed_strength, resize_w, resize_h))
        fields.update(batch.request_fields(batch_count, batch_size))
        if refiner and refiner != "None":
            fields["refiner"] = {"checkpoint": refiner, "switch_at": float(switch_at)}
        if mode == "img2img":
            if init_image is None:
                raise gr.Error("drop an image to start from")
            # Decoded under the pixel cap by UploadedImage, so re-encoding it costs no more than the API's call.
            fields.update(init_image=encode_image(init_image.convert("RGB")), denoising_strength=strength)
            fields.update(outpaint_controls.request_fields(out_left, out_right, out_up, out_down, fill))
        elif mode == "inpaint":
            background, mask = _mask_from_editor(editor)
            if background is None or mask is None:
                raise gr.Error("load an image and paint the area to repaint")
            fields.update(init_image=encode_image(background), mask=encode_image(mask),
                          denoising_strength=strength)
            if fill not in (None, "original"):  # "original", the inpaint default, is left unsaid as before
                fields["inpainting_fill"] = fill
        if controlnet:
            fields.update(ControlNetPanel.request_fields(controlnet))  # its enabled units, an IP-Adapter apart
        caller = _caller(studio, request)
        try:
            job_id = studio.submit(GenerationRequest(**fields), caller).id
        except Exception as exc:  # a limit or an unknown name: show the reason, keep the page alive
            raise gr.Error(str(exc)) from None
        form_memory.remember(studio, caller, {**fields, "vae": vae})
        watch = live.Progress(int(steps))
        while True:
            job = studio.job(job_id, caller)
            if job.state in ("succeeded", "failed", "cancelled"):
                break
            status, shown = watch.update(job, studio.latest_event(job_id) or job.progress)
            yield status, shown, gr.update(), gr.update(), job_id
            time.sleep(0.25)
        if job.state != "succeeded":
            yield _bar(0, 0, job.state, f"{job.state}: {job.error}", "error"), [], "", {}, job_id
            return
        result = job.result
        gallery = []
        for stored, meta in zip(job.images, result.images):
            if stored.action == "block":
                image = withheld_tile(meta.width, meta.height)
            else:
                data, _ = studio.image_bytes(stored.id, caller)
                image = Image.open(io.BytesIO(data))  # our own output, written by this server
            gallery.append((image, guard_view.caption(meta, reasons)))
        state, action, note = guard_view.outcome(result, reasons)
        asked = job.payload["request"]
        total = asked["steps"] * asked.get("n_iter", 1)  # every batch's steps, as the progress events count them
        status = _bar(total, total, state, note, action, title=guard_view.hover(result, reasons))
        yield (status, gallery, result.images[0].infotext if result.images else "", guard_view.verdict_json(result),
               job_id)

    def runner(mode: str):
        # An explicit signature, so that Gradio sees the gr.Request parameter and fills it in.
        def run_mode(prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed, init_image,
                     strength, editor, extra=False, subseed=-1, subseed_strength=0, resize_w=0, resize_h=0,
                     out_left=0, out_right=0, out_up=0, out_down=0, fill=None, refiner="None", switch_at=0.8,
                     batch_count=1, batch_size=1, request: gr.Request = None,
                     controlnet: list | None = None):
            yield from run(mode, prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed,
                           init_image, strength, editor, extra, subseed, subseed_strength, resize_w, resize_h,
                           out_left, out_right, out_up, out_down, fill, request, refiner=refiner, switch_at=switch_at,
                           controlnet=controlnet, batch_count=batch_count, batch_size=batch_size)
        return run_mode

    def run_inpaint(prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed, init_image,
                    strength, editor, extra=False, subseed=-1, subseed_strength=0, resize_w=0, resize_h=0,
                    out_left=0, out_right=0, out_up=0, out_down=0, fill=None, batch_count=1, batch_size=1,
                    request: gr.Request = None):
        yield from run("inpaint", prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed,
                       init_image, strength, editor, extra, subseed, subseed_strength, resize_w, resize_h,
                       out_left, out_right, out_up, out_down, fill, request, batch_count=batch_count,
                       batch_size=batch_size)

    def run_txt2img(prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed, init_image,
                    strength, editor, extra=False, subseed=-1, subseed_strength=0, resize_w=0, resize_h=0,
                    hr_enabled=False, hr_upscaler="Latent", hr_scale=2, hr_steps=0, hr_strength=0.7, hr_resize_x=0,
                    hr_resize_y=0, hr_sampler="Use same sampler", hr_prompt="", hr_negative="", refiner="None",
                    switch_at=0.8, batch_count=1, batch_size=1, request: gr.Request = None,
                    controlnet: list | None = None):
        hires = hires_options(hr_enabled, hr_upscaler, hr_scale, hr_steps, hr_strength, hr_resize_x, hr_resize_y,
                              hr_sampler, hr_prompt, hr_negative)
        yield from run("txt2img", prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed,
                       init_image, strength, editor, extra, subseed, subseed_strength, resize_w, resize_h,
                       0, 0, 0, 0, None, request, hires=hires, refiner=refiner, switch_at=switch_at,
                       controlnet=controlnet, batch_count=batch_count, batch_size=batch_size)

    def show_selected(job_id, evt: gr.SelectData, request: gr.Request):
        job = studio.job(job_id, _caller(studio, request))
        return job.result.images[evt.index].infotext, guard_view.verdict_json(job.result, evt.index)

    def history(request: gr.Request):
        rows = []
        for job in studio.list_jobs(_caller(studio, request), limit=50, kind="generate"):  # training jobs are not reusable here
            asked = job.payload.get("request", {})  # not `request`: that is the caller's gr.Request
            rows.append([job.id, time.strftime("%H:%M:%S", time.localtime(job.created_at)), job.state,
                         asked.get("prompt", "")[:80]])
        return gr.update(value=rows), gr.update(choices=[(f"{r[1]} {r[3]}", r[0]) for r in rows])

    def reuse(job_id, request: gr.Request):
        if not job_id:
            raise gr.Error("choose a job from the history first")
        asked = studio.job(job_id, _caller(studio, request)).payload["request"]
        return _fields_update(networks.with_styles(studio, asked))

    def read_png(path):
        if not path:
            return (gr.update(),) * FORM_FIELDS + ("",)
        from guardforge.engine.infotext import request_from_infotext

        # Header and text chunks only: the parameters come before the pixels, which are never decoded here.
        image = open_upload(path, limits.max_image_pixels, "the image", load=False)
        text, _, _ = png_info(image)  # as /sdapi/v1/png-info reads it: the PNG chunk, else EXIF (JPEG, WebP)
        image.close()
        if not text:
            return (gr.update(),) * FORM_FIELDS + ("this image carries no generation parameters",)
        try:
            # An outpainted or inpainted image's mask settings need its image, which PNG info does not fill in.
            params = request_from_infotext(text, outpaint=None, inpainting_fill=None).model_dump()
        except Exception as exc:  # a foreign infotext (unknown sampler, odd sizes): show it, fill nothing
            return (gr.update(),) * FORM_FIELDS + (f"{text}\n\n(not usable here: {exc})",)
        return _fields_update(params) + (text,)

    def _fields_update(params: dict):
        get = params.get
        return (
            gr.update(value=get("prompt", "")), gr.update(value=get("negative_prompt", "")),
            gr.update(value=get("model")) if get("model") in model_names() else gr.update(),
            # A VAE no longer in the folder leaves the choice as it was, as an unknown model does.
            gr.update(value=named) if (named := vae_choice(get("vae"))) is not None else gr.update(),
            gr.update(value=get("sampler")) if get("sampler") in sampler_names() else gr.update(),
            gr.update(value=get("schedule")) if get("schedule") in SCHEDULES else gr.update(),
            gr.update(value=get("steps")) if get("steps") else gr.update(),
            gr.update(value=get("cfg_scale")) if get("cfg_scale") is not None else gr.update(),
            gr.update(value=get("width")) if get("width") else gr.update(),
            gr.update(value=get("height")) if get("height") else gr.update(),
            gr.update(value=get("seed")) if get("seed") is not None else gr.update(),
            *seed_extras.updates(params),
        ) + hires_updates(get("hires"), hires_upscalers(studio)) + refiner_updates(get("refiner"))

    def refiner_choices() -> list[str]:
        # Only checkpoints a refiner can be: diffusers hands over between two models of these families.
        return [e.name for e in studio.models("checkpoint") if e.family in HANDOVER_FAMILIES]

    def refiner_updates(refiner: dict | None) -> tuple:
        """The txt2img refiner picker and switch from a request's refiner (an infotext names it "name [hash]")."""
        if not refiner:
            return gr.update(value="None"), gr.update()
        name = str(refiner.get("checkpoint", "")).split(" [")[0]
        return (gr.update(value=name) if name in refiner_choices() else gr.update(),
                gr.update(value=refiner.get("switch_at", 0.8)))

    with gr.Blocks(title="guardforge", delete_cache=(CLEAN_EVERY_S, KEEP_UPLOADS_S)) as ui:
        gr.Markdown("# guardforge")
        job_state = gr.State("")
        with gr.Row():
            models = model_names()
            default_model = studio.settings.default_model if studio.settings.default_model in models else (
                models[0] if models else None)
            model = gr.Dropdown(models, value=default_model, label="Model", elem_id="gf-model")
            vae = gr.Dropdown(vae_names(), value="Automatic", label="VAE", elem_id="gf-vae")
            sampler = gr.Dropdown(sampler_names(), value="Euler a", label="Sampler", elem_id="gf-sampler")
            schedule = gr.Dropdown(SCHEDULES, value="Automatic", label="Schedule")
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="gf-prompt")
        negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="gf-negative")
        networks.build(studio, prompt, negative)
        with gr.Row():
            steps = gr.Slider(1, limits.max_steps, value=20, step=1, label="Steps", elem_id="gf-steps")
            cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG scale")
            # The model's own size by default, as the CLI: 512 on a 64 px model is 64 times the work, for worse.
            native_w, native_h = native_size(default_model) or (512, 512)
            width = gr.Slider(8, limits.max_width, value=native_w, step=8, label="Width", elem_id="gf-width")
            height = gr.Slider(8, limits.max_height, value=native_h, step=8, label="Height", elem_id="gf-height")
            seed = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id="gf-seed")
        extras = seed_extras.build(limits)
        batches, reuse_seed = batch.build(limits)
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt_refiner, txt_switch = refiner_picker("gf-refiner")
                txt_button = gr.Button("Generate", variant="primary", elem_id="gf-generate")
                hires_inputs = hires_section(studio)
                txt_controls = ControlNetPanel(studio, rate_limit, _owner, img2img=False).build("txt2img")
            with gr.Tab("img2img", id="img2img"):
                init_image = with_cap(UploadedImage(type="pil", label="Start from", elem_id="gf-init-image"),
                                      limits.max_image_pixels)
                strength = gr.Slider(0, 1, value=0.75, step=0.05, label="Denoising strength")
                outpaint = outpaint_controls.build(limits)
                img_refiner, img_switch = refiner_picker("gf-img-refiner")
                img_button = gr.Button("Generate from image", variant="primary")
                img_controls = ControlNetPanel(studio, rate_limit, _owner, img2img=True).build("img2img")
            with gr.Tab("inpaint", id="inpaint"):
                editor = with_cap(UploadedImageEditor(type="pil", label="Paint the area to repaint",
                                                      brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                                      elem_id="gf-editor"),
                                  limits.max_image_pixels)
                inpaint_strength = gr.Slider(0, 1, value=0.75, step=0.05, label="Denoising strength")
                inpaint_fill = outpaint_controls.masked_content("original", "gf-inpaint-fill")
                inpaint_button = gr.Button("Inpaint", variant="primary")
            extras_image = extras_tab(studio, rate_limit, lambda request: _caller(studio, request), _owner)
            xyz_tab(studio, rate_limit, lambda request: _caller(studio, request), _owner, prompt, negative,
                    [model, vae, sampler, schedule, steps, cfg, width, height, seed])
            with gr.Tab("PNG info"):
                png = UploadedFile(label="Drop a PNG made by guardforge or A1111", file_types=[".png"],
                                   type="filepath", elem_id="gf-png")
                png_text = gr.Textbox(label="Parameters found", lines=4, elem_id="gf-png-text")
            sent_fields = [prompt, negative, model, vae, sampler, schedule, steps, cfg, width, height, seed, *extras,
                           *hires_inputs, txt_refiner, txt_switch]
            history_tab(studio, Targets(tabs, init_image, editor, extras_image, sent_fields, _fields_update),
                        lambda request: _caller(studio, request), _owner, rate_limit, model_names)
        progress = gr.HTML(_bar(0, 0, "idle"))
        # Four columns even for one image: fitted to one column, the caption (what the guard did) falls off.
        gallery = gr.Gallery(label="Images", columns=4, fit_columns=False, object_fit="contain", elem_id="gf-gallery")
        infotext = gr.Textbox(label="Infotext", lines=3, elem_id="gf-infotext")
        # The badge in the status box says the verdict; the raw one is for those who want every field.
        with gr.Accordion("Verdict (raw JSON)", open=False, elem_id="gf-verdict-fold"):
            verdict = gr.JSON(label="Verdict", elem_id="gf-verdict")
        with gr.Accordion("History", open=False):
            refresh = gr.Button("Refresh history")
            table = gr.Dataframe(headers=["job", "time", "state", "prompt"], interactive=False)
            chosen = gr.Dropdown([], label="Job", elem_id="gf-history-job")
            reuse_button = gr.Button("Reuse these parameters")

        params = [model, vae, sampler, schedule, steps, cfg, width, height, seed]
        outputs = [progress, gallery, infotext, verdict, job_state]
        # No Gradio concurrency limit (its default is 1: one user's generation at a time, the next user's click
        # not even submitted): a handler only submits and polls, and our queue applies the workers, the
        # per-key caps and the rate limit, as it does for the API.
        # The handlers' parameters, in the order of their inputs; the ControlNet units' come last. The endpoints
        # keep the names API clients already call: /run_mode (txt2img), /run_mode_1 (img2img), /run_mode_2 (inpaint).
        names = ["prompt", "negative", "model", "vae", "sampler", "schedule", "steps", "cfg", "width", "height", "seed",
                 "init_image", "strength", "editor", "extra", "subseed", "subseed_strength", "resize_w", "resize_h"]
        hires_names = ["hr_enabled", "hr_upscaler", "hr_scale", "hr_steps", "hr_strength", "hr_resize_x",
                       "hr_resize_y", "hr_sampler", "hr_prompt", "hr_negative"]
        outpaint_names = ["out_left", "out_right", "out_up", "out_down", "fill"]
        refiner_names = ["refiner", "switch_at"]
        batch_names = ["batch_count", "batch_size"]  # after the tab's own controls, before any ControlNet unit
        txt_button.click(txt_controls.wrap(run_txt2img, names + hires_names + refiner_names + batch_names),
                         [prompt, negative, *params, init_image, strength, editor, *extras, *hires_inputs,
                          txt_refiner, txt_switch, *batches, *txt_controls.components], outputs,
                         concurrency_limit=None, api_name="run_mode")
        img_button.click(img_controls.wrap(runner("img2img"), names + outpaint_names + refiner_names + batch_names),
                         [prompt, negative, *params, init_image, strength, editor, *extras, *outpaint,
                          img_refiner, img_switch, *batches, *img_controls.components], outputs,
                         concurrency_limit=None)
        inpaint_button.click(run_inpaint,
                             [prompt, negative, *params, init_image, inpaint_strength, editor, *extras, *outpaint[:4],
                              inpaint_fill, *batches], outputs, concurrency_limit=None, api_name="run_mode_2")
        batch.wire_reuse(reuse_seed, infotext, seed)
        gallery.select(show_selected, [job_state], [infotext, verdict])
        # `input`, not `change`: a model set by PNG info or Reuse comes with its own settings, which must stay.
        # The endpoint keeps the name it had when it set the size alone.
        model.input(lambda name: form_memory.defaults_updates(studio, name), [model],
                    [width, height, sampler, steps, cfg], api_name="sizes_for")
        ui.load(restore_form, None, [model, vae, sampler, schedule, steps, cfg, width, height, negative])
        refresh.click(history, None, [table, chosen])
        fields = [prompt, negative, *params, *extras, *hires_inputs, txt_refiner, txt_switch]
        reuse_button.click(reuse, [chosen], fields)
        png.upload(read_png, [png], [*fields, png_text])
    return ui
