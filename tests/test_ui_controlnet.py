"""The web UI's ControlNet units in headless Chromium: a control image dropped into unit 0 enables it, the preview
shows the preprocessed map, and Generate sends the unit (the infotext names it)."""

from __future__ import annotations

import re

from PIL import Image, ImageDraw

from tests.shared_server import job_with_prompt
from tests.test_ui import fill_txt2img, ui_page
from tests.test_ui_vae import choose


def fill_control_unit(page, image, module: str, model: str) -> None:
    """Opens txt2img's first ControlNet unit, uploads `image` (which enables the unit) and picks module and model."""
    from playwright.sync_api import expect

    page.locator("#gf-txt2img-controlnet").get_by_text("ControlNet").first.click()
    page.locator("#gf-txt2img-cn0-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#gf-txt2img-cn0-enable input")).to_be_checked(timeout=30_000)
    choose(page, "gf-txt2img-cn0-module", module)
    choose(page, "gf-txt2img-cn0-model", model)


def test_a_controlnet_unit_in_the_txt2img_tab(shared_server, tmp_path):
    from playwright.sync_api import expect

    control = tmp_path / "square.png"
    image = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 24, 24), outline="black", width=2)
    image.save(control)
    with ui_page(shared_server.url, 2200) as page:
        fill_txt2img(page, "a framed square", steps=2, width=32, height=32, seed=6)
        fill_control_unit(page, control, "canny", "tiny-cn")
        page.locator("#gf-txt2img-cn0-run-preview").click()
        expect(page.locator("#gf-txt2img-cn0-preview img")).to_be_visible(timeout=60_000)
        page.locator("#gf-generate").click()
        expect(page.locator("#gf-infotext textarea")).to_have_value(
            re.compile(r'a framed square.*ControlNet 0: "Module: canny, Model: tiny-cn \[[0-9a-f]{10}\], '
                       r'Weight: 1, .*Threshold A: 100, Threshold B: 200', re.S), timeout=180_000)
        job = job_with_prompt(shared_server.url, "a framed square")
        [unit] = job["request"]["controlnet"]
        assert (unit["module"], unit["model"], unit["image"]) == ("canny", "tiny-cn", "<base64 image>")
