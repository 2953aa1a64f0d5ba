"""A1111 prompt styles: `styles.csv` files read, and a style's prompt and negative prompt merged into a request's."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from guardforge.errors import InvalidRequest

# A1111's placeholder: a style whose text holds it wraps the prompt instead of being appended to it.
PROMPT_PLACEHOLDER = "{prompt}"
# A styles file is the user's, read at every use: this bounds what one careless (or hostile) file costs.
MAX_STYLES_FILE_BYTES = 4 * 1024 * 1024


class PromptStyle(BaseModel):
    """One row of a styles file, in A1111's shape (/sdapi/v1/prompt-styles lists these)."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def styles_files(home: Path) -> list[Path]:
    """A1111's styles.csv in the home, then any extra files in <home>/styles/ (name order). A later file's style
    replaces an earlier one of the same name, as A1111's --styles-file list does."""
    extra = sorted((home / "styles").glob("*.csv")) if (home / "styles").is_dir() else []
    return [path for path in [home / "styles.csv", *extra] if path.is_file()]


def read_styles(paths: Iterable[Path]) -> dict[str, PromptStyle]:
    """The styles the files define, by name, read as A1111's load_from_csv reads them: a header row naming
    `name`, `prompt` (or the old `text`) and optionally `negative_prompt`; rows whose name is empty or starts
    with # are skipped. InvalidRequest names a file that is not such a table."""
    styles: dict[str, PromptStyle] = {}
    for path in paths:
        if path.stat().st_size > MAX_STYLES_FILE_BYTES:
            raise InvalidRequest(f"styles file {path.name} is over {MAX_STYLES_FILE_BYTES // 2**20} MiB")
        try:
            styles.update(_read_file(path))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"styles file {path.name} is not a readable CSV file: {exc}") from None
    return styles


def _read_file(path: Path) -> dict[str, PromptStyle]:
    styles: dict[str, PromptStyle] = {}
    # utf-8-sig: spreadsheet programs save a BOM, which would otherwise become part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file, skipinitialspace=True)
        columns = set(reader.fieldnames or [])
        if "name" not in columns or not columns & {"prompt", "text"}:
            raise InvalidRequest(f"styles file {path.name} needs a header row with name, prompt and "
                                 "negative_prompt columns")
        for row in reader:
            name = (row.get("name") or "").strip()
            if not name or name.startswith("#"):
                continue
            prompt = row.get("prompt") if "prompt" in columns else row.get("text")
            styles[name] = PromptStyle(name=name, prompt=prompt or "", negative_prompt=row.get("negative_prompt") or "")
    return styles


def merge_prompts(style_text: str, prompt: str) -> str:
    """A1111's merge_prompts: the style with `{prompt}` replaced by the prompt, else the two joined by ", "
    (an empty side left out)."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(styles: dict[str, PromptStyle], names: Iterable[str], prompt: str,
                 negative_prompt: str) -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles merged in, in the order named (each wraps the result of
    the ones before it). Unlike A1111, which skips a name it does not know, an unknown name is refused: the
    caller asked for text that would silently be missing from the image."""
    names = list(names)
    unknown = [name for name in names if name not in styles]
    if unknown:
        known = ", ".join(sorted(styles)) or "none: the styles file is missing or empty"
        raise InvalidRequest(f"unknown style {', '.join(repr(name) for name in unknown)}; known styles: {known}")
    for name in names:
        prompt = merge_prompts(styles[name].prompt, prompt)
        negative_prompt = merge_prompts(styles[name].negative_prompt, negative_prompt)
    return prompt, negative_prompt


def _extract_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """A1111's extract_style_text_from_prompt: the prompt before merge_prompts added `style_text`, if it did."""
    stripped, style = prompt.strip(), style_text.strip()
    if PROMPT_PLACEHOLDER in style:
        left, _, right = style.partition(PROMPT_PLACEHOLDER)
        if stripped.startswith(left) and stripped.endswith(right) and len(stripped) >= len(left) + len(right):
            return True, stripped[len(left):len(stripped) - len(right)]
        return False, prompt
    if stripped.endswith(style):
        rest = stripped[:len(stripped) - len(style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_styles(styles: dict[str, PromptStyle], prompt: str,
                   negative_prompt: str) -> tuple[list[str], str, str]:
    """A1111's extract_styles_from_prompt, for reading an infotext back: the styles whose text the prompts end
    with (or are wrapped in), peeled off last-applied first, and the prompts as they were before. Reusing the
    result (its prompts with its styles) gives the infotext's prompts again, not the styles twice."""
    found: list[str] = []
    candidates = [style for style in styles.values() if style.prompt or style.negative_prompt]
    while True:
        for style in candidates:
            matched, new_prompt = _extract_style_text(style.prompt, prompt)
            if not matched:
                continue
            matched, new_negative = _extract_style_text(style.negative_prompt, negative_prompt)
            if matched:
                prompt, negative_prompt = new_prompt, new_negative
                candidates.remove(style)
                found.append(style.name)
                break
        else:
            return list(reversed(found)), prompt, negative_prompt
