"""`guardforge scripts list`: the installed scripts (guardforge/scripts/), their modes and arguments."""

from __future__ import annotations

import typer

from guardforge.cli import app

scripts_app = typer.Typer(no_args_is_help=True, help="List the installed scripts (docs/scripts.md).")
app.add_typer(scripts_app, name="scripts")


@scripts_app.command("list")
def list_scripts() -> None:
    """Each script: name, title, always-on or selectable, modes; then each argument with its default and range,
    in the order A1111's positional args take them."""
    # The registry alone, as Studio builds it: listing scripts needs no guard, engine or database.
    from guardforge.scripts import ScriptRegistry
    from guardforge.scripts.base import arg_infos

    scripts = list(ScriptRegistry.from_entry_points())
    if not scripts:
        typer.echo("no scripts installed; a package declares them under the `guardforge.scripts` entry points")
        return
    for script in scripts:
        kind = "always-on" if script.alwayson else "selectable"
        typer.echo(f"{script.name}  ({script.title}, {kind}, {' and '.join(sorted(script.modes))})")
        for name, info in zip(script.Args.model_fields, arg_infos(script.Args), strict=True):
            bounds = "" if info["minimum"] is None and info["maximum"] is None else (
                f"  [{'' if info['minimum'] is None else info['minimum']}.."
                f"{'' if info['maximum'] is None else info['maximum']}]")
            choices = f"  one of: {', '.join(info['choices'])}" if info["choices"] else ""
            typer.echo(f"  {name} = {info['value']!r}{bounds}{choices}  ({info['label']})")
