"""The web UI's IP-Adapter in headless Chromium: a ControlNet unit whose preprocessor is ip-adapter_clip_sd15 and
whose model is an adapter becomes the request's ip_adapter (the infotext names it as sd-webui-controlnet does)."""

from __future__ import annotations

import re

import httpx
import pytest
from PIL import Image

from tests.test_ui import chromium, set_number
from tests.test_ui_vae import choose


@pytest.fixture(scope="module")
def ui_server(shared_server):
    return shared_server


def test_an_ip_adapter_unit_in_the_txt2img_tab(ui_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    picture = tmp_path / "picture.png"
    image = Image.new("RGB", (40, 40), "red")
    image.paste(Image.new("RGB", (20, 20), "yellow"), (10, 10))
    image.save(picture)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2200})
            page.goto(f"{ui_server.url}/ui/", wait_until="domcontentloaded", timeout=120_000)
            expect(page.locator("#gf-prompt textarea")).to_be_visible(timeout=120_000)
            page.locator("#gf-prompt textarea").fill("a pictured square")
            set_number(page, "gf-steps", 2)
            set_number(page, "gf-width", 32)
            set_number(page, "gf-height", 32)
            set_number(page, "gf-seed", 6)
            page.locator("#gf-txt2img-controlnet").get_by_text("ControlNet").first.click()
            page.locator("#gf-txt2img-cn0-image input[type=file]").set_input_files(str(picture))
            expect(page.locator("#gf-txt2img-cn0-enable input")).to_be_checked(timeout=30_000)
            choose(page, "gf-txt2img-cn0-module", "ip-adapter_clip_sd15")
            choose(page, "gf-txt2img-cn0-model", "tiny-ip")
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-infotext textarea")).to_have_value(
                re.compile(r'a pictured square.*ControlNet 0: "Module: ip-adapter_clip_sd15, Model: tiny-ip '
                           r'\[[0-9a-f]{10}\], Weight: 1,', re.S), timeout=180_000)
            [job] = [job for job in httpx.get(f"{ui_server.url}/v1/jobs", timeout=30).json()["jobs"]
                     if job["request"]["prompt"] == "a pictured square"]
            assert job["request"]["controlnet"] == []
            adapter = job["request"]["ip_adapter"]
            assert (adapter["module"], adapter["model"], adapter["image"]) == ("ip-adapter_clip_sd15", "tiny-ip",
                                                                              "<base64 image>")
        finally:
            browser.close()
