"""`python -m guardforge_build.train_tiny_shapes_controlnet CONFIG [--resume]`: train tiny-shapes' canny ControlNet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def train_tiny_shapes_controlnet_command(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/tiny-shapes-controlnet.yaml")],
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train a canny ControlNet on the frozen tiny-shapes pipeline and export it as a diffusers folder."""
    from guardforge_build.shapes.controlnet import ControlNetTrainConfig, train_controlnet

    report = train_controlnet(ControlNetTrainConfig.from_yaml(config), resume=resume)
    for key, value in report.items():
        typer.echo(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    from guardforge.cli import run

    run(app)
