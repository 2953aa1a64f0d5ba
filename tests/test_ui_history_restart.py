"""Per key, across a restart, in headless Chromium: a key's gallery and last settings come back after the server
restarts, and another key sees neither (its form starts from the defaults, its gallery is empty)."""

from __future__ import annotations

import re
import secrets

import pytest

from tests.livesrv import LiveServer, make_home, server_env
from tests.test_ui import ARTIFACTS, chromium, set_number
from tests.test_ui_vae import choose


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_model_dir):
    from guardforge.access.keys import KeyStore
    from guardforge.db import Database

    home = make_home(tmp_path_factory.mktemp("ui-restart"), tiny_model_dir)
    store = KeyStore(Database(f"sqlite:///{home / 'guardforge.db'}"))
    keys = {name: store.create(name)[1] for name in ("a", "b")}
    live = LiveServer(home, server_env(home, GUARDFORGE_SERVER__REQUIRE_AUTH="true"), ui=True).start()
    yield live, keys
    live.stop()


def visit(browser, live, key: str):
    """A fresh browser profile logged into the UI as `key` (the login's user name is the key's id)."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    login = context.request.post(f"{live.url}/ui/login", form={"username": key.split("_")[1], "password": key})
    assert login.ok, login.text()
    page = context.new_page()
    page.goto(f"{live.url}/ui/", wait_until="domcontentloaded", timeout=120_000)
    expect(page.locator("#gf-prompt textarea")).to_be_visible(timeout=120_000)
    return page


def test_gallery_and_settings_survive_a_restart_and_stay_the_keys_own(keyed):
    from playwright.sync_api import expect, sync_playwright

    live, keys = keyed
    prompt = f"a's private square {secrets.token_hex(3)}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = visit(browser, live, keys["a"])
            choose(page, "gf-sampler", "DDIM")
            page.locator("#gf-prompt textarea").fill(prompt)
            page.locator("#gf-negative textarea").fill("blurry")
            for elem_id, value in (("gf-steps", 3), ("gf-width", 32), ("gf-height", 32), ("gf-seed", 9)):
                set_number(page, elem_id, value)
            page.locator("#gf-generate").click()
            expect(page.locator("#gf-infotext textarea")).to_have_value(re.compile("Sampler: DDIM"),
                                                                        timeout=120_000)
            page.context.close()

            live.stop()
            live.start()

            page = visit(browser, live, keys["a"])
            # A's last settings, from the server: not the prompt, the rest of the form.
            expect(page.locator("#gf-sampler input")).to_have_value("DDIM", timeout=30_000)
            expect(page.locator("#gf-steps input[type=number]")).to_have_value("3")
            expect(page.locator("#gf-width input[type=number]")).to_have_value("32")
            expect(page.locator("#gf-negative textarea")).to_have_value("blurry")
            expect(page.locator("#gf-prompt textarea")).to_have_value("")
            page.get_by_role("tab", name="Gallery").click()
            expect(page.locator("#gf-hist-count")).to_contain_text("1 shown", timeout=60_000)
            page.locator("#gf-hist-gallery .thumbnail-item").first.click()
            expect(page.locator("#gf-hist-infotext textarea")).to_have_value(re.compile(prompt), timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "ui-gallery-after-restart.png"), full_page=True)
            page.context.close()

            page = visit(browser, live, keys["b"])
            page.get_by_role("tab", name="Gallery").click()
            expect(page.locator("#gf-hist-count")).to_contain_text("0 shown", timeout=60_000)
            assert prompt not in page.content()
            expect(page.locator("#gf-sampler input")).to_have_value("Euler a")  # B's form: the defaults
            expect(page.locator("#gf-negative textarea")).to_have_value("")
        finally:
            browser.close()
