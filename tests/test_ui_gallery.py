"""The grown-up web UI in headless Chromium on the shared server: batch count and size, seed reuse and the model's
own defaults change what is generated (the infotext proves it), the verdict reads as a badge with the raw JSON
folded, and the Gallery tab lists the job, sends it to img2img / extras / inpaint, downloads, re-runs and deletes
it. Live previews reach API clients through the job's event stream."""

from __future__ import annotations

import base64
import io
import json
import re
import secrets

import httpx
from PIL import Image

from tests.shared_server import SDXL
from tests.test_ui import ARTIFACTS, set_number, ui_page
from tests.test_ui_vae import choose


def jobs_with(server, prompt: str) -> list[dict]:
    jobs = httpx.get(f"{server.url}/v1/jobs", params={"limit": 100}, timeout=30).json()["jobs"]
    return [job for job in jobs if job["request"]["prompt"] == prompt]


def test_the_form_the_badge_and_the_gallery(shared_server):
    from playwright.sync_api import expect

    prompt = f"a gallery square {secrets.token_hex(3)}"
    ARTIFACTS.mkdir(exist_ok=True)
    with ui_page(shared_server.url, 1500, accept_downloads=True) as page:

        # The model's own defaults: tiny-xl is made at 32 px and is an SDXL (DPM++ 2M, 30 steps).
        choose(page, "gf-model", SDXL)
        expect(page.locator("#gf-sampler input")).to_have_value("DPM++ 2M", timeout=30_000)
        expect(page.locator("#gf-steps input[type=number]")).to_have_value("30")
        expect(page.locator("#gf-width input[type=number]")).to_have_value("32")
        choose(page, "gf-model", "tiny-sd")
        expect(page.locator("#gf-sampler input")).to_have_value("Euler a", timeout=30_000)
        expect(page.locator("#gf-steps input[type=number]")).to_have_value("20")

        page.locator("#gf-prompt textarea").fill(prompt)
        for elem_id, value in (("gf-steps", 2), ("gf-width", 32), ("gf-height", 32), ("gf-seed", 11),
                               ("gf-batch-count", 2), ("gf-batch-size", 2)):
            set_number(page, elem_id, value)
        page.locator("#gf-generate").click()
        expect(page.locator("#gf-progress")).to_have_attribute("data-state", "done", timeout=120_000)
        # Two batches of two: four images, seeds 11 to 14.
        expect(page.locator("#gf-gallery .thumbnail-item")).to_have_count(4)
        expect(page.locator("#gf-badge")).to_have_text("allowed")
        expect(page.locator("#gf-badge")).to_have_attribute("title", re.compile("the prompt: not checked"))
        [job] = jobs_with(shared_server, prompt)
        assert (job["request"]["batch_size"], job["request"]["n_iter"]) == (2, 2)
        assert [image["seed"] for image in job["result"]["images"]] == [11, 12, 13, 14]
        # The raw verdict is behind a fold.
        page.get_by_text("Verdict (raw JSON)").first.click()
        expect(page.locator("#gf-verdict")).to_contain_text('"allow"', timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "ui-txt2img-badge.png"), full_page=True)

        # Seed reuse: the third image's seed goes back in the seed box.
        page.locator("#gf-gallery .thumbnail-item").nth(2).click()
        expect(page.locator("#gf-infotext textarea")).to_have_value(re.compile(r"Seed: 13"), timeout=30_000)
        page.locator("#gf-reuse-seed").click()
        expect(page.locator("#gf-seed input")).to_have_value("13", timeout=30_000)
        page.keyboard.press("Escape")  # the gallery's preview of the picked image

        # The Gallery tab lists the job's four images, newest first.
        page.get_by_role("tab", name="Gallery").click()
        first = page.locator("#gf-hist-gallery .thumbnail-item").first
        expect(first).to_be_visible(timeout=60_000)
        expect(page.locator("#gf-hist-gallery")).to_contain_text(prompt[:30])
        page.locator("#gf-hist-since input, #gf-hist-since textarea").fill("2024-13-01")
        page.locator("#gf-hist-show").click()
        expect(page.get_by_text(re.compile("check the filter: since"))).to_be_visible(timeout=30_000)
        page.locator("#gf-hist-since input, #gf-hist-since textarea").fill("")
        page.locator("#gf-hist-show").click()
        first.click()
        expect(page.locator("#gf-hist-infotext textarea")).to_have_value(re.compile(prompt), timeout=30_000)
        expect(page.locator("#gf-hist-guard-badge")).to_have_text("allowed")
        page.screenshot(path=str(ARTIFACTS / "ui-gallery.png"), full_page=True)

        # Send to img2img: the image and its parameters; generating from it is an img2img of it.
        page.locator("#gf-hist-img2img").click()
        expect(page.locator("#gf-init-image img")).to_be_visible(timeout=30_000)
        expect(page.locator("#gf-prompt textarea")).to_have_value(prompt)
        set_number(page, "gf-batch-count", 1)
        set_number(page, "gf-batch-size", 1)
        page.get_by_role("button", name="Generate from image").click()
        expect(page.locator("#gf-infotext textarea")).to_have_value(re.compile(r"Denoising strength: 0\.75"),
                                                                    timeout=120_000)
        assert len(jobs_with(shared_server, prompt)) == 2

        page.get_by_role("tab", name="Gallery").click()
        page.locator("#gf-hist-show").click()
        page.locator("#gf-hist-gallery .thumbnail-item").first.click()
        expect(page.locator("#gf-hist-infotext textarea")).to_have_value(re.compile("Denoising strength"),
                                                                         timeout=30_000)
        # Download: the PNG carries its infotext, as the outputs folder's files do.
        page.locator("#gf-hist-download").click()
        link = page.locator("#gf-hist-file a").first
        expect(link).to_be_visible(timeout=30_000)
        with page.expect_download() as download:
            link.click()
        with Image.open(download.value.path()) as png:
            assert prompt in png.info["parameters"] and "Denoising strength" in png.info["parameters"]

        # Re-run: the same request again, through the queue and the guard.
        page.locator("#gf-hist-rerun").click()
        expect(page.locator("#gf-hist-guard")).to_contain_text("Re-run done", timeout=120_000)
        assert len(jobs_with(shared_server, prompt)) == 3

        # Send to extras and to inpaint put the image in those tabs.
        page.get_by_role("tab", name="Gallery").click()
        page.locator("#gf-hist-extras").click()
        expect(page.locator("#gf-extras-image img")).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Gallery").click()
        page.locator("#gf-hist-inpaint").click()
        expect(page.locator("#gf-editor canvas").first).to_be_visible(timeout=30_000)

        # Delete: the job, its row and its files go; the gallery shows it no more.
        page.get_by_role("tab", name="Gallery").click()
        before = {job["id"] for job in jobs_with(shared_server, prompt)}
        page.locator("#gf-hist-delete").click()
        expect(page.locator("#gf-hist-infotext textarea")).to_have_value("", timeout=30_000)
        after = {job["id"] for job in jobs_with(shared_server, prompt)}
        assert len(after) == 2 and after < before
        [gone] = before - after
        assert httpx.get(f"{shared_server.url}/v1/jobs/{gone}", timeout=30).status_code == 404


def test_live_previews_reach_the_event_stream(shared_server):
    with httpx.Client(base_url=shared_server.url, timeout=120) as api:
        job = api.post("/v1/jobs", json={"prompt": "a previewed circle", "steps": 12, "width": 64,
                                         "height": 64, "seed": 5}).json()
        previews = {}
        with api.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[len("event: "):]
                elif line.startswith("data: ") and name == "progress":
                    event = json.loads(line[len("data: "):])
                    if event.get("preview"):
                        previews[event["preview_step"]] = event["preview"]
                elif line.startswith("data: ") and name == "done":
                    break
    # Every 5 steps (the default), none at the last: 5 and 10, each a 32 px image of tiny-sd's 64 px latents.
    assert sorted(previews) == [5, 10]
    for data in previews.values():
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.size == (32, 32) and image.mode == "RGB"

    # A1111's clients poll /sdapi/v1/progress: the latest preview is its current_image from step 5 to the end.
    with httpx.Client(base_url=shared_server.url, timeout=120) as api:
        job = api.post("/v1/jobs", json={"prompt": "a polled circle", "steps": 60, "width": 64, "height": 64}).json()
        current = None
        while current is None and api.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running"):
            current = api.get("/sdapi/v1/progress").json()["current_image"]
    with Image.open(io.BytesIO(base64.b64decode(current))) as image:
        assert image.size == (32, 32)
