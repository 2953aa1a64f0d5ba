"""The web UI's Extras tab (A1111's name): upscale an uploaded image, one Studio.upscale call per click."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from guardforge.errors import GuardforgeError
from guardforge.guard.blur import withheld_tile
from guardforge.imaging import encode_image
from guardforge.ui.uploads import UploadedImage, with_cap

SCALE_BY, SCALE_TO = "Scale by", "Scale to"  # A1111's two tabs of the extras upscale


def extras_tab(studio, rate_limit: Callable[[str], None] | None, caller_of: Callable, owner_of: Callable):
    """The tab's components and its click handler, inside the caller's gr.Tabs; returns its image input (the
    gallery's "send to extras" fills it). `caller_of(request)` and `owner_of(request)` are the app's: whose call
    this is, for the rate limit and the guard's audit."""
    from pydantic import ValidationError

    from guardforge.engine.upscalers import UpscaleRequest

    limits = studio.settings.limits

    def names() -> list[str]:
        return [u.name for u in studio.upscalers_listed()]

    def upscale_image(image, upscaler, scale, upscaler_2, visibility, resize_mode, width, height, crop,
                      request: gr.Request):
        if image is None:
            raise gr.Error("drop an image to upscale")
        if rate_limit is not None:
            try:
                rate_limit(owner_of(request))  # what a POST /v1/upscale costs
            except GuardforgeError as exc:
                raise gr.Error(f"Too many requests: {exc}") from None
        try:
            # Decoded under the pixel cap by UploadedImage; re-encoded so the API's one request type carries it.
            size = ({"width": int(width), "height": int(height), "crop": bool(crop)} if resize_mode == SCALE_TO
                    else {"scale": float(scale)})
            asked = UpscaleRequest(image=encode_image(image.convert("RGB")), upscaler=upscaler,
                                   upscaler_2=upscaler_2 or None, upscaler_2_visibility=float(visibility), **size)
            result = studio.upscale(asked, caller_of(request))
        except ValidationError as exc:
            raise gr.Error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        except GuardforgeError as exc:  # an unknown upscaler, a size over the cap: the reason, the page alive
            raise gr.Error(str(exc)) from None
        params = ", ".join(f"{k}: {v}" for k, v in result.info.items())
        if result.pil is None:
            which = "input" if result.blocked else "upscaled"
            verdict = result.input_verdict if result.blocked else result.verdict
            violated = ", ".join(verdict.violated) if verdict else ""
            return (withheld_tile(result.width, result.height),
                    f"Blocked by the guard: the {which} image was refused ({violated or 'policy'}).")
        note = "" if result.action == "allow" else f" The guard's action: {result.action}."
        return result.pil, f"{result.width}x{result.height} in {result.elapsed_s:.1f}s. {params}.{note}"

    with gr.Tab("Extras", id="extras"):
        image = with_cap(UploadedImage(type="pil", label="Image to upscale", elem_id="gf-extras-image"),
                         limits.max_image_pixels)
        choices = names()
        with gr.Row():
            resize_mode = gr.Radio([SCALE_BY, SCALE_TO], value=SCALE_BY, label="Resize", elem_id="gf-upscale-mode")
            scale = gr.Slider(1, 8, value=2, step=0.05, label="Scale by", elem_id="gf-upscale-by")
            width = gr.Slider(8, limits.max_width * 4, value=1024, step=8, label="Scale to width")
            height = gr.Slider(8, limits.max_height * 4, value=1024, step=8, label="Scale to height")
            crop = gr.Checkbox(True, label="Crop to fit")
        with gr.Row():
            upscaler = gr.Dropdown(choices, value="Lanczos", label="Upscaler", elem_id="gf-upscaler")
            upscaler_2 = gr.Dropdown(choices, value="None", label="Upscaler 2")
            visibility = gr.Slider(0, 1, value=0, step=0.05, label="Upscaler 2 visibility")
        button = gr.Button("Upscale", variant="primary", elem_id="gf-upscale")
        result = gr.Image(type="pil", format="png", label="Upscaled", interactive=False, elem_id="gf-upscaled")
        info = gr.Textbox(label="Info", elem_id="gf-upscale-info")
    # Models dropped into ESRGAN/ or RealESRGAN/ while the server runs show up when the list is opened.
    for dropdown in (upscaler, upscaler_2):
        dropdown.focus(lambda: gr.update(choices=names()), None, dropdown)
    button.click(upscale_image, [image, upscaler, scale, upscaler_2, visibility, resize_mode, width, height, crop],
                 [result, info], concurrency_limit=None)
    return image
