"""Live previews: A1111's cheap latent-to-RGB factors, a preview every few steps of a real run, and the guard's
say over each preview before it leaves (allowed as is, blurred, or withheld)."""

from __future__ import annotations

import pytest
import torch

from guardforge.engine.preview import SD1_FACTORS, latent_preview
from guardforge.engine.request import GenerationRequest
from guardforge.guard.backends.base import Scores

POLICY = """
name: preview-test
default: {threshold: 0.5, action: block}
categories:
  S12: {threshold: 0.5, action: %s}
checkpoints: {prompt: false, input_image: false, output_image: true, training_data: false}
"""


def test_cheap_factors_map_channels_to_rgb_as_a1111():
    latents = torch.zeros(2, 4, 3, 5)
    latents[0, 3] = -1.0  # SD1's fourth channel: negative is bright, bluest
    image = latent_preview(latents, "sd1")
    assert image.size == (5, 3) and image.mode == "RGB"
    expected = tuple(round((1 - SD1_FACTORS[3][i]) / 2 * 255) for i in range(3))  # (151, 162, 188)
    assert image.getpixel((0, 0)) == expected and expected[2] > expected[0]
    assert latent_preview(latents, "flux") is None  # no factors: no preview rather than wrong colours
    assert latent_preview(torch.zeros(1, 16, 4, 4), "sdxl") is None
    assert latent_preview(torch.zeros(1, 64, 16), "sd1") is None  # packed (Flux-style) latents


class SmallImagesAreUnsafe:
    """Image backend: S12 = 1 for images under 32 px a side (the previews), 0 for the finished 32 px images."""

    name = "test-small"
    categories = frozenset({"S12"})

    def __init__(self):
        self.sizes = []

    def score_images(self, images):
        self.sizes += [image.size for image in images]
        return [Scores({"S12": float(max(image.size) < 32)}) for image in images]


def studio_with(home, tmp_path, action: str, every: int = 2):
    from guardforge.db import Database
    from guardforge.guard.audit import AuditLog
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    policy = tmp_path / f"{action}.yaml"
    policy.write_text(POLICY % action)
    guard = Guard(load_policy(policy), image_backend=SmallImagesAreUnsafe(),
                  audit=AuditLog(Database(f"sqlite:///{tmp_path / f'audit-{action}.db'}")))
    return Studio(Settings(home=home, jobs={"preview_every_steps": every}), guard=guard)


def run(studio, previews=True):
    events = []
    request = GenerationRequest(prompt="a blue circle", model="tiny-sd", steps=4, width=32, height=32, seed=7)
    result = studio.generate(request, on_progress=events.append, save=False, previews=previews)
    return events, result


@pytest.mark.parametrize("action", ["flag", "blur", "block"])
def test_each_preview_passes_the_output_guard_first(gf_home, tmp_path, action):
    from guardforge.guard.blur import strong_blur

    # flag lets the image through unchanged: the reference for what the latents look like at step 2.
    studio = studio_with(gf_home, tmp_path, action)
    events, result = run(studio)
    assert [event.step for event in events] == [1, 2, 3, 4]
    # Every 2 steps, not at the last one (the finished image follows at once); finished images are 32 px.
    assert [event.preview is not None for event in events] == [False, action != "block", False, False]
    assert studio.guard.backend("image").sizes == [(16, 16), (32, 32)]  # the preview was screened, then the output
    assert result.images[0].action == "allow"
    if action == "block":
        return
    preview = events[1].preview
    assert preview.size == (16, 16)  # the latents' size: tiny-sd's VAE scales by 2 (SD's by 8)
    reference = run(studio_with(gf_home, tmp_path, "flag"))[0][1].preview if action == "blur" else None
    if reference is not None:
        assert preview.tobytes() == strong_blur(reference).tobytes() != reference.tobytes()


def test_no_previews_unless_asked(gf_home, tmp_path):
    studio = studio_with(gf_home, tmp_path, "flag", every=1)
    events, _ = run(studio, previews=False)  # the CLI's progress bar: no preview, no extra guard call
    assert all(event.preview is None for event in events)
    assert studio.guard.backend("image").sizes == [(32, 32)]


def test_pollers_keep_the_last_preview_and_see_their_place_in_the_queue(tmp_path):
    """What the UI and /sdapi/v1/progress read: the latest event keeps the last preview until a newer one (each
    subscriber got it once), and a queued job's place in words."""
    from guardforge.db import Database
    from guardforge.jobs.events import ProgressHub
    from guardforge.jobs.queue import JobQueue
    from guardforge.ui.live import waiting

    hub = ProgressHub()
    hub.publish("j", {"type": "progress", "step": 5, "preview": "AAAA", "preview_step": 5})
    hub.publish("j", {"type": "progress", "step": 6})
    assert hub.latest("j") == {"type": "progress", "step": 6, "preview": "AAAA", "preview_step": 5}
    hub.publish("j", {"type": "done", "final": True})
    assert hub.latest("j") is None

    queue = JobQueue(Database(f"sqlite:///{tmp_path / 'q.db'}"))
    first, second = (queue.submit("generate", {"request": {}}, owner="o") for _ in range(2))
    assert waiting(queue.get(first, "o")) == "next in the queue"
    assert waiting(queue.get(second, "o")) == "1 job ahead in the queue"
