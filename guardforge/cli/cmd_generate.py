"""`guardforge generate` (one request through Studio.generate, with a progress bar) and `guardforge info`."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import typer

from guardforge.cli import app
from guardforge.errors import InvalidRequest

_SECRET_KEYS = re.compile(r"key|secret|password|token", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]+@")


def _read_b64(path: Path, what: str) -> str:
    if not path.is_file():
        raise InvalidRequest(f"{what} {path} is not a file")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _base_fields(from_png: Path | None) -> dict[str, Any]:
    if from_png is None:
        return {}
    from guardforge.engine.infotext import fields_from_infotext
    from guardforge.storage.outputs import read_infotext

    if not from_png.is_file():
        raise InvalidRequest(f"--from-png {from_png} is not a file")
    try:
        text = read_infotext(from_png)
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InvalidRequest(f"--from-png {from_png} is not a readable PNG, JPEG or WebP image: {exc}") from None
    if not text:
        raise InvalidRequest(f"{from_png} carries no generation parameters (no PNG `parameters` text or EXIF comment)")
    return fields_from_infotext(text)


# The option that overrides each field an infotext can give, to name in an error about the image's value.
_OPTION_FOR = {
    "prompt": "PROMPT", "negative_prompt": "--negative", "model": "--model", "vae": "--vae", "sampler": "--sampler",
    "schedule": "--schedule", "steps": "--steps", "cfg_scale": "--cfg", "seed": "--seed", "width": "--width",
    "height": "--height", "denoising_strength": "--strength", "mask_blur": "--mask-blur",
    "inpainting_mask_invert": "--invert-mask", "clip_skip": "--clip-skip",
    "refiner": "--refiner/--refiner-switch-at",
}


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
    prompt: str = typer.Argument(None, help="The prompt; A1111 syntax: (word:1.2), [word], <lora:name:0.8>"),
    negative: str = typer.Option(None, "--negative", "-n", help="Negative prompt"),
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
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default: settings outputs_dir)"),
    from_png: Path = typer.Option(None, "--from-png", help="Start from an image's infotext; options given override"),
    refiner: str = typer.Option(None, "--refiner", help="A checkpoint that finishes the image (SDXL refiner); "
                                "None: no refiner, also where --from-png's image had one"),
    refiner_switch_at: float = typer.Option(None, "--refiner-switch-at",
                                            help="Fraction of the steps after which the refiner takes over (0.8)"),
) -> None:
    """Generate images; prints where each was saved, its seed and the guard's action."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from guardforge.settings import Settings
    from guardforge.studio import Studio

    fields = _base_fields(from_png)
    given: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative, "model": model, "vae": vae, "sampler": sampler,
        "schedule": schedule,
        "steps": steps, "cfg_scale": cfg, "seed": seed, "width": width, "height": height,
        "batch_size": batch_size, "n_iter": n_iter, "denoising_strength": strength, "mask_blur": mask_blur,
        "inpainting_mask_invert": invert_mask, "clip_skip": clip_skip,
        "init_image": _read_b64(init_image, "--init-image") if init_image else None,
        "mask": _read_b64(mask, "--mask") if mask else None,
    }
    if refiner is not None and refiner.strip().lower() == "none":
        fields.pop("refiner", None)
    elif refiner is not None or refiner_switch_at is not None:
        given["refiner"] = _refiner_fields(fields.get("refiner"), refiner, refiner_switch_at)
    given = {k: v for k, v in given.items() if v is not None}
    from_image = set(fields) - set(given)
    fields.update(given)
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
