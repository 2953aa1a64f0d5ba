"""`guardforge keys create|list|revoke`: API keys for the server, stored hashed."""

from __future__ import annotations

import datetime

import typer

from guardforge.cli import keys_app


def _studio():
    from guardforge.studio import Studio

    return Studio()


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="Who or what the key is for"),
           max_priority: int = typer.Option(0, min=0, max=100, help="The highest job priority the key may ask "
                                            "for (higher runs first); 0 keeps it in line with everyone")) -> None:
    """Create a key and print it once; only its hash is stored."""
    key, plaintext = _studio().keys.create(name, max_priority=max_priority)
    typer.echo(plaintext)
    typer.secho(f"key {key.id} ({name}) created; store it now, it cannot be shown again", err=True)


@keys_app.command("list")
def list_keys() -> None:
    """List keys (ids and names, never the keys)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "max priority", "created", "revoked")
    for key in _studio().keys.list():
        table.add_row(key.id, key.name, str(key.max_priority), _when(key.created_at), _when(key.revoked_at))
    Console().print(table)


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id, as `keys list` shows it")) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    key = _studio().keys.revoke(key_id)
    typer.echo(f"revoked {key.id} ({key.name})")
