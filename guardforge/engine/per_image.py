"""A request whose images read different prompts (dynamic prompts), run one image at a time on the engine."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guardforge.engine.request import GenerationRequest, ProgressEvent

if TYPE_CHECKING:
    from PIL import Image

    from guardforge.engine.pipelines import Engine
    from guardforge.models.cache import LoadedModel


class _BatchSkip:
    """A1111's skip ends the current batch: the engine clears its skip event when a run ends, which here is one
    image, so the images left in the batch would run in full. This view keeps the skip set until the batch ends."""

    def __init__(self, event: threading.Event):
        self.event = event

    def is_set(self) -> bool:
        return self.event.is_set()

    def clear(self) -> None:
        pass


def run_per_image(engine: Engine, loaded: LoadedModel, requests: list[GenerationRequest], batch_size: int,
                  on_progress: Callable[[ProgressEvent], None] | None = None,
                  cancel: threading.Event | None = None, skip: threading.Event | None = None,
                  interrupt: threading.Event | None = None, **inputs: Any) -> list[tuple[Image.Image, int]]:
    """`requests`: one per image, each of batch size 1 with its own texts, seed and subseed. The engine encodes a
    request's prompt once for all its images, so images that read different prompts cannot share a pipeline
    call; each image's own seed still gives it the noise it would have had in a batch (engine/pipelines.py).
    Progress is reported over the whole request, its batches numbered as `batch_size` groups them; a skip ends
    the rest of the current batch early, an interrupt the request, as they do for one run."""
    results: list[tuple[Image.Image, int]] = []
    total = len(requests)
    for index, request in enumerate(requests):
        if interrupt is not None and interrupt.is_set():
            break
        batch = index // batch_size

        def report(event: ProgressEvent, before: int = index, batch: int = batch) -> None:
            per_image = event.total  # one run's steps: this image's (hires fix's passes included)
            done = before * per_image + event.step
            rate = max(event.it_per_s, 1e-9)
            on_progress(ProgressEvent(step=done, total=per_image * total, it_per_s=event.it_per_s,
                                      eta_s=(per_image * total - done) / rate, batch_index=batch,
                                      preview=event.preview))

        results += engine.run(loaded, request, on_progress=report if on_progress else None, cancel=cancel,
                              skip=_BatchSkip(skip) if skip is not None else None, interrupt=interrupt, **inputs)
        if skip is not None and (index + 1) % batch_size == 0:
            skip.clear()
    return results
