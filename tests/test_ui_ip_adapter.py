"""The web UI's IP-Adapter in headless Chromium: a ControlNet unit whose preprocessor is ip-adapter_clip_sd15 and
whose model is an adapter becomes the request's ip_adapter (the infotext names it as sd-webui-controlnet does)."""

from __future__ import annotations

import re

from PIL import Image

from tests.shared_server import job_with_prompt
from tests.test_ui import fill_txt2img, ui_page
from tests.test_ui_controlnet import fill_control_unit


def test_an_ip_adapter_unit_in_the_txt2img_tab(shared_server, tmp_path):
    from playwright.sync_api import expect

    picture = tmp_path / "picture.png"
    image = Image.new("RGB", (40, 40), "red")
    image.paste(Image.new("RGB", (20, 20), "yellow"), (10, 10))
    image.save(picture)
    with ui_page(shared_server.url, 2200) as page:
        fill_txt2img(page, "a pictured square", steps=2, width=32, height=32, seed=6)
        fill_control_unit(page, picture, "ip-adapter_clip_sd15", "tiny-ip")
        page.locator("#gf-generate").click()
        expect(page.locator("#gf-infotext textarea")).to_have_value(
            re.compile(r'a pictured square.*ControlNet 0: "Module: ip-adapter_clip_sd15, Model: tiny-ip '
                       r'\[[0-9a-f]{10}\], Weight: 1,', re.S), timeout=180_000)
        job = job_with_prompt(shared_server.url, "a pictured square")
        assert job["request"]["controlnet"] == []
        adapter = job["request"]["ip_adapter"]
        assert (adapter["module"], adapter["model"], adapter["image"]) == ("ip-adapter_clip_sd15", "tiny-ip",
                                                                          "<base64 image>")
