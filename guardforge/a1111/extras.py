"""A1111's extras (its upscale tab) <-> Studio.upscale: /sdapi/v1/extra-single-image, /extra-batch-images and
/upscalers. Face restoration (GFPGAN, CodeFormer) is not in guardforge: asking for it is reported, not dropped."""

from __future__ import annotations

import base64
import html
from typing import Any

from pydantic import ValidationError

from guardforge.a1111.schemas import (
    ExtrasBatchImagesPayload,
    ExtrasBatchImagesResponse,
    ExtrasPayload,
    ExtrasSingleImagePayload,
    ExtrasSingleImageResponse,
)
from guardforge.access.caller import Caller
from guardforge.engine.upscalers import UpscaleRequest, UpscaleResult
from guardforge.errors import InvalidRequest
from guardforge.guard.blur import withheld_tile
from guardforge.imaging import encode_image

def ignored_fields(payload: ExtrasPayload) -> list[str]:
    """The payload's fields that asked for something guardforge does not do. show_extras_results (A1111's page),
    upscale_first and codeformer_weight (which only order or tune face restoration) change nothing here."""
    ignored = sorted(k for k, v in (payload.model_extra or {}).items() if v not in (None, False, 0, "", [], {}))
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(payload, name):
            ignored.append(name)
    return ignored


def to_upscale_request(payload: ExtrasPayload, image: str) -> UpscaleRequest:
    """The UpscaleRequest an extras payload asks for, for one of its images."""
    fields: dict[str, Any] = dict(image=image, upscaler=payload.upscaler_1 or "None",
                                  upscaler_2=payload.upscaler_2 or None,
                                  upscaler_2_visibility=payload.extras_upscaler_2_visibility)
    if payload.resize_mode == 1:
        fields.update(width=payload.upscaling_resize_w, height=payload.upscaling_resize_h, crop=payload.upscaling_crop)
    else:
        fields["scale"] = payload.upscaling_resize
    try:
        return UpscaleRequest(**fields)
    except ValidationError as exc:
        # In A1111's field names: the caller sent those, not ours.
        names = {"scale": "upscaling_resize", "width": "upscaling_resize_w", "height": "upscaling_resize_h",
                 "upscaler_2_visibility": "extras_upscaler_2_visibility"}
        parts = [f"{names.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else 'payload'}: {e['msg']}"
                 for e in exc.errors()]
        raise InvalidRequest("; ".join(parts)) from None


def _image_of(result: UpscaleResult) -> str:
    if result.pil is None:  # withheld by the guard: a tile as large as the image it stands for, as txt2img's
        return encode_image(withheld_tile(result.width, result.height))
    return base64.b64encode(result.png_bytes()).decode("ascii")


def html_info(results: list[UpscaleResult], ignored: list[str]) -> str:
    """A1111's html_info (the "Postprocess ..." parameters), with what the guard did and what was ignored."""
    lines = []
    if results:
        params = ", ".join(f"{k}: {v}" for k, v in results[0].info.items())
        if params:
            lines.append(params)
    actions = [result.action for result in results]
    if any(action != "allow" for action in actions):
        lines.append("guardforge guard: " + ", ".join(actions))
    if ignored:
        lines.append(f"guardforge ignored: {', '.join(ignored)} (no face restoration here)")
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def extra_single_image(studio, payload: ExtrasSingleImagePayload, caller: Caller) -> ExtrasSingleImageResponse:
    """Upscale one image through Studio.upscale (call it off the event loop: it decodes and runs the model)."""
    result = studio.upscale(to_upscale_request(payload, payload.image), caller)
    return ExtrasSingleImageResponse(html_info=html_info([result], ignored_fields(payload)), image=_image_of(result))


def extra_batch_images(studio, payload: ExtrasBatchImagesPayload, caller: Caller) -> ExtrasBatchImagesResponse:
    """Upscale each image of the batch, in order; the payload's fields are checked for every image first."""
    limit = studio.settings.limits.max_batch_size * studio.settings.limits.max_n_iter
    if len(payload.imageList) > limit:
        raise InvalidRequest(f"imageList has {len(payload.imageList)} images, over this server's limit of {limit}")
    requests = [to_upscale_request(payload, item.data) for item in payload.imageList]
    results = [studio.upscale(request, caller) for request in requests]
    return ExtrasBatchImagesResponse(html_info=html_info(results, ignored_fields(payload)),
                                     images=[_image_of(result) for result in results])
