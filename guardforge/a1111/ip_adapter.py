"""sd-webui-controlnet's IP-Adapter units: a unit in `alwayson_scripts.controlnet.args` whose module is one of its
ip-adapter_* preprocessors is the request's `ip_adapter` here (engine/ip_adapter.py), its model an adapter in
models/ipadapter/, its weight the scale."""

from __future__ import annotations

from typing import Any

from guardforge.a1111.controlnet import _NO_EFFECT, _image_and_mask
from guardforge.engine.ip_adapter import is_ip_adapter_module
from guardforge.errors import InvalidRequest

# sd-webui-controlnet's IP-Adapter preprocessors that run here: which CLIP vision encoder to read the image with.
# guardforge takes the encoder whose width fits the adapter, so they all mean "the fitting encoder".
IP_ADAPTER_MODULES = ("ip-adapter-auto", "ip-adapter_clip_h", "ip-adapter_clip_g", "ip-adapter_clip_sd15",
                      "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith")
# Unit fields an IP-Adapter unit reads, and those that mean nothing to one (the CLIP image processor sizes the
# image itself; the ip-adapter modules have no sliders): clients such as webuiapi send them all.
_READ = {"enabled", "model", "image", "input_image", "module", "weight", "processor_res", "threshold_a",
         "threshold_b", "resize_mode", "pixel_perfect"}
# What sd-webui-controlnet would do with the rest at these values is what happens here; other values are reported.
_DEFAULTS = {"guidance_start": 0.0, "guidance_end": 1.0, "control_mode": (0, "Balanced"), "guess_mode": False}


def split_ip_adapter(alwayson_scripts: Any, init_image: str | None = None
                     ) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """`alwayson_scripts` with its enabled IP-Adapter unit disabled (so the ControlNet units keep their indexes),
    the ip_adapter fields that unit asks for (None: none), and what of it has no effect. A unit without an image
    reads `init_image` (img2img's), as sd-webui-controlnet's units do."""
    if not isinstance(alwayson_scripts, dict):
        return alwayson_scripts, None, []
    name = next((k for k in alwayson_scripts if k.lower() == "controlnet"), None)
    script = alwayson_scripts.get(name) if name else None
    args = script.get("args") if isinstance(script, dict) else script
    if not isinstance(args, list):
        return alwayson_scripts, None, []
    found: dict[str, Any] | None = None
    ignored: list[str] = []
    rest = list(args)
    for index, arg in enumerate(args):
        if not (isinstance(arg, dict) and arg.get("enabled", True) and is_ip_adapter_module(arg.get("module"))):
            continue
        where = f"alwayson_scripts.controlnet.args[{index}]"
        if str(arg.get("model") or "None").strip().lower() == "none":
            ignored.append(f"{where} (model None)")
            rest[index] = {"enabled": False}
            continue
        if found is not None:
            raise InvalidRequest(f"{where}: one IP-Adapter unit per request runs here; this is the second")
        module = str(arg["module"]).strip()
        if any(word in module.lower() for word in ("face_id", "faceid", "pulid", "instantid")):
            raise InvalidRequest(f"{where}.module {module!r}: the FaceID, PuLID and InstantID adapters do not run "
                                 f"here; the image-prompt ones do ({', '.join(IP_ADAPTER_MODULES)})")
        image, _ = _image_and_mask(arg.get("image", arg.get("input_image")))
        image = image or init_image
        if not image:
            raise InvalidRequest(f"{where}: an IP-Adapter unit needs its own image in txt2img (the picture to draw "
                                 "from); in img2img it reads the init image")
        found = {"image": image, "model": str(arg["model"]), "module": module}
        if arg.get("weight") is not None:
            found["scale"] = arg["weight"]
        for key, value in arg.items():
            default = _DEFAULTS.get(key, ...)
            at_default = default is not ... and (value in default if isinstance(default, tuple) else value == default)
            if key in _READ or key in _NO_EFFECT or at_default:
                continue
            if value not in (None, False, 0, "", [], {}):
                ignored.append(f"{where}.{key}")
        rest[index] = {"enabled": False}
    if found is None and not ignored:
        return alwayson_scripts, None, []
    rebuilt = dict(script, args=rest) if isinstance(script, dict) else rest
    return {**alwayson_scripts, name: rebuilt}, found, ignored
