"""The interface every guard backend implements: batch in, per-category scores out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image


@dataclass
class Scores:
    """A backend's answer for one input.

    `scores` maps S-codes (and custom codes) to a probability in 0..1. `unsafe` is the backend's overall
    P(unsafe) when it has one. `labels_only` is True when the backend gave labels, not probabilities
    (scores are then 0 or 1), so the verdict can say so.
    """

    scores: dict[str, float]
    unsafe: float | None = None
    labels_only: bool = False
    extra: dict = field(default_factory=dict)


@runtime_checkable
class TextBackend(Protocol):
    name: str
    categories: frozenset[str]  # the S-codes this backend can score

    def score_texts(self, texts: list[str]) -> list[Scores]: ...


@runtime_checkable
class ImageBackend(Protocol):
    name: str
    categories: frozenset[str]

    def score_images(self, images: list[Image.Image]) -> list[Scores]: ...
