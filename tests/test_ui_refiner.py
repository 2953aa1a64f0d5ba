"""The web UI's refiner picker in headless Chromium: a refiner and a switch chosen in the txt2img tab reach the
request (the job records them; the infotext names the refiner as A1111 does)."""

from __future__ import annotations

import re

from tests.shared_server import job_with_prompt
from tests.test_ui import fill_txt2img, set_number, ui_page
from tests.test_ui_vae import choose


def test_the_refiner_picker_reaches_the_request(shared_server):
    from playwright.sync_api import expect

    with ui_page(shared_server.url, 1600) as page:
        expect(page.locator("#gf-refiner input")).to_have_value("None")
        choose(page, "gf-model", "tiny-xl")
        fill_txt2img(page, "a refined square", steps=4, width=32, height=32, seed=4)
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
        job = job_with_prompt(shared_server.url, "a refined square")
        assert job["request"]["refiner"] == {"checkpoint": "tiny-xl-refiner", "switch_at": 0.5}
