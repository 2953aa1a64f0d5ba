"""`guardforge grid`: an X/Y/Z plot through Studio.generate_grid, writing the labelled grid and each cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from guardforge.cli import app
from guardforge.errors import InvalidRequest


def axis_option(text: str | None, flag: str) -> dict[str, str] | None:
    """`FIELD=VALUES` (`cfg=1,4,7`, `"Prompt S/R=red,blue"`, `steps=10-30 (+10)`) as a GridAxis's fields."""
    if text is None:
        return None
    field, sep, values = text.partition("=")
    if not sep or not field.strip():
        raise InvalidRequest(f"{flag} {text!r}: give FIELD=VALUES, e.g. {flag} \"cfg=1,4,7\"")
    return {"field": field.strip(), "values": values}


@app.command()
def grid(
    prompt: str = typer.Argument(..., help="The prompt; a Prompt S/R axis's first value must appear in it"),
    x: str = typer.Option(None, "--x", help="X axis: FIELD=VALUES, e.g. \"cfg=1,4,7\", \"steps=10-30 (+10)\", "
                          "\"seed=1-10 [4]\"; FIELD: seed, subseed, subseed_strength, steps, cfg, prompt_sr, "
                          "prompt_order, sampler, schedule, model, vae, clip_skip, denoising, width, height, size, "
                          "lora_weight, hires_*, refiner*, controlnet_* or A1111's labels"),
    y: str = typer.Option(None, "--y", help="Y axis, as --x"),
    z: str = typer.Option(None, "--z", help="Z axis, as --x: one grid per value, side by side"),
    negative: str = typer.Option("", "--negative", "-n", help="Negative prompt"),
    model: str = typer.Option(None, "--model", "-m", help="Model name (see `guardforge models list`)"),
    sampler: str = typer.Option("Euler a", help="A1111 sampler name"),
    schedule: str = typer.Option("Automatic", help="Schedule type: Automatic, Karras or Exponential"),
    steps: int = typer.Option(20, help="Sampling steps"),
    cfg: float = typer.Option(7.0, "--cfg", help="CFG scale"),
    seed: int = typer.Option(-1, help="Seed; -1: one drawn for the whole grid (see --no-fixed-seeds)"),
    width: int = typer.Option(None, help="Width in pixels (default: the model's native size)"),
    height: int = typer.Option(None, help="Height in pixels"),
    clip_skip: int = typer.Option(1, "--clip-skip", help="Stop CLIP this many layers from the end (1: none)"),
    no_legend: bool = typer.Option(False, "--no-legend", help="No labels along the axes"),
    no_fixed_seeds: bool = typer.Option(False, "--no-fixed-seeds", help="Keep -1 seeds random per cell"),
    sub_grids: bool = typer.Option(False, "--sub-grids", help="Also write one grid per Z value"),
    margin: int = typer.Option(0, "--margin", help="Pixels between cells"),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default: settings outputs_dir)"),
) -> None:
    """Generate one image per combination of the axes' values and the grid that lays them out; prints where the
    grid and each cell were saved."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from guardforge.engine.request import GenerationRequest
    from guardforge.engine.xyz import GridRequest
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    fields: dict[str, Any] = dict(prompt=prompt, negative_prompt=negative, model=model, sampler=sampler,
                                  schedule=schedule, steps=steps, cfg_scale=cfg, seed=seed, width=width,
                                  height=height, clip_skip=clip_skip)
    request = GridRequest(request=GenerationRequest(**fields), x=axis_option(x, "--x"), y=axis_option(y, "--y"),
                          z=axis_option(z, "--z"), draw_legend=not no_legend, no_fixed_seeds=no_fixed_seeds,
                          include_sub_grids=sub_grids, margin_size=margin)
    settings = Settings()
    if output is not None:
        settings = settings.model_copy(update={"outputs_dir": output})
    studio = Studio(settings)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.2f} it/s"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("grid", total=None, rate=0.0)

        def on_progress(event) -> None:
            bar.update(task, total=event.total, completed=event.step, rate=event.it_per_s,
                       description=f"cell {event.batch_index + 1}")

        result = studio.generate_grid(request, on_progress=on_progress)
    for image in result.grids:
        typer.echo(f"{image.path}  grid {image.width}x{image.height}")
    for cell in result.cells:
        where = cell.image.path if cell.image is not None and cell.image.path else (
            "blocked by the guard" if cell.blocked else "not made")
        typer.echo(f"{where}  {' | '.join(label for label in cell.labels if label)}  "
                   f"seed={cell.result.seeds[0] if cell.result and cell.result.seeds else '-'}")
    blocked = sum(cell.blocked for cell in result.cells)
    typer.echo(f"{len(result.cells)} cell(s), {blocked} blocked, in {result.elapsed_s:.1f}s")
