"""The web UI's refiner picker in headless Chromium: a refiner and a switch chosen in the txt2img tab reach the
request (the job records them; the infotext names the refiner as A1111 does)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.test_ui import chromium, set_number
from tests.test_ui_vae import choose


@pytest.fixture(scope="module")
def ui_server(shared_server):
    return shared_server


def test_the_refiner_picker_reaches_the_request(ui_server):
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
            expect(page.locator("#gf-refiner input")).to_have_value("None")
            choose(page, "gf-model", "tiny-xl")
            page.locator("#gf-prompt textarea").fill("a refined square")
            set_number(page, "gf-steps", 4)
            set_number(page, "gf-width", 32)
            set_number(page, "gf-height", 32)
            set_number(page, "gf-seed", 4)
            # Only models a refiner can be are offered: SDXL ones, not the SD 1.x tiny-sd.
            page.locator("#gf-refiner input").click()
            expect(page.get_by_role("option", name="tiny-xl-refiner", exact=True)).to_be_visible()
            expect(page.get_by_role("option", name="tiny-sd", exact=True)).to_have_count(0)
            page.get_by_role("option", name="tiny-xl-refiner", exact=True).click()
            set_number(page, "gf-refiner-switch", 0.5)
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-infotext textarea")).to_have_value(
                re.compile(r"Model: tiny-xl, Refiner: tiny-xl-refiner \[[0-9a-f]{10}\], Refiner switch at: 0.5$",
                           re.S), timeout=180_000)
            [job] = [job for job in httpx.get(f"{ui_server.url}/v1/jobs", timeout=30).json()["jobs"]
                     if job["request"]["prompt"] == "a refined square"]
            assert job["request"]["refiner"] == {"checkpoint": "tiny-xl-refiner", "switch_at": 0.5}
        finally:
            browser.close()
