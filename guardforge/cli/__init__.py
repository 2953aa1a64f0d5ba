"""The `guardforge` command: a Typer app whose commands each parse, call one Studio method, and format."""

from __future__ import annotations

import os
import sys

import typer
from pydantic import ValidationError

from guardforge.errors import GuardforgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="guardforge: a local image-generation studio with a content-safety guard.")

# Command groups; the cmd_* modules add their commands to these.
models_app = typer.Typer(no_args_is_help=True, help="List and manage models.")
guard_app = typer.Typer(no_args_is_help=True, help="Check text and images with the guard.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure the guard and the models.")
train_app = typer.Typer(no_args_is_help=True, help="Train models (DreamBooth).")
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys.")
jobs_app = typer.Typer(no_args_is_help=True, help="Manage the server's job history.")
for _name, _group in (("models", models_app), ("guard", guard_app), ("eval", eval_app),
                      ("train", train_app), ("keys", keys_app), ("jobs", jobs_app)):
    app.add_typer(_group, name=_name)


def _register() -> None:
    # Each command group lives in its own module; importing registers it on `app`.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{module.name}")


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "input"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _quiet_libraries() -> None:
    """A terminal user sees our lines, not loading bars (unless HF_HUB_DISABLE_PROGRESS_BARS says otherwise), and
    not transformers' notice that it falls back to PIL image processors: guardforge runs without torchvision on
    purpose. Every other library warning (a missing weight, a truncated prompt) still reaches the terminal."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision (not installed)" not in record.getMessage())


def main() -> None:
    _register()
    run(app)


def run(command_app: typer.Typer) -> None:
    """Run a Typer app as the `guardforge` command runs: library noise quieted, and every error one line with
    the command's exit code, never a traceback. The asset builders (guardforge_build) run through it too."""
    _quiet_libraries()
    try:
        # Outside standalone mode typer hands back, instead of exiting with, the code of a typer.Exit (a blocked
        # generation's 1) and of Ctrl-C inside a command, which it has already turned into Exit(130).
        code = command_app(standalone_mode=False)
    except GuardforgeError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except ValidationError as exc:
        typer.secho(f"error: {_one_line(exc)}", err=True, fg="red")
        sys.exit(2)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc.strerror}: {exc.filename}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a command (typer catches it inside one)
        _interrupted()
    except typer.Abort:  # EOF at a prompt: click's message and code
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except typer.TyperException as exc:
        # typer 0.29 raises its own copy of click's exceptions (typer._click), not the click package's.
        # Usage errors show click's usage line, hint and message and exit 2; a group run without a command
        # raises NoArgsIsHelpError, whose message is the group's help and whose show() prints just that.
        if exc.format_message():
            show = getattr(exc, "show", None)
            if show is not None:
                show()
            else:
                typer.secho(f"Error: {exc.format_message()}", err=True, fg="red")
        sys.exit(exc.exit_code)
    except Exception as exc:  # anything unexpected: one line, never a traceback
        typer.secho(f"error: {type(exc).__name__}: {exc}", err=True, fg="red")
        sys.exit(1)
    # A command that returns normally gives None (exit 0); only an int is a typer.Exit's code.
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == 130:  # SIGINT's conventional code: typer's rendering of KeyboardInterrupt
            _interrupted()
        sys.exit(code)


def _interrupted() -> None:
    typer.secho("interrupted", err=True, fg="red")
    sys.exit(130)
