"""`guardforge train dreambooth CONFIG.yaml [--set key=value ...] [--resume latest|PATH]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardforge.cli import train_app


class RichProgress:
    """Renders TrainProgress events: one bar per phase, with step, losses, it/s and ETA while training."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console)
        self.tasks: dict[str, int] = {}

    def __call__(self, event) -> None:
        if event.phase in ("screening", "exporting", "done"):
            self.progress.console.print(f"[bold]{event.phase}[/] {event.message}".rstrip())
            return
        if event.phase not in self.tasks:
            self.tasks[event.phase] = self.progress.add_task(event.phase.replace("_", " "), total=event.total,
                                                             stats="")
        stats = ""
        if event.loss is not None:
            stats = f"loss {event.loss:.4f}"
            if event.prior_loss is not None:
                stats += f" (instance {event.instance_loss:.4f}, prior {event.prior_loss:.4f})"
            if event.it_per_s:
                stats += f"  {event.it_per_s:.2f} it/s"
        self.progress.update(self.tasks[event.phase], completed=event.step, total=event.total, stats=stats)


@train_app.command("dreambooth")
def dreambooth(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="DreamBooth YAML (see configs/)")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a setting: key=value, e.g. lora.rank=8")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="'latest' or a checkpoint path")] = None,
) -> None:
    """Train a subject into a model (full or LoRA) and export it into the models folder."""
    import signal
    from threading import Event

    from rich.console import Console

    from guardforge.studio import Studio
    from guardforge.train.dreambooth.config import load_config

    settings = load_config(config, overrides or [])
    console = Console()
    cancel = Event()
    reporter = RichProgress(console)
    studio = Studio()
    # Ctrl-C asks for a clean stop after the current step; the run then saves a checkpoint to resume from.
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        with reporter.progress:
            result = studio.train_dreambooth(settings, progress=reporter, cancel=cancel, resume=resume)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.rank:  # rank 0 reports for every process of the run
        return
    console.print(f"trained {result.steps} steps in {result.elapsed_s:.0f}s, final loss "
                  f"{result.final_loss:.4f}" if result.final_loss is not None else f"trained {result.steps} steps")
    for fmt, path in result.exports.items():
        console.print(f"  {fmt}: {path}")
