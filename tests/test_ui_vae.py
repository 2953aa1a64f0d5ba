"""The web UI's VAE dropdown in headless Chromium: chosen, it reaches the request (the infotext names it); PNG info
and Reuse set it from an image or a past job."""

from __future__ import annotations

import re

from tests.shared_server import job_with_prompt
from tests.test_ui import fill_txt2img, ui_page


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


def test_the_vae_dropdown_reaches_the_request_and_png_info_and_reuse_set_it(shared_server, tmp_path):
    from playwright.sync_api import expect

    with ui_page(shared_server.url, 1600) as page:
        vae = page.locator("#gf-vae input")
        expect(vae).to_have_value("Automatic")
        fill_txt2img(page, "a grey square", steps=2, width=32, height=32, seed=4)
        choose(page, "gf-vae", "alt-vae")
        page.locator("#gf-generate").click()
        expect(page.locator("#gf-infotext textarea")).to_have_value(
            re.compile(r"a grey square.*Model: tiny-sd, VAE hash: [0-9a-f]{10}, VAE: alt-vae", re.S),
            timeout=180_000)
        job = job_with_prompt(shared_server.url, "a grey square")
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
