"""A1111's hires-fix fields of a txt2img payload (enable_hr, hr_*, denoising_strength) -> HiresOptions."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from guardforge.engine.hires import HiresOptions
from guardforge.errors import InvalidRequest

# The payload's hires fields and the HiresOptions field each becomes; the rest of hr_* is reported when set.
_FIELDS = {"hr_scale": "scale", "hr_upscaler": "upscaler", "hr_second_pass_steps": "steps",
           "hr_resize_x": "resize_x", "hr_resize_y": "resize_y", "hr_sampler_name": "sampler",
           "hr_scheduler": "schedule", "hr_prompt": "prompt", "hr_negative_prompt": "negative_prompt",
           "hr_cfg": "cfg_scale"}  # hr_cfg: Forge's; A1111 has none
# How A1111 spells "as the first pass" in each (its UI's choices, and an empty prompt).
_SAME = {"hr_sampler_name": ("", "Use same sampler"), "hr_scheduler": ("", "Use same scheduler"),
         "hr_prompt": ("",), "hr_negative_prompt": ("",)}
HIRES_FIELDS = ("enable_hr", "firstphase_width", "firstphase_height", "hr_checkpoint_name",
                "hr_additional_modules", "hr_distilled_cfg", *_FIELDS)
_DEFAULT_STRENGTH = 0.7  # A1111's UI default, for a client that turns hires on without sending one


def hires_from_payload(extra: dict[str, Any], denoising_strength: float | None,
                       schedules: dict[str, str]) -> tuple[HiresOptions | None, list[str]]:
    """(the hires options, the hires fields that had no effect). `extra` is the payload's undeclared fields
    (A1111's hr_* among them); `schedules` A1111's scheduler names -> ours. With enable_hr off the hr_* fields
    mean nothing, as in A1111 (webuiapi sends them every time)."""
    if not extra.get("enable_hr"):
        return None, []
    fields: dict[str, Any] = {}
    for key, name in _FIELDS.items():
        value = extra.get(key)
        if value is None or (isinstance(value, str) and value.strip() in _SAME.get(key, ())):
            continue
        if key == "hr_scheduler":
            value = schedules.get(str(value).strip().lower(), value)
        fields[name] = value
    fields["denoising_strength"] = _DEFAULT_STRENGTH if denoising_strength is None else denoising_strength
    ignored = [key for key in HIRES_FIELDS if key not in _FIELDS and key != "enable_hr"
               and extra.get(key) not in (None, False, 0, "", [], {})]
    try:
        return HiresOptions(**fields), ignored
    except ValidationError as exc:
        names = {name: key for key, name in _FIELDS.items()}
        names["denoising_strength"] = "denoising_strength"
        parts = [f"{names.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else 'hires'}: {e['msg']}"
                 for e in exc.errors()]
        raise InvalidRequest("; ".join(parts)) from None
