"""`guardforge generate`'s ControlNet options: repeatable, one value per unit (or one for every unit), turned into
the request's `controlnet` units, with what an image's infotext restores."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from guardforge.engine.controlnet_unit import CONTROL_MODES, RESIZE_MODES
from guardforge.errors import InvalidRequest

# Short spellings for the command line; A1111's full names and its numbers 0..2 work too.
_MODE_WORDS = {"balanced": 0, "prompt": 1, "controlnet": 2}
_RESIZE_WORDS = {"just": 0, "resize": 0, "crop": 1, "fill": 2}
# The option of each unit field, for messages.
FLAGS = {"image": "--control", "model": "--control-model", "module": "--control-module", "weight": "--control-weight",
         "guidance_start": "--control-start", "guidance_end": "--control-end", "control_mode": "--control-mode",
         "resize_mode": "--control-resize", "processor_res": "--control-res",
         "threshold_a": "--control-threshold-a", "threshold_b": "--control-threshold-b"}
INIT = "init"  # --control init: the unit reads the init image, as sd-webui-controlnet's img2img units do


def _named(value: str, names: tuple[str, ...], words: dict[str, int], option: str) -> str:
    text = value.strip().lower()
    for name in names:
        if text == name.lower():
            return name
    if text in words:
        return names[words[text]]
    if text.isdigit() and int(text) < len(names):
        return names[int(text)]
    raise InvalidRequest(f"{option} {value!r} is not one of: {', '.join(names)} (or {', '.join(words)}, "
                         f"0..{len(names) - 1})")


def _per_unit(values: list | None, count: int, option: str) -> list:
    values = list(values or [])
    if len(values) in (0, count):
        return values or [None] * count
    if len(values) == 1:
        return values * count
    raise InvalidRequest(f"{option} is given {len(values)} times for {count} ControlNet unit(s): give it once (for "
                         "every unit) or once per unit, in the order of --control-model")


def _image(path: str | None) -> str | None:
    if path is None or path == INIT:
        return None
    file = Path(path)
    if not file.is_file():
        raise InvalidRequest(f"--control {path} is not a file (or `{INIT}` for the init image)")
    return base64.b64encode(file.read_bytes()).decode("ascii")


def control_units(options: dict[str, list | None], restored: list[dict[str, Any]],
                  from_png: Path | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The units the options ask for, and a note for the user (units of the image that could not be restored).

    `options` maps each option's field (image, model, module, weight, ...) to its values; `restored` are the units
    an image's infotext names (engine/controlnet.py's units_from_infotext). --control-model makes new units; without
    it, the image's units are restored when --control gives their images, since a PNG holds no control image.
    """
    models = options.get("model") or []
    given = [name for name, values in options.items() if values and name != "model"]
    if models:
        units: list[dict[str, Any]] = [{"model": model} for model in models]
    elif restored and options.get("image"):
        units = [dict(unit) for unit in restored]
    elif restored:
        names = ", ".join(f"{u['model']} ({u.get('module', 'none')})" for u in restored)
        return None, (f"note: {from_png} names ControlNet unit(s) {names}, not restored: a PNG holds no control "
                      "image; pass each with --control IMAGE (in order) to use them")
    elif given:
        raise InvalidRequest("--control options need --control-model NAME, once per unit (see `guardforge models "
                             "list --kind controlnet`)")
    else:
        return None, None
    count = len(units)
    for field, values in options.items():
        if field == "model":
            continue
        for unit, value in zip(units, _per_unit(values, count, FLAGS[field]), strict=True):
            if value is None:
                continue
            if field == "image":
                unit["image"] = _image(value)
            elif field == "control_mode":
                unit[field] = _named(value, CONTROL_MODES, _MODE_WORDS, "--control-mode")
            elif field == "resize_mode":
                unit[field] = _named(value, RESIZE_MODES, _RESIZE_WORDS, "--control-resize")
            else:
                unit[field] = value
    return units, None
