"""The web UI end to end in headless Debian Chromium: type a prompt, generate, see the image and its verdict."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.livesrv import REPO, LiveServer, make_home, server_env

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("ui"), tiny_model_dir)
    # One generation's worth of rate-limit budget, refilled only after ~100 minutes: the second click is refused.
    env = server_env(home, GUARDFORGE_SERVER__RATE_BURST="1", GUARDFORGE_SERVER__RATE_PER_MINUTE="0.01")
    live = LiveServer(home, env, ui=True).start()
    yield live
    live.stop()


def chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `apt-get install -y chromium` "
                    "(the UI test needs a real browser; CI installs it)")
    return path


@contextmanager
def ui_page(url: str, height: int, **page_options) -> Iterator:
    """A headless Chromium page on the server's /ui, once its form is up; the browser closes after."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height}, **page_options)
            page.goto(f"{url}/ui/", wait_until="domcontentloaded", timeout=120_000)
            expect(page.locator("#gf-prompt textarea")).to_be_visible(timeout=120_000)
            yield page
        finally:
            browser.close()


def fill_txt2img(page, prompt: str, steps: int, width: int, height: int, seed: int) -> None:
    page.locator("#gf-prompt textarea").fill(prompt)
    for elem_id, value in (("gf-steps", steps), ("gf-width", width), ("gf-height", height), ("gf-seed", seed)):
        set_number(page, elem_id, value)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def png_with_infotext(folder: Path) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a purple hexagon\nNegative prompt: ugly\nSteps: 5, Sampler: Euler a, "
                                "Schedule type: Automatic, CFG scale: 6, Seed: 99, Size: 64x64, Model: tiny-sd")
    path = folder / "made-elsewhere.png"
    Image.new("RGB", (64, 64), (120, 40, 160)).save(path, pnginfo=info)
    return path


def test_generate_in_the_browser(ui_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    executable = chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            # Not "networkidle": Gradio keeps a connection open, and offline font requests never settle.
            page.goto(f"{ui_server.url}/ui/", wait_until="domcontentloaded", timeout=120_000)
            expect(page.locator("#gf-prompt textarea")).to_be_visible(timeout=120_000)
            page.locator("#gf-prompt textarea").fill("a green triangle")
            set_number(page, "gf-steps", 3)
            set_number(page, "gf-width", 64)
            set_number(page, "gf-height", 64)
            set_number(page, "gf-seed", 42)
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-gallery img").first).to_be_visible(timeout=180_000)
            expect(page.locator("#gf-badge")).to_have_text("allowed", timeout=30_000)
            page.get_by_text("Verdict (raw JSON)").first.click()  # the raw verdict is folded away
            expect(page.locator("#gf-verdict")).to_contain_text("allow", timeout=30_000)
            expect(page.locator("#gf-infotext textarea")).to_have_value(
                re.compile(r"a green triangle.*Steps: 3.*Seed: 42", re.S))
            expect(page.locator("#gf-progress")).to_have_attribute("data-state", "done")
            page.screenshot(path=str(ARTIFACTS / "ui-txt2img.png"), full_page=True)

            # Dropping a PNG with A1111 parameters fills the form.
            page.get_by_role("tab", name="PNG info").click()
            page.locator("#gf-png input[type=file]").set_input_files(str(png_with_infotext(tmp_path)))
            expect(page.locator("#gf-prompt textarea")).to_have_value("a purple hexagon", timeout=30_000)
            expect(page.locator("#gf-steps input[type=number]")).to_have_value("5")
            expect(page.locator("#gf-seed input")).to_have_value("99")
            page.screenshot(path=str(ARTIFACTS / "ui-png-info.png"), full_page=True)

            # History: the first job's parameters come back with one click.
            page.get_by_text("History").click()
            page.get_by_role("button", name="Refresh history").click()
            page.locator("#gf-history-job input").click()
            page.get_by_role("option", name=re.compile("a green triangle")).click()
            page.get_by_role("button", name="Reuse these parameters").click()
            expect(page.locator("#gf-prompt textarea")).to_have_value("a green triangle", timeout=30_000)
            expect(page.locator("#gf-steps input[type=number]")).to_have_value("3")
            expect(page.locator("#gf-seed input")).to_have_value("42")

            # The API's per-key rate limit holds for clicks too: the budget went on the first image.
            page.get_by_role("tab", name="txt2img").click()
            page.locator("#gf-generate").click()
            # When to come back, in words and on the clock (the API says it in Retry-After), not "retry in 5998.7 s".
            expect(page.get_by_text(re.compile(r"Too many generations: rate limit reached; retry in 1 h \d+ min"
                                               r"( \d+ s)? \(at \d\d:\d\d:\d\d server time\)"))).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "ui-rate-limited.png"), full_page=True)
            jobs = httpx.get(f"{ui_server.url}/v1/jobs", timeout=30).json()["jobs"]
            assert len(jobs) == 1, jobs  # the refused click queued nothing
        finally:
            browser.close()


# The session's shared server (default limits: 150 steps; one worker) rather than a server of its own: the
# warm-up below waits out whatever earlier tests queued there, and the two jobs are found by their prompts.
@pytest.fixture
def busy_ui_server(shared_server):
    return shared_server


def test_two_users_clicks_both_reach_the_queue(busy_ui_server):
    from gradio_client import Client

    from tests.ui_inputs import txt2img_off

    def click(prompt: str) -> None:
        client = Client(f"{busy_ui_server.url}/ui/", verbose=False)
        # The txt2img tab's Generate: prompt, negative, model, VAE, sampler, schedule, steps, cfg, width, height,
        # seed, init image, strength, inpaint editor, then the tab's own controls (here off). 150 steps: still
        # running when the other click comes.
        client.predict(prompt, "", "tiny-sd", "Automatic", "Euler a", "Automatic", 150, 7, 64, 64, 1, None, 0.75,
                       None, *txt2img_off(), api_name="/run_mode")

    with httpx.Client(base_url=busy_ui_server.url, timeout=30) as api:
        # One request first: two submits racing on a fresh process can trip over diffusers' lazy import
        # (engine.samplers.check_sampler), which is not what this test is about.
        warm = api.post("/v1/jobs", json={"prompt": "warm-up", "steps": 1, "width": 64, "height": 64}).json()["id"]
        while api.get(f"/v1/jobs/{warm}").json()["state"] in ("queued", "running"):
            time.sleep(0.2)
        clicks = [threading.Thread(target=click, args=(f"ui user {n}",), daemon=True) for n in (1, 2)]
        for thread in clicks:
            thread.start()
        deadline, jobs = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            jobs = [j for j in api.get("/v1/jobs").json()["jobs"] if j["request"]["prompt"].startswith("ui user")]
            if len(jobs) == 2:
                break
            time.sleep(0.2)
        # One worker: one runs, the other waits in our queue (with Gradio's default limit of 1, it waited in
        # Gradio's instead, unsubmitted, until the first was done).
        assert sorted(j["state"] for j in jobs) == ["queued", "running"], jobs
        for job in jobs:
            api.delete(f"/v1/jobs/{job['id']}")
    for thread in clicks:
        thread.join(60)


def test_inpaint_mask_is_what_was_painted():
    from PIL import Image

    from guardforge.ui.app import _mask_from_editor

    background = Image.new("RGB", (32, 32), (0, 0, 255))
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (8, 8, 16, 24))
    image, mask = _mask_from_editor({"background": background, "layers": [layer], "composite": None})
    assert image.size == (32, 32) and mask.getbbox() == (8, 8, 16, 24)
    assert _mask_from_editor({"background": background, "layers": [], "composite": None})[1] is None
