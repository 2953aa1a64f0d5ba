"""`guardforge guard check|backends|policy`: check text and images, list backends, show the policy in force."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from guardforge.cli import guard_app


def _settings():
    from guardforge.settings import Settings

    return Settings()


def _row(kind: str, source: str, verdict) -> dict:
    return {
        "input": source, "type": kind, "flagged": verdict.flagged, "categories": verdict.violated,
        "scores": {code: round(score, 6) for code, score in verdict.scores.items()},
        "unsafe": verdict.unsafe, "action": verdict.action, "backend": verdict.backend,
        "latency_ms": round(verdict.latency_ms, 2), "labels_only": verdict.labels_only, "error": verdict.error,
    }


@guard_app.command("check")
def check(
    texts: list[str] = typer.Argument(None, help="Prompts to check."),
    image: list[Path] = typer.Option([], "--image", "-i", help="An image file to check (repeatable)."),
    file: Path = typer.Option(None, "--file", "-f", help="A text file with one prompt per line."),
    as_output: bool = typer.Option(False, "--as-output", help="Judge images as generated outputs (blur applies)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per input."),
) -> None:
    """Check prompts and images against the policy in force; prints the verdict of each."""
    from PIL import Image

    from guardforge.errors import InvalidRequest
    from guardforge.guard.service import Guard

    prompts = list(texts or [])
    if file is not None:
        prompts += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts and not image:
        raise InvalidRequest("nothing to check: give TEXT arguments, --file or --image")
    loaded = []
    for path in image:
        with Image.open(path) as opened:
            loaded.append(opened.convert("RGB"))

    # The guard alone, as Studio builds it: checking needs no engine, model registry or job queue.
    guard = Guard.from_settings(_settings())
    rows = [_row("text", text, v) for text, v in zip(prompts, guard.check_texts(prompts, "prompt"))]
    checkpoint = "output_image" if as_output else "input_image"
    rows += [_row("image", str(path), v) for path, v in zip(image, guard.check_images(loaded, checkpoint))]
    guard.close()

    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"guard verdicts (policy {guard.policy.name})", title_justify="left")
    for column in ("input", "action", "categories", "top scores", "backend", "ms"):
        table.add_column(column, overflow="fold")
    for row in rows:
        top = sorted(row["scores"].items(), key=lambda kv: -kv[1])[:3]
        detail = row["error"] or ", ".join(f"{code} {score:.2f}" for code, score in top)
        table.add_row(row["input"][:60], row["action"], ",".join(row["categories"]) or "-", detail,
                      row["backend"], f"{row['latency_ms']:.0f}")
    Console().print(table)


@guard_app.command("backends")
def backends() -> None:
    """List the guard backends: what each checks, and whether it can run here."""
    from rich.console import Console
    from rich.table import Table

    from guardforge.guard.registry import BACKENDS, availability

    settings = _settings()
    table = Table(title="guard backends", title_justify="left")
    for column in ("name", "modality", "categories covered", "availability", "in use for"):
        table.add_column(column, overflow="fold")
    for info in BACKENDS:
        used = [m for m, name in (("text", settings.guard.text_backend), ("image", settings.guard.image_backend))
                if name == info.name]
        table.add_row(info.name, ", ".join(info.modalities), info.covers, availability(info, settings),
                      ", ".join(used) or "-")
    console = Console()
    console.print(table)
    console.print("Note: the embedded image backend covers S12 (sexual content) only; for violence or "
                  "weapons in images use shieldgemma2 or llama-guard (Llama Guard 4).")


@guard_app.command("policy")
def policy(name: str = typer.Argument(None, help="A shipped policy (default, permissive, off) or a YAML path; "
                                                  "the one in force if left out.")) -> None:
    """Print a policy: thresholds and actions per category, checkpoints, fail mode, hash."""
    from rich.console import Console
    from rich.table import Table

    from guardforge.guard.policy import load_policy

    chosen = name or _settings().guard.policy
    loaded = load_policy(chosen)
    console = Console()
    console.print(f"policy [bold]{loaded.name}[/bold] ({chosen}): {loaded.description}")
    on = [c for c, enabled in loaded.checkpoints.model_dump().items() if enabled]
    console.print(f"checkpoints on: {', '.join(on) or 'none (guard off)'}; fail mode: {loaded.fail_mode}; "
                  f"sha256 {loaded.hash[:16]}")
    table = Table(title_justify="left")
    for column in ("code", "name", "threshold", "action", "by checkpoint"):
        table.add_column(column)
    taxonomy = loaded.taxonomy
    for category in taxonomy.active:
        rule = loaded.rule(category.code)
        table.add_row(category.code, category.name + (" (custom)" if category.custom else ""),
                      f"{rule.threshold:g}", rule.action, ", ".join(f"{k}: {v}" for k, v in rule.at.items()) or "")
    for code in taxonomy.excluded:
        table.add_row(code, taxonomy.get(code).name, "-", "excluded", "")
    if loaded.overall is not None:
        threshold = loaded.overall.threshold
        table.add_row("unsafe", "overall P(unsafe), no category named",
                      "model's own" if threshold == "model" else f"{threshold:g}", loaded.overall.action, "")
    console.print(table)
