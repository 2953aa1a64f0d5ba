"""Long texts are guarded in overlapping windows as well as whole: a guard model reads a bounded context (the
embedded one 256 word pieces), so a phrase placed after enough filler would otherwise go unread."""

from __future__ import annotations

# About one 75-token CLIP chunk, which the engine encodes separately; windows overlap by half, so a phrase
# cannot straddle two windows unseen.
GUARD_WINDOW_WORDS = 40


def text_windows(text: str) -> list[str]:
    """The windows of `text` to guard besides the text itself; none for a text short enough to read whole."""
    words = text.split()
    if len(words) <= GUARD_WINDOW_WORDS * 3 // 2:
        return []
    step = GUARD_WINDOW_WORDS // 2
    return [" ".join(words[start:start + GUARD_WINDOW_WORDS]) for start in range(0, len(words) - step, step)]
