"""The web UI's ControlNet units in headless Chromium: a control image dropped into unit 0 enables it, the preview
shows the preprocessed map, and Generate sends the unit (the infotext names it)."""

from __future__ import annotations

import re

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.test_ui import chromium, set_number
from tests.test_ui_vae import choose


@pytest.fixture(scope="module")
def ui_server(shared_server):
    return shared_server


def test_a_controlnet_unit_in_the_txt2img_tab(ui_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    control = tmp_path / "square.png"
    image = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 24, 24), outline="black", width=2)
    image.save(control)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2200})
            page.goto(f"{ui_server.url}/ui/", wait_until="domcontentloaded", timeout=120_000)
            expect(page.locator("#gf-prompt textarea")).to_be_visible(timeout=120_000)
            page.locator("#gf-prompt textarea").fill("a framed square")
            set_number(page, "gf-steps", 2)
            set_number(page, "gf-width", 32)
            set_number(page, "gf-height", 32)
            set_number(page, "gf-seed", 6)
            page.locator("#gf-txt2img-controlnet").get_by_text("ControlNet").first.click()
            page.locator("#gf-txt2img-cn0-image input[type=file]").set_input_files(str(control))
            expect(page.locator("#gf-txt2img-cn0-enable input")).to_be_checked(timeout=30_000)
            choose(page, "gf-txt2img-cn0-module", "canny")
            choose(page, "gf-txt2img-cn0-model", "tiny-cn")
            page.locator("#gf-txt2img-cn0-run-preview").click()
            expect(page.locator("#gf-txt2img-cn0-preview img")).to_be_visible(timeout=60_000)
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-infotext textarea")).to_have_value(
                re.compile(r'a framed square.*ControlNet 0: "Module: canny, Model: tiny-cn \[[0-9a-f]{10}\], '
                           r'Weight: 1, .*Threshold A: 100, Threshold B: 200', re.S), timeout=180_000)
            [job] = [job for job in httpx.get(f"{ui_server.url}/v1/jobs", timeout=30).json()["jobs"]
                     if job["request"]["prompt"] == "a framed square"]
            [unit] = job["request"]["controlnet"]
            assert (unit["module"], unit["model"], unit["image"]) == ("canny", "tiny-cn", "<base64 image>")
        finally:
            browser.close()
