"""`python -m guardforge_build.train_tiny_shapes CONFIG [--resume] [--stage S]`: train tiny-shapes and export it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def train_tiny_shapes_command(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/tiny-shapes.yaml")],
    resume: Annotated[bool, typer.Option(help="Continue each stage from its last checkpoint.")] = False,
    stage: Annotated[list[str] | None, typer.Option(
        help="Run only these stages (repeatable): vae, unet, decoder, sample-decoder, export. "
             "Default: all, in that order.")] = None,
) -> None:
    """Train the embedded default model (VAE, UNet + text encoder, two decoder stages) and export it."""
    from guardforge_build.shapes.config import ShapesTrainConfig
    from guardforge_build.shapes.train import STAGES, train_tiny_shapes

    unknown = set(stage or ()) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    stages = tuple(s for s in STAGES if s in stage) if stage else STAGES
    report = train_tiny_shapes(ShapesTrainConfig.from_yaml(config), resume=resume, stages=stages)
    for key, value in report.items():
        typer.echo(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    from guardforge.cli import run

    run(app)
