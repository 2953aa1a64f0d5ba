"""What the UI shows while a job waits or runs: its place in the queue, its progress, the latest live preview."""

from __future__ import annotations

import base64
import io

import gradio as gr
from PIL import Image

from guardforge.ui.guard_view import bar


def waiting(job) -> str:
    """The queue position in words; "" once the job runs."""
    if job.state != "queued" or job.position is None:
        return ""
    if job.position == 0:
        return "next in the queue"
    return f"{job.position} {'job' if job.position == 1 else 'jobs'} ahead in the queue"


def preview_image(event: dict) -> Image.Image | None:
    """The preview a progress event carries (screened by the guard before it was published), decoded."""
    data = event.get("preview")
    if not data:
        return None
    return Image.open(io.BytesIO(base64.b64decode(data)))  # our own worker's PNG, a latent's size


class Progress:
    """The status box and gallery while one job is under way: each poll says where it is, and the gallery
    changes only when a newer preview came (re-sending the same picture every quarter second would flicker)."""

    def __init__(self, steps: int):
        self.steps = steps
        self.preview_step: int | None = None

    def update(self, job, event: dict | None) -> tuple[str, object]:
        event = event or {}
        html = bar(int(event.get("step") or 0), int(event.get("total") or self.steps), job.state,
                   waiting=waiting(job))
        step = event.get("preview_step")
        if step is None or step == self.preview_step:
            return html, gr.update()
        image = preview_image(event)
        if image is None:
            return html, gr.update()
        self.preview_step = step
        return html, [(image, f"live preview, step {step}")]
