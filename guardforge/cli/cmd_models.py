"""`guardforge models list|hash`: what is in the models folder and the package, and A1111 hashes."""

from __future__ import annotations

import typer

from guardforge.cli import models_app

KINDS = ("checkpoint", "lora", "vae", "controlnet", "embedding", "upscaler", "ipadapter", "clip_vision")


def _registry():
    # The registry alone, as Studio builds it: listing files needs no guard, engine or database.
    from guardforge.models.registry import ModelRegistry
    from guardforge.settings import Settings

    return ModelRegistry(Settings())


def _kind(value: str | None) -> str | None:
    if value is not None and value not in KINDS:
        from guardforge.errors import InvalidRequest

        raise InvalidRequest(f"--kind {value!r} is not one of {', '.join(KINDS)}")
    return value


@models_app.command("list")
def list_models(kind: str = typer.Option(None, "--kind", "-k",
                                         help="checkpoint, lora, vae, controlnet, embedding, upscaler, ipadapter or clip_vision"),
                ) -> None:
    """List models: name, kind, family, format, source, short hash (if computed), path."""
    from rich.console import Console
    from rich.table import Table

    registry = _registry()
    entries = registry.list(_kind(kind))
    table = Table(title=f"models in {registry.root}", title_justify="left")
    for column in ("name", "kind", "family", "format", "source", "hash"):
        table.add_column(column, no_wrap=column != "name")
    table.add_column("path", overflow="fold")
    for e in entries:
        fmt = e.format + (" (pickle)" if e.is_pickle else "")
        table.add_row(e.name, e.kind, e.family, fmt, e.source, e.short_hash_if_known or "-", str(e.path))
    console = Console()
    if not entries:
        from guardforge.models.registry import KIND_FOLDERS, MORE_KIND_FOLDERS

        wanted = kind or "checkpoint"
        folders = " or ".join(str(registry.root / f)
                              for f in (KIND_FOLDERS[wanted], *MORE_KIND_FOLDERS.get(wanted, ())))
        # Lanczos and Nearest need no file: say so, or "no models" reads as "no upscaling".
        built_in = " (Lanczos and Nearest are built in: `guardforge upscale --help`)" if wanted == "upscaler" else ""
        console.print(f"no models; put {wanted}s in {folders}{built_in}")
        return
    console.print(table)


@models_app.command("hash")
def hash_model(name: str = typer.Argument(..., help="Model name, file name or known short hash"),
               kind: str = typer.Option("checkpoint", "--kind", "-k",
                                        help="checkpoint, lora, vae, controlnet, embedding, upscaler, ipadapter or clip_vision"),
               ) -> None:
    """Compute (once; then cached) a model's SHA-256 and print it with A1111's 10-digit short hash."""
    entry = _registry().resolve(name, kind=_kind(kind))
    typer.echo(f"{entry.sha256()}  {entry.short_hash()}  {entry.name}")
