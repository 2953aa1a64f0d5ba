"""`guardforge eval dreambooth`: the DreamBooth prior-preservation study on tiny-shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardforge.cli import eval_app


@eval_app.command("dreambooth")
def eval_dreambooth_command(
    steps: Annotated[int, typer.Option(min=1, help="DreamBooth steps per arm.")] = 300,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 2e-4,
    class_images: Annotated[int, typer.Option(min=1, help="Class images for prior preservation.")] = 50,
    samples: Annotated[int, typer.Option(min=2, help="Samples per prompt group.")] = 32,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    work_dir: Annotated[Path, typer.Option(help="Instance/class images, checkpoints and the two trained "
                                                "models (in <work-dir>/models).")] = Path("runs/dreambooth-study"),
    out: Annotated[Path, typer.Option(help="Folder for the sample grids.")] = Path("outputs/dreambooth-study"),
) -> None:
    """Teach tiny-shapes a shape it never saw (a red heart, 'a sks shape'), with and without prior preservation.

    Prints subject fidelity, prompt fidelity on recontextualised prompts, PRES (class samples turned into the
    subject) and DIV (sample diversity) for the base model and both arms, as in the DreamBooth paper's Table 3.
    """
    import torch

    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from guardforge.train.shapes.dreambooth_study import StudyOptions, run_study

    torch.set_num_threads(threads)
    # Its own models folder: the study's models are measurements, not something to offer in the user's list.
    studio = Studio(Settings(models_dir=work_dir / "models"))
    options = StudyOptions(steps=steps, learning_rate=learning_rate, num_class_images=class_images,
                           samples=samples, seed=seed)
    typer.echo(f"subject: {options.subject_colour} {options.subject_shape} as {options.instance_prompt!r}, "
               f"class prompt {options.class_prompt!r}; {steps} steps, lr {learning_rate:g}, "
               f"{class_images} class images, {samples} samples per group")
    results = run_study(studio, options, work_dir, grid_dir=out)
    header = ["arm", "subject", "subject+colour", "prompt", "recontext subject", "PRES", "DIV", "final loss"]
    typer.echo(f"{header[0]:<24}" + "".join(f"{h:>18}" for h in header[1:]))
    for result in results:
        row = result.row()
        typer.echo(f"{row['arm']:<24}" + "".join(f"{'-' if row[h] is None else format(row[h], '.3f'):>18}"
                                                 for h in header[1:]))
    for result in results:
        for grid in result.grids:
            typer.echo(f"grid: {grid}")
