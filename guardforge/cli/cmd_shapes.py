"""`guardforge train tiny-shapes CONFIG [--resume]` and `guardforge eval adherence`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardforge.cli import eval_app, train_app


@train_app.command("tiny-shapes")
def train_tiny_shapes_command(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/tiny-shapes.yaml")],
    resume: Annotated[bool, typer.Option(help="Continue each stage from its last checkpoint.")] = False,
) -> None:
    """Train the embedded default model (VAE, then UNet + text encoder) and export it."""
    from guardforge.train.text_to_image import ShapesTrainConfig, train_tiny_shapes

    report = train_tiny_shapes(ShapesTrainConfig.from_yaml(config), resume=resume)
    for key, value in report.items():
        typer.echo(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
