"""Where the embedded text guard's weights are: the shipped sets by name, or a trained folder (no torch here,
so `guardforge guard backends` can check them without loading anything)."""

from __future__ import annotations

from pathlib import Path

TEXT_WEIGHTS = "text_guard.safetensors"
TEXT_CONFIG = "text_guard.json"
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets" / "guard"
# settings.guard.embedded_text_weights: `prompts` is tuned for image prompts and requests (few false alarms on
# look-alike questions), `comments` for chat and comment text (docs/guard-embedded.md says what each costs).
SHIPPED_TEXT_WEIGHTS = {"prompts": ASSETS_DIR, "comments": ASSETS_DIR.parent / "guard-comments"}


def text_weights_dir(name_or_path: str) -> Path:
    """A shipped weight set by name, or a folder written by guardforge_build/train_text_guard.py."""
    if name_or_path in SHIPPED_TEXT_WEIGHTS:
        return SHIPPED_TEXT_WEIGHTS[name_or_path]
    folder = Path(name_or_path).expanduser()
    if not (folder / TEXT_CONFIG).is_file():
        raise FileNotFoundError(f"guard.embedded_text_weights: {name_or_path!r} is neither a shipped set "
                                f"({', '.join(SHIPPED_TEXT_WEIGHTS)}) nor a folder holding {TEXT_CONFIG}")
    return folder
