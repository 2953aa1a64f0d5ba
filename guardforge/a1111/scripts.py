"""A1111's scripts API on guardforge's scripts: /sdapi/v1/scripts and script-info, and a payload's `script_name`,
`script_args` and `alwayson_scripts` as a request's `scripts` (sd-webui-controlnet's units stay with
a1111/controlnet.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from guardforge.engine.outpaint import POOR_MANS_OUTPAINTING, SIDES
from guardforge.errors import InvalidRequest

CONTROLNET = "controlnet"  # sd-webui-controlnet's always-on script, translated by a1111/controlnet.py


class ScriptArg(BaseModel):
    """A1111's ScriptArg: one argument as its UI shows it."""

    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    """A1111's ScriptInfo: one script of one tab (a script on both tabs is listed twice, as A1111 lists it)."""

    name: str = Field(..., description="How script_name or alwayson_scripts names it (its title, lower case)")
    is_alwayson: bool
    is_img2img: bool
    args: list[ScriptArg] = Field(..., description="Its arguments in script_args / alwayson_scripts.*.args order")


# Poor man's outpainting, as adapter.outpaint_script reads its script_args.
_OUTPAINT_ARGS = [ScriptArg(label="Pixels to expand", value=128, minimum=8, maximum=256, step=8),
                  ScriptArg(label="Mask blur", value=4, minimum=0, maximum=64, step=1),
                  ScriptArg(label="Masked content", value=0, choices=["fill", "original", "latent noise",
                                                                      "latent nothing"]),
                  ScriptArg(label="Outpainting direction", value=list(SIDES), choices=list(SIDES))]


def scripts_listed(scripts: list) -> dict[str, list[str]]:
    """/sdapi/v1/scripts: poor man's outpainting (img2img), controlnet (clients look for it to tell whether
    sd-webui-controlnet is installed), then the installed scripts of each tab by A1111 name (the X/Y/Z plot is
    one: scripts/xyz_plot.py)."""
    def names(mode: str) -> list[str]:
        return [script.title.lower() for script in scripts if script.serves(mode)]

    return {"txt2img": [CONTROLNET, *names("txt2img")],
            "img2img": [POOR_MANS_OUTPAINTING, CONTROLNET, *names("img2img")]}


def script_info(scripts: list) -> list[ScriptInfo]:
    """/sdapi/v1/script-info: each script of each tab with its arguments, txt2img's first, as A1111 answers."""
    infos = []
    for mode in ("txt2img", "img2img"):
        img2img = mode == "img2img"
        if img2img:
            infos.append(ScriptInfo(name=POOR_MANS_OUTPAINTING, is_alwayson=False, is_img2img=True,
                                    args=_OUTPAINT_ARGS))
        infos.append(ScriptInfo(name=CONTROLNET, is_alwayson=True, is_img2img=img2img, args=[]))
        infos += [ScriptInfo(name=script.title.lower(), is_alwayson=script.alwayson, is_img2img=img2img,
                             args=[ScriptArg(**arg) for arg in script.arg_infos(mode)])
                  for script in scripts if script.serves(mode)]
    return infos


def scripts_from_payload(alwayson_scripts: Any, script_name: str | None, script_args: list[Any] | None,
                         img2img: bool = False) -> tuple[dict[str, Any], Any]:
    """A request's `scripts` from a payload's `alwayson_scripts` (each `{"args": [...]}`) and its selected
    `script_name` with `script_args`; and what stays of alwayson_scripts for the ControlNet translation. Which
    names are installed and whether the args fit is the Studio's to say (422 with the reason)."""
    scripts: dict[str, Any] = {}
    rest = alwayson_scripts
    if isinstance(alwayson_scripts, dict):
        rest = {name: value for name, value in alwayson_scripts.items() if str(name).lower() == CONTROLNET}
        for name, value in alwayson_scripts.items():
            if str(name).lower() == CONTROLNET:
                continue
            if not isinstance(value, dict) or not isinstance(value.get("args", []), (list, dict)):
                raise InvalidRequest(f"alwayson_scripts.{name} must be an object {{\"args\": [...]}}, as A1111 "
                                     "takes it")
            scripts[str(name)] = value.get("args", [])
    if script_name is not None and not isinstance(script_name, str):
        raise InvalidRequest(f"script_name must be a script's name (GET /sdapi/v1/scripts), not {script_name!r}")
    if script_args is not None and not isinstance(script_args, list):
        raise InvalidRequest("script_args must be a list, in the order /sdapi/v1/script-info gives the args")
    if not img2img and (script_name or "").strip().lower() == POOR_MANS_OUTPAINTING:
        raise InvalidRequest(f"{POOR_MANS_OUTPAINTING!r} is an img2img script: send it to /sdapi/v1/img2img with "
                             "the image to extend")
    if script_name and script_name.strip() and script_name.strip().lower() != POOR_MANS_OUTPAINTING:
        if str(script_name).strip() in scripts:
            raise InvalidRequest(f"script {script_name!r} is both script_name and in alwayson_scripts")
        scripts[script_name.strip()] = list(script_args or [])
    return scripts, rest


def check_script_fields(payload: Any, registry) -> None:
    """InvalidRequest, as A1111 answers, for a script of `registry` (guardforge.scripts.ScriptRegistry) sent in the
    field that is not its kind's: a selectable one in `alwayson_scripts` (it runs as script_name), an always-on one
    as `script_name`."""
    extra = payload.model_extra or {}
    alwayson = extra.get("alwayson_scripts", getattr(payload, "alwayson_scripts", None))
    selected = getattr(payload, "script_name", None) or extra.get("script_name")
    for name in alwayson if isinstance(alwayson, dict) else ():
        script = registry.lookup(name)
        if script is not None and not script.alwayson:
            raise InvalidRequest(f"script {name!r} is a selectable script: send it as script_name with its "
                                 "script_args, not in alwayson_scripts")
    if isinstance(selected, str) and (script := registry.lookup(selected)) is not None and script.alwayson:
        raise InvalidRequest(f"script {selected!r} is an always-on script: send its args in "
                             f"alwayson_scripts.{script.title.lower()}.args, not as script_name")
