"""The web UI's VAE dropdown in headless Chromium: chosen, it reaches the request (the infotext names it); PNG info
and Reuse set it from an image or a past job."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.test_ui import chromium, set_number


@pytest.fixture(scope="module")
def ui_server(shared_server):
    return shared_server


def png_without_vae(folder):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a pink star\nSteps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, "
                                "Seed: 5, Size: 32x32, Model: tiny-sd")
    path = folder / "own-vae.png"
    Image.new("RGB", (32, 32), (250, 120, 200)).save(path, pnginfo=info)
    return path


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_the_vae_dropdown_reaches_the_request_and_png_info_and_reuse_set_it(ui_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{ui_server.url}/ui/", wait_until="domcontentloaded", timeout=120_000)
            expect(page.locator("#gf-prompt textarea")).to_be_visible(timeout=120_000)
            vae = page.locator("#gf-vae input")
            expect(vae).to_have_value("Automatic")
            page.locator("#gf-prompt textarea").fill("a grey square")
            set_number(page, "gf-steps", 2)
            set_number(page, "gf-width", 32)
            set_number(page, "gf-height", 32)
            set_number(page, "gf-seed", 4)
            choose(page, "gf-vae", "alt-vae")
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-infotext textarea")).to_have_value(
                re.compile(r"a grey square.*Model: tiny-sd, VAE hash: [0-9a-f]{10}, VAE: alt-vae", re.S),
                timeout=180_000)
            [job] = [job for job in httpx.get(f"{ui_server.url}/v1/jobs", timeout=30).json()["jobs"]
                     if job["request"]["prompt"] == "a grey square"]
            assert job["request"]["vae"] == "alt-vae" and job["result"]["vae"] == "alt-vae"

            # An image made with the checkpoint's own VAE says no VAE: the dropdown goes back to Automatic.
            page.get_by_role("tab", name="PNG info").click()
            page.locator("#gf-png input[type=file]").set_input_files(str(png_without_vae(tmp_path)))
            expect(page.locator("#gf-prompt textarea")).to_have_value("a pink star", timeout=30_000)
            expect(vae).to_have_value("Automatic")

            # Reuse brings the job's VAE back with its other parameters.
            page.get_by_text("History").click()
            page.get_by_role("button", name="Refresh history").click()
            page.locator("#gf-history-job input").click()
            page.get_by_role("option", name=re.compile("a grey square")).click()
            page.get_by_role("button", name="Reuse these parameters").click()
            expect(page.locator("#gf-prompt textarea")).to_have_value("a grey square", timeout=30_000)
            expect(vae).to_have_value("alt-vae")
        finally:
            browser.close()
