"""A1111 infotext: the "parameters" text stored in each image, written and parsed in A1111's exact format."""

from __future__ import annotations

import json
import re
from typing import Any

from guardforge.engine.hires import fields_from_params as hires_fields
from guardforge.engine.hires import infotext_params as hires_infotext_params
from guardforge.engine.request import GenerationRequest
from guardforge.engine.samplers import effective_schedule, split_legacy_sampler

# A1111's modules/infotext_utils.py: `key: value` pairs, values quoted as JSON when they hold , : or newline.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_INVERTED_MASK_MODE = "Inpaint not masked"


def quote(value: Any) -> Any:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _number(value: float) -> str:
    # A1111 writes CFG 7 as "7" and 7.5 as "7.5".
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def build_infotext(request: GenerationRequest, seed: int, width: int, height: int, model_name: str,
                   model_hash: str | None, vae_name: str | None = None, vae_hash: str | None = None,
                   subseed: int | None = None, ti_hashes: str | None = None,
                   controlnet_units: list[str] | None = None, refiner: tuple[str, str] | None = None,
                   extra: dict[str, Any] | None = None, script_params: dict[str, Any] | None = None) -> str:
    """Prompt, `Negative prompt:` line (only when there is one), then the parameters line, in A1111's order.

    `vae_name` (the VAE's file name, as A1111 writes it) and `vae_hash` only when a VAE replaced the
    checkpoint's own: A1111 writes neither then. `subseed`: this image's variation seed, written only when
    subseed_strength used it. `ti_hashes`: A1111's "name: short hash, ..." of the embeddings the texts used.
    `refiner`: (name, short hash) of the refiner checkpoint used. `extra`: keys written last, as A1111 writes its
    extensions' extra_generation_params (dynamic prompts' Template). `script_params`: what the scripts that ran add
    (as A1111's extra_generation_params), after the rest; they cannot replace a key written above."""
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        # The schedule in force, so a reader sees "Karras" where "Automatic" resolved to it.
        "Schedule type": effective_schedule(request.sampler, request.schedule),
        "CFG scale": _number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash if vae_name else None,
        "VAE": vae_name,
        "Variation seed": subseed if request.subseed_strength > 0 else None,
        "Variation seed strength": request.subseed_strength if request.subseed_strength > 0 else None,
        "Seed resize from": (f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
                             if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0 else None),
        # txt2img's is the hires pass's, as A1111 writes it.
        "Denoising strength": (request.denoising_strength if request.mode != "txt2img" else
                               request.hires.denoising_strength if request.hires is not None else None),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        # A1111 adds these to extra_generation_params for inpainting, which come after the fixed keys.
        "Mask blur": request.mask_blur if request.mode == "inpaint" else None,
        "Mask mode": _INVERTED_MASK_MODE if request.mode == "inpaint" and request.inpainting_mask_invert else None,
        "Masked content": request.inpainting_fill,
        "Outpaint": str(request.outpaint) if request.outpaint is not None else None,
        "TI hashes": ti_hashes or None,
        # sd-webui-controlnet's `ControlNet 0: "Module: canny, Model: ..."`, one per unit (engine/controlnet.py)
        **{f"ControlNet {index}": unit for index, unit in enumerate(controlnet_units or [])},
        # Also extra_generation_params in A1111, added by the sampler once it switches models.
        "Refiner": f"{refiner[0]} [{refiner[1]}]" if refiner and request.refiner else None,
        "Refiner switch at": request.refiner.switch_at if refiner and request.refiner else None,
    }
    if request.hires is not None:
        params.update(hires_infotext_params(request))
    params.update(extra or {})
    for key, value in (script_params or {}).items():
        params.setdefault(key, value)
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111's parse_generation_parameters: {"Prompt", "Negative prompt", "Steps", ..., "Size-1", "Size-2"}.

    Values stay strings as in A1111, except that the defaults A1111 fills in are added (Clip skip 1,
    Schedule type from an old "DPM++ 2M Karras" style sampler name).
    """
    result: dict[str, Any] = {}
    prompt, negative, in_negative = "", "", False
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    for key, value in _PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        size = _SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    result.setdefault("Clip skip", "1")
    if "Sampler" in result and "Schedule type" not in result:
        result["Sampler"], schedule = split_legacy_sampler(result["Sampler"])
        result["Schedule type"] = schedule or "Automatic"
    return result


def fields_from_infotext(text: str) -> dict[str, Any]:
    """The GenerationRequest fields an infotext gives, its values not yet checked (mostly strings).

    Kept unchecked so that a caller can lay its own values over them first and validate once: an option
    that replaces a value guardforge does not support (an "SGM Uniform" schedule) must win over it.
    """
    p = parse_infotext(text)
    fields: dict[str, Any] = {"prompt": p["Prompt"], "negative_prompt": p["Negative prompt"]}
    if p.get("Script") == "X/Y/Z plot":
        # A grid's cells were each expanded from the template after Prompt S/R or Prompt order edited it; the
        # first cell's expansion in its place would lose the other choices (an S/R value it did not pick).
        fields["prompt"] = p.get("Template", fields["prompt"])
        fields["negative_prompt"] = p.get("Negative Template", fields["negative_prompt"])
    mapping = {
        "Steps": "steps", "Sampler": "sampler", "Schedule type": "schedule", "CFG scale": "cfg_scale",
        "Seed": "seed", "Size-1": "width", "Size-2": "height", "Denoising strength": "denoising_strength",
        "Clip skip": "clip_skip", "Mask blur": "mask_blur", "Model": "model", "VAE": "vae",
        "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
        "Seed resize from-1": "seed_resize_from_w", "Seed resize from-2": "seed_resize_from_h",
        "Masked content": "inpainting_fill", "Outpaint": "outpaint",
    }
    for key, name in mapping.items():
        if key in p:
            fields[name] = p[key]
    if "Refiner" in p:  # A1111's default switch, where an infotext names a refiner and no switch
        fields["refiner"] = {"checkpoint": p["Refiner"], "switch_at": p.get("Refiner switch at", 0.8)}
    if p.get("Mask mode") == _INVERTED_MASK_MODE:
        fields["inpainting_mask_invert"] = True
    if "outpaint" in fields:
        _size_before_outpaint(fields)
    hires = hires_fields(p)
    if hires is not None:
        fields["hires"] = hires
    return fields


def _size_before_outpaint(fields: dict[str, Any]) -> None:
    """Size is the outpainted image's; a request's width and height are the image's before it is extended."""
    from guardforge.engine.outpaint import Outpaint

    try:
        spec = Outpaint.model_validate(fields["outpaint"])
        width, height = int(fields["width"]), int(fields["height"])
    except (KeyError, ValueError):  # left for the request's validation to name
        return
    fields["width"], fields["height"] = width - spec.left - spec.right, height - spec.up - spec.down


def request_from_infotext(text: str, **overrides: Any) -> GenerationRequest:
    """The GenerationRequest that an infotext describes (images are not in infotext: pass them in overrides)."""
    return GenerationRequest(**{**fields_from_infotext(text), **overrides})
