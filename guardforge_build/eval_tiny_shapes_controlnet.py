"""`python -m guardforge_build.eval_tiny_shapes_controlnet [--controlnet DIR] [--n 40]`: position control of a
tiny-shapes ControlNet through diffusers' pipeline (build time; the product path is `guardforge eval control`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
SHIPPED = Path(__file__).resolve().parent.parent / "guardforge" / "assets" / "controlnet" / "tiny-shapes-canny"


@app.command()
def eval_tiny_shapes_controlnet_command(
    controlnet: Annotated[Path, typer.Option(help="A diffusers ControlNet folder.")] = SHIPPED,
    n: Annotated[int, typer.Option(min=1)] = 40,
    steps: Annotated[int, typer.Option(min=1)] = 20,
    cfg: Annotated[float, typer.Option(min=0.0)] = 7.5,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    processor_res: Annotated[int | None, typer.Option(
        min=64, help="Make the edges at this resolution and resize them back (default: at 64x64).")] = None,
    grid: Annotated[Path | None, typer.Option(help="Write a (control | with | without) grid here.")] = None,
) -> None:
    """Generate with and without the control image, read position and shape back, print the rates."""
    import numpy as np
    import torch
    from PIL import Image

    from guardforge.train.shapes import control, data
    from guardforge_build.shapes.controlnet import canny_edges
    from guardforge_build.shapes.controlnet_eval import diffusers_generator, load_pipelines

    torch.set_num_threads(threads)
    with_control, without = control.evaluate(diffusers_generator(*load_pipelines(controlnet), steps=steps, cfg=cfg,
                                                                 processor_res=processor_res),
                                             n, seed=seed)
    for report in (with_control, without):
        typer.echo(f"{report.label:<16}" + "  ".join(
            f"{a} {report.rate(a):.1%} [{report.interval(a)[0]:.0%}-{report.interval(a)[1]:.0%}]"
            for a in control.CONTROL_ATTRIBUTES) + f"  {report.seconds / n:.3f} s/image")
    if grid is not None:
        cases = control.control_cases(n)
        edges = [Image.fromarray(canny_edges(np.asarray(data.render(c.scene)), resolution=processor_res))
                 for c in cases]
        typer.echo(f"grid: {control.save_control_grid(cases, edges, with_control, without, grid)}")


if __name__ == "__main__":
    from guardforge.cli import run

    run(app)
