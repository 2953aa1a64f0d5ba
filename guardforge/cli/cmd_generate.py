"""`guardforge generate` (one request through Studio.generate, with a progress bar) and `guardforge info`."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import typer

from guardforge.cli import app
from guardforge.cli.hires_flags import merge_hires
from guardforge.errors import InvalidRequest

_SECRET_KEYS = re.compile(r"key|secret|password|token", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]+@")


def _read_b64(path: Path, what: str) -> str:
    if not path.is_file():
        raise InvalidRequest(f"{what} {path} is not a file")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _base_fields(from_png: Path | None) -> dict[str, Any]:
    text = _png_infotext(from_png)
    if text is None:
        return {}
    from guardforge.engine.infotext import fields_from_infotext

    return fields_from_infotext(text)


def _png_infotext(from_png: Path | None) -> str | None:
    if from_png is None:
        return None
    from guardforge.storage.outputs import read_infotext

    if not from_png.is_file():
        raise InvalidRequest(f"--from-png {from_png} is not a file")
    try:
        text = read_infotext(from_png)
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InvalidRequest(f"--from-png {from_png} is not a readable PNG, JPEG or WebP image: {exc}") from None
    if not text:
        raise InvalidRequest(f"{from_png} carries no generation parameters (no PNG `parameters` text or EXIF comment)")
    return text


# The option that overrides each field an infotext can give, to name in an error about the image's value.
_OPTION_FOR = {
    "prompt": "PROMPT", "negative_prompt": "--negative", "styles": "--style", "model": "--model", "vae": "--vae",
    "sampler": "--sampler",
    "schedule": "--schedule", "steps": "--steps", "cfg_scale": "--cfg", "seed": "--seed", "width": "--width",
    "height": "--height", "denoising_strength": "--strength", "mask_blur": "--mask-blur",
    "inpainting_mask_invert": "--invert-mask", "clip_skip": "--clip-skip", "subseed": "--subseed",
    "subseed_strength": "--subseed-strength", "seed_resize_from_w": "--seed-resize-from",
    "seed_resize_from_h": "--seed-resize-from", "outpaint": "--outpaint", "inpainting_fill": "--inpainting-fill",
    "hires": "--hires-* or --no-hires", "refiner": "--refiner/--refiner-switch-at",
}


def _seed_resize(value: str | None) -> dict[str, int]:
    """--seed-resize-from WxH as the request's two fields; "off" (or 0x0) turns a PNG's value off."""
    if value is None:
        return {}
    if value.strip().lower() == "off":
        return {"seed_resize_from_w": -1, "seed_resize_from_h": -1}
    w, x, h = value.strip().lower().partition("x")
    if not x or not w.isdigit() or not h.isdigit():
        raise InvalidRequest(f"--seed-resize-from {value!r}: give WIDTHxHEIGHT in pixels, e.g. 512x512, or off")
    return {"seed_resize_from_w": int(w), "seed_resize_from_h": int(h)}


def _refiner_fields(read: dict[str, Any] | None, name: str | None, switch_at: float | None) -> dict[str, Any]:
    """The refiner an infotext gave (if any) with --refiner and --refiner-switch-at laid over it."""
    fields = {**(read or {}), **({"checkpoint": name} if name is not None else {}),
              **({"switch_at": switch_at} if switch_at is not None else {})}
    if "checkpoint" not in fields:
        raise InvalidRequest("--refiner-switch-at needs a refiner: give --refiner NAME")
    return fields


def _build_request(fields: dict[str, Any], from_image: set[str], from_png: Path | None):
    """One validation of the merged fields; a value that came from the image is named as such, with the
    option that replaces it, since the user never typed it."""
    from pydantic import ValidationError

    from guardforge.cli import _one_line
    from guardforge.engine.request import GenerationRequest

    try:
        return GenerationRequest(**fields)
    except ValidationError as exc:
        culprits = [str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["loc"][0] in from_image]
        if not culprits:
            raise
        options = ", ".join(dict.fromkeys(_OPTION_FOR.get(name, name) for name in culprits))
        raise InvalidRequest(f"{_one_line(exc)} (read from {from_png}; give {options} to override it)") from None


@app.command()
def generate(
    prompt: str = typer.Argument(None, help="The prompt; A1111 syntax: (word:1.2), \\[word], "
                                 "\\[from:to:when], \\[a|b], <lora:name:0.8>; "
                                 "dynamic prompts: {a|b}, {2$$a|b|c}, __wildcard__ (one choice per image's seed)"),
    negative: str = typer.Option(None, "--negative", "-n", help="Negative prompt"),
    style: list[str] = typer.Option(None, "--style", help="A style from styles.csv in the home, merged into the "
                                    "prompts (repeat for several, applied in order)"),
    model: str = typer.Option(None, "--model", "-m", help="Model name (see `guardforge models list`)"),
    vae: str = typer.Option(None, "--vae", help="A VAE from the models folder's VAE/ in place of the model's own "
                            "(see `guardforge models list --kind vae`); Automatic: the model's own"),
    sampler: str = typer.Option(None, help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M'"),
    schedule: str = typer.Option(None, help="Schedule type: Automatic, Karras or Exponential"),
    steps: int = typer.Option(None, help="Sampling steps"),
    cfg: float = typer.Option(None, "--cfg", help="CFG scale"),
    seed: int = typer.Option(None, help="Seed; -1 for a random one"),
    width: int = typer.Option(None, help="Width in pixels, a multiple of 8 (default: the model's native size)"),
    height: int = typer.Option(None, help="Height in pixels, a multiple of 8"),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per batch"),
    n_iter: int = typer.Option(None, "--n-iter", help="Number of batches"),
    init_image: Path = typer.Option(None, "--init-image", help="Image for img2img (or inpaint with --mask)"),
    mask: Path = typer.Option(None, help="Inpainting mask: white is repainted"),
    strength: float = typer.Option(None, "--strength", help="Denoising strength for img2img/inpaint"),
    mask_blur: int = typer.Option(None, "--mask-blur", help="Gaussian blur radius of the mask"),
    invert_mask: bool = typer.Option(None, "--invert-mask/--no-invert-mask", help="Repaint the black part instead"),
    clip_skip: int = typer.Option(None, "--clip-skip", help="Stop CLIP this many layers from the end (1: none)"),
    subseed: int = typer.Option(None, "--subseed", help="Variation seed (A1111's); -1 for a random one"),
    subseed_strength: float = typer.Option(None, "--subseed-strength",
                                           help="How far toward the variation seed's noise, 0 to 1 (0: none)"),
    seed_resize_from: str = typer.Option(None, "--seed-resize-from", help="Draw the seed's noise at WxH (as made "
                                         "at that size) and centre it in this size; off: don't"),
    outpaint: str = typer.Option(None, "--outpaint", help="Extend --init-image's canvas and paint the new area: "
                                 "SIDE=PIXELS,... with sides left, right, up, down, e.g. left=64,right=64"),
    inpainting_fill: str = typer.Option(None, "--inpainting-fill", help="What the masked (or new) area holds "
                                        "before denoising: fill, original, 'latent noise' or 'latent nothing' "
                                        "(default: original; fill when outpainting)"),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default: settings outputs_dir)"),
    from_png: Path = typer.Option(None, "--from-png", help="Start from an image's infotext; options given override"),
    hires: bool = typer.Option(None, "--hires/--no-hires", help="Hires fix: upscale the first pass and run a second "
                               "img2img pass (any --hires-* option turns it on)"),
    hires_scale: float = typer.Option(None, "--hires-scale", help="Hires fix: upscale by (default 2)"),
    hires_upscaler: str = typer.Option(None, "--hires-upscaler", help="Hires fix: Latent (default), Latent "
                                       "(bicubic), ..., Lanczos, or a model from `guardforge models list --kind "
                                       "upscaler`"),
    hires_steps: int = typer.Option(None, "--hires-steps", help="Hires fix: second-pass steps (0: as --steps)"),
    hires_strength: float = typer.Option(None, "--hires-strength", help="Hires fix: denoising strength (0.7)"),
    hires_resize_x: int = typer.Option(None, "--hires-resize-x", help="Hires fix: upscale to this width"),
    hires_resize_y: int = typer.Option(None, "--hires-resize-y", help="Hires fix: upscale to this height"),
    hires_sampler: str = typer.Option(None, "--hires-sampler", help="Hires fix: second-pass sampler"),
    hires_prompt: str = typer.Option(None, "--hires-prompt", help="Hires fix: second-pass prompt"),
    hires_negative: str = typer.Option(None, "--hires-negative", help="Hires fix: second-pass negative prompt"),
    hires_cfg: float = typer.Option(None, "--hires-cfg", help="Hires fix: second-pass CFG scale (default: --cfg)"),
    control: list[str] = typer.Option(None, "--control", help="ControlNet image, one per unit (`init`: the init "
                                      "image); repeat the --control-* options per unit, or give one for all"),
    control_model: list[str] = typer.Option(None, "--control-model", help="ControlNet model, once per unit (see "
                                            "`guardforge models list --kind controlnet`)"),
    control_module: list[str] = typer.Option(None, "--control-module", help="Preprocessor: none, canny, threshold, "
                                             "scribble_xdog, lineart_standard, tile_resample, blur_gaussian, shuffle, "
                                             "invert, inpaint_only, ..."),
    control_weight: list[float] = typer.Option(None, "--control-weight", help="Unit weight (0..2, default 1)"),
    control_start: list[float] = typer.Option(None, "--control-start", help="Guidance start (0..1)"),
    control_end: list[float] = typer.Option(None, "--control-end", help="Guidance end (0..1)"),
    control_mode: list[str] = typer.Option(None, "--control-mode", help="balanced, prompt (My prompt is more "
                                           "important) or controlnet (ControlNet is more important)"),
    control_resize: list[str] = typer.Option(None, "--control-resize", help="just, crop or fill (Just Resize, "
                                             "Crop and Resize, Resize and Fill)"),
    control_res: list[int] = typer.Option(None, "--control-res", help="Preprocessor resolution (default 512)"),
    control_threshold_a: list[float] = typer.Option(None, "--control-threshold-a", help="Preprocessor threshold A"),
    control_threshold_b: list[float] = typer.Option(None, "--control-threshold-b", help="Preprocessor threshold B"),
    refiner: str = typer.Option(None, "--refiner", help="A checkpoint that finishes the image (SDXL refiner); "
                                "None: no refiner, also where --from-png's image had one"),
    refiner_switch_at: float = typer.Option(None, "--refiner-switch-at",
                                            help="Fraction of the steps after which the refiner takes over (0.8)"),
    ip_adapter: str = typer.Option(None, "--ip-adapter", help="IP-Adapter model (see `guardforge models list --kind "
                                   "ipadapter`); needs --ip-adapter-image"),
    ip_adapter_image: Path = typer.Option(None, "--ip-adapter-image", help="The picture the IP-Adapter draws from"),
    ip_adapter_scale: float = typer.Option(None, "--ip-adapter-scale", help="IP-Adapter scale (0..2, default 1)"),
    ip_adapter_encoder: str = typer.Option(None, "--ip-adapter-encoder", help="CLIP vision encoder folder in "
                                           "models/clip_vision/ (default: the first that fits the adapter)"),
    script: list[str] = typer.Option(None, "--script", help="Run a script (see `guardforge scripts list`); "
                                     "always-on ones run anyway, with their defaults unless given args"),
    script_arg: list[str] = typer.Option(None, "--script-arg", help="A script's argument, KEY=VALUE (for the one "
                                         "--script) or NAME.KEY=VALUE, e.g. watermark.text=mine"),
) -> None:
    """Generate images; prints where each was saved, its seed and the guard's action."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from guardforge.settings import Settings
    from guardforge.studio import Studio

    fields = _base_fields(from_png)
    given: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative, "styles": style or None, "model": model, "vae": vae,
        "sampler": sampler,
        "schedule": schedule,
        "steps": steps, "cfg_scale": cfg, "seed": seed, "width": width, "height": height,
        "batch_size": batch_size, "n_iter": n_iter, "denoising_strength": strength, "mask_blur": mask_blur,
        "inpainting_mask_invert": invert_mask, "clip_skip": clip_skip, "subseed": subseed,
        "subseed_strength": subseed_strength, **_seed_resize(seed_resize_from), "outpaint": outpaint,
        "inpainting_fill": inpainting_fill,
        "init_image": _read_b64(init_image, "--init-image") if init_image else None,
        "mask": _read_b64(mask, "--mask") if mask else None,
    }
    from guardforge.cli.controlnet_options import control_units
    from guardforge.engine.controlnet import units_from_infotext
    from guardforge.engine.infotext import parse_infotext

    text = _png_infotext(from_png)
    given["controlnet"], note = control_units(
        {"image": control, "model": control_model, "module": control_module, "weight": control_weight,
         "guidance_start": control_start, "guidance_end": control_end, "control_mode": control_mode,
         "resize_mode": control_resize, "processor_res": control_res, "threshold_a": control_threshold_a,
         "threshold_b": control_threshold_b}, units_from_infotext(parse_infotext(text)) if text else [], from_png)
    if note:
        typer.secho(note, err=True, fg="yellow")
    if refiner is not None and refiner.strip().lower() == "none":
        fields.pop("refiner", None)
    elif refiner is not None or refiner_switch_at is not None:
        given["refiner"] = _refiner_fields(fields.get("refiner"), refiner, refiner_switch_at)
    from guardforge.cli.ip_adapter_options import ip_adapter_fields
    from guardforge.engine.ip_adapter import ip_adapter_from_infotext

    given["ip_adapter"], note = ip_adapter_fields(ip_adapter, ip_adapter_image, ip_adapter_scale, ip_adapter_encoder,
                                                  ip_adapter_from_infotext(parse_infotext(text)) if text else None)
    if note:
        typer.secho(note, err=True, fg="yellow")
    from guardforge.cli.script_options import script_fields

    read_scripts = None
    if text:  # each script reads back the args it ran with from the image's infotext, so it runs again
        from guardforge.scripts import ScriptRegistry

        read_scripts = ScriptRegistry.from_entry_points().args_from_infotext(parse_infotext(text))
    given["scripts"] = script_fields(script, script_arg, read_scripts)
    given = {k: v for k, v in given.items() if v is not None}
    from_image = set(fields) - set(given)
    fields.update(given)
    merge_hires(fields, hires, {
        "scale": hires_scale, "upscaler": hires_upscaler, "steps": hires_steps, "denoising_strength": hires_strength,
        "resize_x": hires_resize_x, "resize_y": hires_resize_y, "sampler": hires_sampler, "prompt": hires_prompt,
        "negative_prompt": hires_negative, "cfg_scale": hires_cfg})
    if "prompt" not in fields:
        raise InvalidRequest("give a PROMPT, or --from-png with an image made by guardforge or A1111")
    request = _build_request(fields, from_image, from_png)

    settings = Settings()
    if output is not None:
        settings = settings.model_copy(update={"outputs_dir": output})
    studio = Studio(settings)
    console = Console(stderr=True)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.2f} it/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("generating", total=None, rate=0.0)

        def on_progress(event) -> None:
            bar.update(task, total=event.total, completed=event.step, rate=event.it_per_s)

        result = studio.generate(request, on_progress=on_progress)

    if result.blocked:
        verdict = result.prompt_verdict
        categories = ", ".join(verdict.violated if verdict else []) or "policy"
        reason = f"; {verdict.reason}" if verdict and verdict.reason else ""
        typer.secho(f"blocked by the guard before generation ({categories}{reason})", err=True, fg="red")
        raise typer.Exit(1)
    for image in result.images:
        where = image.path or f"not saved ({image.action})"
        typer.echo(f"{where}  seed={image.seed}  action={image.action}")
    typer.echo(f"{len(result.images)} image(s) from {result.model} in {result.elapsed_s:.1f}s")


def _redact(value: Any) -> Any:
    """Settings without secrets: API keys out, passwords out of URLs."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEYS.search(k) and v else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def _devices() -> list[dict[str, Any]]:
    import os

    import torch

    found: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append({"device": f"cuda:{i}", "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        for i in range(torch.xpu.device_count()):
            props = torch.xpu.get_device_properties(i)
            found.append({"device": f"xpu:{i}", "name": props.name,
                          "memory_gb": round(getattr(props, "total_memory", 0) / 2**30, 1)})
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        found.append({"device": "mps", "name": "Apple Metal (MPS)",
                      "memory_gb": round(torch.mps.recommended_max_memory() / 2**30, 1)})
    memory = None
    if hasattr(os, "sysconf"):
        try:
            memory = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
        except (ValueError, OSError):
            memory = None
    import platform

    found.append({"device": "cpu", "name": platform.processor() or platform.machine(),
                  "cores": os.cpu_count(), "memory_gb": memory})
    return found


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML")) -> None:
    """Versions, devices found, and the settings in force (secrets redacted)."""
    import json
    import platform

    import diffusers
    import torch
    import transformers
    import yaml

    import guardforge
    from guardforge.models.devices import pick_device
    from guardforge.settings import Settings

    settings = Settings()
    report = {
        "versions": {"guardforge": guardforge.__version__, "python": platform.python_version(),
                     "torch": str(torch.__version__), "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "devices": _devices(),
        "device_in_use": str(pick_device(settings.device)),
        "settings": _redact(settings.model_dump(mode="json")),
    }
    typer.echo(json.dumps(report, indent=2) if as_json else yaml.safe_dump(report, sort_keys=False).rstrip())
