"""`guardforge guard check|backends|policy`: check text and images, list backends, show the policy in force."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import typer

from guardforge.cli import guard_app


def _settings():
    from guardforge.settings import Settings

    return Settings()


def _row(kind: str, source: str, verdict, note: str | None = None) -> dict:
    return {
        "input": source, "type": kind, "flagged": verdict.flagged, "categories": verdict.violated,
        "scores": {code: round(score, 6) for code, score in verdict.scores.items()},
        "unsafe": verdict.unsafe, "action": verdict.action, "backend": verdict.backend,
        "latency_ms": round(verdict.latency_ms, 2), "labels_only": verdict.labels_only, "error": verdict.error,
        "reason": verdict.reason or note,
    }


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _lines(path: Path) -> Iterator[str]:
    """The file's prompts, one per non-blank line, read as it goes: a file of any length takes no memory."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.strip()


class _Rows:
    """Prints rows as they come: JSON lines, or a table whose columns keep one width from chunk to chunk.
    Everything goes through sys.stdout as it is at that moment: while a progress bar shows on the same terminal,
    rich has put a proxy there that prints above the bar."""

    def __init__(self, as_json: bool, title: str):
        self.as_json, self.title, self.first = as_json, title, True
        self.widths: dict[str, int] = {}

    def _columns(self, width: int) -> dict[str, int]:
        # Set once from the terminal's width, so that every chunk's table lines up with the first.
        fixed = {"action": 6, "categories": 10, "backend": 10, "ms": 5}
        free = max(30, width - sum(fixed.values()) - 3 * 6)  # 6 columns with their padding and rule
        return {"input": free // 2, **{k: fixed[k] for k in ("action", "categories")},
                "top scores": free - free // 2, **{k: fixed[k] for k in ("backend", "ms")}}

    def write(self, rows: list[dict]) -> None:
        if self.as_json:
            sys.stdout.write("".join(json.dumps(row) + "\n" for row in rows))
        elif rows:
            from rich import box
            from rich.console import Console
            from rich.table import Table

            # Rows are user text: no markup ("[sofa]") or emoji codes ("<lora:x:0.5>") may be read in them.
            console = Console(markup=False, emoji=False, highlight=False)
            self.widths = self.widths or self._columns(console.width)
            table = Table(title=self.title if self.first else None, title_justify="left", box=box.SIMPLE_HEAD,
                          show_header=self.first, show_edge=False)
            for column, width in self.widths.items():
                table.add_column(column, width=width, overflow="fold", justify="right" if column == "ms" else "left")
            for row in rows:
                top = sorted(row["scores"].items(), key=lambda kv: -kv[1])[:3]
                detail = row["error"] or ", ".join(f"{code} {score:.2f}" for code, score in top)
                if row["reason"]:
                    detail += f" ({row['reason']})"
                table.add_row(row["input"][:60], row["action"], ",".join(row["categories"]) or "-", detail,
                              row["backend"], f"{row['latency_ms']:.0f}")
            with console.capture() as captured:  # a Console writes past rich's stdout proxy; sys.stdout does not
                console.print(table)
            sys.stdout.write(captured.get())
            self.first = False
        sys.stdout.flush()


def _progress():
    """A progress bar on stderr, only when stderr is a terminal (so logs and pipes get none). When stdout is the
    terminal too, what is printed meanwhile goes above the bar; when stdout is a file or a pipe, it is untouched."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True)
    if not console.is_terminal:
        return nullcontext(None)
    return Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True,
                    redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)


@guard_app.command("check")
def check(
    texts: list[str] = typer.Argument(None, help="Prompts to check."),
    negative: str = typer.Option("", "--negative", "-n",
                                 help="A negative prompt, read with each prompt as generate reads it."),
    image: list[Path] = typer.Option([], "--image", "-i", help="An image file to check (repeatable)."),
    file: Path = typer.Option(None, "--file", "-f", help="A text file with one prompt per line, of any length."),
    as_output: bool = typer.Option(False, "--as-output", help="Judge images as generated outputs (blur applies)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per input."),
    chunk_size: int = typer.Option(64, "--chunk-size", min=1,
                                   help="Inputs per backend call; guard.timeout_s applies to each call."),
) -> None:
    """Check prompts and images against the policy in force, as generate reads them; prints each verdict as
    its chunk is checked (a progress bar on stderr when it is a terminal)."""
    from PIL import Image

    from guardforge.errors import InvalidRequest
    from guardforge.guard.service import Guard, PromptReading
    from guardforge.guard.windows import text_windows
    from guardforge.studio import prompt_reading

    if not texts and file is None and not image:
        raise InvalidRequest("nothing to check: give TEXT arguments, --file or --image")
    if file is not None and not file.is_file():
        raise InvalidRequest(f"--file {file}: no such file")
    for path in image:
        if not path.is_file():
            raise InvalidRequest(f"--image {path}: no such file")
    prompt_reading("", negative)  # a negative prompt the engine would refuse is refused once, here

    def reading(text: str) -> tuple[PromptReading, str | None]:
        try:
            return prompt_reading(text, negative), None
        except InvalidRequest as exc:  # one bad line of a large file must not stop the rest
            note = f"generate refuses this prompt ({exc}); checked as typed"
            return PromptReading(text, tuple(text_windows(text))), note

    def load(path: Path):
        with Image.open(path) as opened:
            return opened.convert("RGB")

    prompts = itertools.chain(texts or [], _lines(file) if file is not None else [])
    # The guard alone, as Studio builds it: checking needs no engine, model registry or job queue.
    guard = Guard.from_settings(_settings())
    rows = _Rows(as_json, f"guard verdicts (policy {guard.policy.name})")
    checkpoint = "output_image" if as_output else "input_image"
    with _progress() as bar:
        task = None
        if bar is not None:  # counting the lines is one more pass over the file, worth it for a bar with an end
            total = len(texts or []) + len(image) + (sum(1 for _ in _lines(file)) if file is not None else 0)
            task = bar.add_task("checking", total=total)
        try:
            # In chunks: each is one backend call under guard.timeout_s, and its rows are printed as it ends.
            for chunk in _chunks(prompts, chunk_size):
                pairs = [reading(text) for text in chunk]
                verdicts = guard.check_prompts([found for found, _ in pairs])
                rows.write([_row("text", text, verdict, note)
                            for text, (_, note), verdict in zip(chunk, pairs, verdicts, strict=True)])
                if task is not None:
                    bar.advance(task, len(chunk))
            for paths in _chunks(image, chunk_size):
                verdicts = guard.check_images([load(path) for path in paths], checkpoint)
                rows.write([_row("image", str(path), verdict)
                            for path, verdict in zip(paths, verdicts, strict=True)])
                if task is not None:
                    bar.advance(task, len(paths))
        finally:
            guard.close()


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
