"""The web UI's refiner picker in headless Chromium: a refiner and a switch chosen in the txt2img tab reach the
request (the job records them; the infotext names the refiner as A1111 does)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.livesrv import LiveServer, make_home, server_env
from tests.test_ui import chromium, set_number
from tests.test_ui_vae import choose


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, tiny_model_dir):
    from tests.test_engine_refiner import save_tiny_refiner, save_tiny_sdxl

    home = make_home(tmp_path_factory.mktemp("ui-refiner"), tiny_model_dir)
    models = home / "models" / "Stable-diffusion"
    save_tiny_sdxl(models / "tiny-xl")
    save_tiny_refiner(models / "tiny-xl-refiner")
    live = LiveServer(home, server_env(home, GUARDFORGE_DEFAULT_MODEL="tiny-xl"), ui=True).start()
    yield live
    live.stop()


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
            page.locator("#gf-prompt textarea").fill("a grey square")
            set_number(page, "gf-steps", 4)
            set_number(page, "gf-width", 32)
            set_number(page, "gf-height", 32)
            set_number(page, "gf-seed", 4)
            choose(page, "gf-refiner", "tiny-xl-refiner")
            set_number(page, "gf-refiner-switch", 0.5)
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-infotext textarea")).to_have_value(
                re.compile(r"Model: tiny-xl, Refiner: tiny-xl-refiner \[[0-9a-f]{10}\], Refiner switch at: 0.5$",
                           re.S), timeout=180_000)
            [job] = httpx.get(f"{ui_server.url}/v1/jobs", timeout=30).json()["jobs"]
            assert job["request"]["refiner"] == {"checkpoint": "tiny-xl-refiner", "switch_at": 0.5}
        finally:
            browser.close()
