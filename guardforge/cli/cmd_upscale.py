"""`guardforge upscale`: one image made larger through Studio.upscale (A1111's extras tab), guard included."""

from __future__ import annotations

import base64
from pathlib import Path

import typer

from guardforge.cli import app
from guardforge.errors import InvalidRequest


@app.command()
def upscale(
    image: Path = typer.Argument(..., help="The image to upscale (PNG, JPEG, WebP, ...)"),
    upscaler: str = typer.Option("Lanczos", "--upscaler", "-u", help="Lanczos, Nearest, or a model in the models "
                                 "folder's ESRGAN/ or RealESRGAN/ (see `guardforge models list --kind upscaler`)"),
    scale: float = typer.Option(None, "--scale", "-s", help="Scale by this factor (default 2)"),
    width: int = typer.Option(None, "--width", help="Upscale to this width (with --height) instead of --scale"),
    height: int = typer.Option(None, "--height", help="Upscale to this height (with --width)"),
    no_crop: bool = typer.Option(False, "--no-crop", help="With --width/--height: keep the aspect, covering the "
                                 "size, instead of cropping to it"),
    upscaler_2: str = typer.Option(None, "--upscaler-2", help="A second upscaler blended over the first"),
    visibility_2: float = typer.Option(0.5, "--upscaler-2-visibility", help="How much of --upscaler-2 shows"),
    output: Path = typer.Option(None, "--output", "-o", help="Output file (default: the outputs folder's "
                                "extras-images/<name>-<upscaler>.png)"),
) -> None:
    """Upscale an image; prints where the result was written and the guard's action."""
    from guardforge.engine.upscalers import UpscaleRequest
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    if not image.is_file():
        raise InvalidRequest(f"{image} is not a file")
    if scale is not None and width is not None:
        raise InvalidRequest("give --scale or --width/--height, not both")
    fields = dict(image=base64.b64encode(image.read_bytes()).decode("ascii"), upscaler=upscaler,
                  width=width, height=height, crop=not no_crop, upscaler_2=upscaler_2,
                  upscaler_2_visibility=visibility_2 if upscaler_2 else 0.0)
    if scale is not None:
        fields["scale"] = scale
    request = UpscaleRequest(**fields)
    settings = Settings()
    if output is None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in upscaler)
        output = settings.resolved_outputs_dir / "extras-images" / f"{image.stem}-{safe}.png"
    result = Studio(settings).upscale(request)
    if result.pil is None:
        verdict, which = (result.input_verdict, "input") if result.blocked else (result.verdict, "upscaled")
        categories = ", ".join(verdict.violated if verdict else []) or "policy"
        typer.secho(f"blocked by the guard: the {which} image ({categories})", err=True, fg="red")
        raise typer.Exit(1)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".png":  # with the source's infotext, as A1111's extras keep it
        output.write_bytes(result.png_bytes())
    else:
        result.pil.save(output)
    typer.echo(f"{output}  {result.width}x{result.height}  action={result.action}  ({result.elapsed_s:.1f}s)")
