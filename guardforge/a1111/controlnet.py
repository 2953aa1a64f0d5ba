"""sd-webui-controlnet's API on guardforge: its unit fields in `alwayson_scripts.controlnet.args`, and its routes
(/controlnet/version, model_list, module_list, detect), translated to and from Studio calls. The /sdapi/v1
payloads reach this through a1111/adapter.py; the /controlnet routes call it directly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from guardforge.engine.controlnet_preprocessors import ALIASES
from guardforge.engine.controlnet_unit import CONTROL_MODES, RESIZE_MODES
from guardforge.errors import InvalidRequest

# What sd-webui-controlnet's /controlnet/version answers; clients check it is there, some that it is >= 2.
CONTROLNET_API_VERSION = 2
# Its older spellings of the resize modes (ResizeMode's values before 1.1.2), and the ints its enum takes.
_RESIZE_ALIASES = {"scale to fit (inner fit)": "Crop and Resize", "envelope (outer fit)": "Resize and Fill",
                   "inner fit": "Crop and Resize", "outer fit": "Resize and Fill", "resize": "Just Resize"}
# Unit fields that change nothing here: sd-webui-controlnet's memory and hires-fix switches, its UI's state.
_NO_EFFECT = {"low_vram", "hr_option", "save_detected_map", "processor_res_slider", "is_ui", "input_mode",
              "batch_images", "output_dir", "loopback", "use_preview_as_input", "generated_image", "mask_image",
              "effective_region_mask", "ipadapter_input", "pulid_mode", "union_control_type", "advanced_weighting",
              "inpaint_crop_input_image", "animatediff_batch", "batch_modifiers", "batch_image_files",
              "batch_keyframe_idx", "batch_mask_dir", "image_fidelity"}


def _choice(value: Any, names: tuple[str, ...], aliases: dict[str, str], field: str, index: int) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]  # sd-webui-controlnet's enums number them in this order
    text = str(value).strip()
    for name in names:
        if text.lower() == name.lower():
            return name
    if text.lower() in aliases:
        return aliases[text.lower()]
    raise InvalidRequest(f"alwayson_scripts.controlnet.args[{index}].{field} {value!r} is not one of: "
                         f"{', '.join(names)} (or 0..{len(names) - 1})")


def _image_and_mask(value: Any) -> tuple[str | None, str | None]:
    """A unit's image as clients send it: base64 or a data URL, {"image": ..., "mask": ...} (sd-webui-controlnet
    before 1.1.4 and its UI's format), or "" / None for none."""
    if isinstance(value, dict):
        return value.get("image") or None, value.get("mask") or None
    if isinstance(value, (list, tuple)):  # a batch of images: the first, as one unit takes one
        return _image_and_mask(value[0]) if value else (None, None)
    return (value or None), None


def _with_mask(image: str, mask: str, max_pixels: int, where: str) -> str:
    """The unit's image with its mask as transparency (masked: transparent), the way the inpaint modules read
    a unit's own mask."""
    from guardforge.imaging import decode_image, encode_image

    picture = decode_image(image, max_pixels, f"{where}.image").convert("RGBA")
    masked = decode_image(mask, max_pixels, f"{where}.mask").convert("L").resize(picture.size)
    picture.putalpha(masked.point(lambda v: 0 if v > 127 else 255))
    return encode_image(picture)


def units_from_payload(alwayson_scripts: Any, max_pixels: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The ControlNetUnit fields of `alwayson_scripts`' enabled ControlNet units, and what had no effect (other
    scripts, disabled units, fields that mean nothing here)."""
    if not alwayson_scripts:
        return [], []
    if not isinstance(alwayson_scripts, dict):
        raise InvalidRequest("alwayson_scripts must be an object: {\"controlnet\": {\"args\": [unit, ...]}}")
    ignored = [f"alwayson_scripts.{name}" for name in sorted(alwayson_scripts) if name.lower() != "controlnet"]
    script = next((v for k, v in alwayson_scripts.items() if k.lower() == "controlnet"), None)
    if script is None:
        return [], ignored
    args = script.get("args", []) if isinstance(script, dict) else script
    if not isinstance(args, list):
        raise InvalidRequest("alwayson_scripts.controlnet.args must be a list of units")
    units = []
    for index, arg in enumerate(args):
        where = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(arg, dict):
            raise InvalidRequest(f"{where} must be an object with sd-webui-controlnet's unit fields (module, model, "
                                 "image, weight, ...)")
        if not arg.get("enabled", True):
            continue
        model = str(arg.get("model") or "None")
        if model.strip().lower() == "none":
            ignored.append(f"{where} (model None)")  # sd-webui-controlnet skips such a unit too
            continue
        image, mask = _image_and_mask(arg.get("image", arg.get("input_image")))
        mask = mask or arg.get("mask") or None
        unit: dict[str, Any] = {"model": model, "image": image,
                                "module": str(arg.get("module") or "none")}
        if mask and image:
            unit["image"] = (_with_mask(image, mask, max_pixels, where) if unit["module"].startswith("inpaint")
                             else image)
            if not unit["module"].startswith("inpaint"):
                ignored.append(f"{where}.mask")
        for name in ("weight", "guidance_start", "guidance_end", "pixel_perfect"):
            if arg.get(name) is not None:
                unit[name] = arg[name]
        if arg.get("processor_res") not in (None, -1):
            unit["processor_res"] = arg["processor_res"]
        for name in ("threshold_a", "threshold_b"):
            if arg.get(name) not in (None, -1):
                unit[name] = arg[name]
        mode = arg.get("control_mode", 2 if arg.get("guess_mode") else None)
        if mode is not None:
            unit["control_mode"] = _choice(mode, CONTROL_MODES, {}, "control_mode", index)
        if arg.get("resize_mode") is not None:
            unit["resize_mode"] = _choice(arg["resize_mode"], RESIZE_MODES, _RESIZE_ALIASES, "resize_mode", index)
        known = {"enabled", "model", "image", "input_image", "mask", "module", "weight", "guidance_start",
                 "guidance_end", "pixel_perfect", "processor_res", "threshold_a", "threshold_b", "control_mode",
                 "guess_mode", "resize_mode"}
        ignored += [f"{where}.{k}" for k, v in arg.items() if k not in known and k not in _NO_EFFECT
                    and v not in (None, False, 0, "", [], {})]
        units.append(unit)
    return units, ignored


# -- the /controlnet routes' shapes ----------------------------------------------------------------------------

class DetectPayload(BaseModel):
    """sd-webui-controlnet's /controlnet/detect body (both its image field names)."""

    model_config = ConfigDict(extra="allow")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # the older name, webuiapi's
    controlnet_masks: list[str | None] = Field(default_factory=list)
    controlnet_processor_res: int = Field(512, ge=-1, le=4096)
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False


class ControlNetApi:
    """sd-webui-controlnet's routes over one Studio."""

    def __init__(self, studio):
        self.studio = studio

    def settings(self) -> dict[str, int]:
        return {"control_net_unit_count": self.studio.settings.limits.max_controlnet_units}

    def model_list(self) -> dict[str, list[str]]:
        from guardforge.a1111.adapter import title

        # IP-Adapters too: sd-webui-controlnet lists them among its models (it keeps them in models/ControlNet).
        return {"model_list": [title(entry) for kind in ("controlnet", "ipadapter")
                               for entry in self.studio.models(kind)]}

    def module_list(self, alias_names: bool = False) -> dict[str, Any]:
        """The modules that run here, as sd-webui-controlnet lists them (short names, or its long aliases), with
        their sliders; and, beyond its answer, the ones that cannot run and why."""
        modules = self.studio.controlnet_modules()
        shown = [m for m in modules if m.available]

        def name(module) -> str:
            return ALIASES.get(module.name, module.name) if alias_names else module.name

        from guardforge.a1111.ip_adapter import IP_ADAPTER_MODULES

        return {
            "module_list": [name(m) for m in shown] + list(IP_ADAPTER_MODULES),
            "module_detail": {**{name(m): {"model_free": m.name == "none",
                                           "sliders": [s.as_dict() for s in m.sliders]} for m in shown},
                              **{m: {"model_free": False, "sliders": []} for m in IP_ADAPTER_MODULES}},
            "guardforge_unavailable": {name(m): m.unavailable for m in modules if not m.available},
        }

    def detect(self, payload: DetectPayload) -> dict[str, Any]:
        from guardforge.guard.blur import withheld_tile
        from guardforge.imaging import encode_image

        images = payload.controlnet_input_images or payload.controlnet_images
        if not images:
            raise InvalidRequest("controlnet_input_images is empty: send one or more base64 images")
        resolution = 512 if payload.controlnet_processor_res == -1 else payload.controlnet_processor_res
        if resolution < 64:
            raise InvalidRequest(f"controlnet_processor_res {resolution} is below 64")
        thresholds = [None if value == -1 else value
                      for value in (payload.controlnet_threshold_a, payload.controlnet_threshold_b)]
        results = self.studio.detect_control(images, payload.controlnet_module, resolution, *thresholds,
                                             masks=payload.controlnet_masks or None)
        # A withheld map's tile is square at the processor resolution: its size is not known without the map.
        encoded = [encode_image(r.image if r.image is not None else withheld_tile(resolution, resolution))
                   for r in results]
        blocked = [index for index, r in enumerate(results) if r.image is None]
        info = "Success" if not blocked else f"the guard withheld image(s) {blocked}"
        return {"images": encoded, "info": info, "guardforge": {"actions": [r.verdict.action for r in results]}}
