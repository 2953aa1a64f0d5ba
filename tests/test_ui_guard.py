"""The web UI says what the guard did (blocked, blurred, flagged, and why), and sizes the form to the model."""

from __future__ import annotations

import json
import re
from html import unescape
import shutil

import pytest

from tests.ui_inputs import txt2img_off
from tests.livesrv import LiveServer, make_home, server_env
from tests.test_ui import ARTIFACTS, set_number, ui_page

# "I will kill you" scores S1 (violent crimes) 0.91 with the embedded text guard: blocked. Every other prompt
# is flagged (S13 at a threshold nothing stays under) and every image blurred (S12 likewise, allowed in prompts).
POLICY = """
name: ui-guard
default: {threshold: 0.4, action: block}
categories:
  S12: {threshold: 0.000001, action: blur, at: {prompt: allow}}
  S13: {threshold: 0.000000001, action: flag}
excluded: [S14]
checkpoints: {prompt: true, input_image: false, output_image: true, training_data: false}
"""

# The txt2img Generate: negative, model, sampler, schedule, steps, cfg, width, height, seed, init image, strength,
# inpaint editor.
FIELDS = ("", "tiny-sd", "Automatic", "Euler a", "Automatic", 2, 7, 16, 16, 3, None, 0.75, None)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ui-guard")
    home = make_home(root, tiny_model_dir)
    # A second model, made at 32 px where tiny-sd is made at 16: choosing it must change the size.
    wide = home / "models" / "Stable-diffusion" / "tiny-sd-wide"
    shutil.copytree(home / "models" / "Stable-diffusion" / "tiny-sd", wide)
    unet = wide / "unet" / "config.json"
    unet.write_text(json.dumps({**json.loads(unet.read_text()), "sample_size": 16}))
    (root / "policy.yaml").write_text(POLICY)
    live = LiveServer(home, server_env(home, GUARDFORGE_GUARD__POLICY=str(root / "policy.yaml")), ui=True).start()
    yield live
    live.stop()


def test_blocked_flagged_and_blurred_are_said(guarded, request):
    from gradio_client import Client

    client = Client(f"{guarded.url}/ui/", verbose=False)
    request.addfinalizer(client.close)  # its heartbeat stream would hold the server's shutdown for its grace period
    progress, gallery, _, verdict = client.predict("I will kill you", *FIELDS, *txt2img_off(), api_name="/run_mode")
    # The reviewer saw a green "done 20/20 (100%)", an empty gallery and "action": null.
    assert 'data-state="blocked"' in progress and "done" not in progress
    # The score is the model's; the message must name the category and a score over its 0.5 threshold.
    assert re.search(r"Blocked by the guard: the prompt was refused \(S1 Violent Crimes, score 0\.[5-9]\d\)", progress)
    assert "Nothing was generated" in progress
    assert gallery == [] and verdict["action"] == "block" and verdict["blocked"] is True

    progress, gallery, _, verdict = client.predict("a red square", *FIELDS, *txt2img_off(), api_name="/run_mode")
    assert 'data-state="done"' in progress
    assert "1 of 1 image blurred (S12 Sexual Content)" in progress
    # Only S13: S12 crosses its threshold in the prompt too, but its rule lets prompts through.
    assert re.search(r"the prompt was flagged for review \(S13 Elections, score [^();]*\)\.", unescape(progress))
    assert len(gallery) == 1
    assert gallery[0]["caption"].startswith("blurred by the guard: S12 Sexual Content")
    assert verdict["action"] == "blur"


def test_newcomer_sees_the_model_size_and_the_guard(guarded):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with ui_page(guarded.url, 1400) as page:
        # The default model's own size (the CLI's default), not 512 for a 16 px model.
        expect(page.locator("#gf-width input[type=number]")).to_have_value("16")
        expect(page.locator("#gf-height input[type=number]")).to_have_value("16")
        page.locator("#gf-model input").click()
        page.get_by_role("option", name="tiny-sd-wide").click()
        expect(page.locator("#gf-width input[type=number]")).to_have_value("32", timeout=30_000)
        expect(page.locator("#gf-height input[type=number]")).to_have_value("32")

        page.locator("#gf-prompt textarea").fill("I will kill you")
        set_number(page, "gf-steps", 2)
        page.locator("#gf-generate").click()
        expect(page.locator("#gf-progress")).to_have_attribute("data-state", "blocked", timeout=120_000)
        expect(page.locator("#gf-guard")).to_contain_text(re.compile(r"Blocked by the guard: the prompt was "
                                                                     r"refused \(S1 Violent Crimes"))
        # The badge says it in a word, its hover the categories and scores; the raw verdict is folded away.
        expect(page.locator("#gf-badge")).to_have_text("blocked")
        expect(page.locator("#gf-badge")).to_have_attribute(
            "title", re.compile(r"^the prompt: S1 Violent Crimes 0\.[5-9]\d \(over its threshold\)"))
        page.get_by_text("Verdict (raw JSON)").first.click()
        expect(page.locator("#gf-verdict")).to_contain_text("block")
        page.screenshot(path=str(ARTIFACTS / "ui-blocked.png"), full_page=True)

        page.locator("#gf-prompt textarea").fill("a red square")
        page.locator("#gf-generate").click()
        expect(page.locator("#gf-gallery img").first).to_be_visible(timeout=120_000)
        expect(page.locator("#gf-progress")).to_have_attribute("data-state", "done", timeout=30_000)
        expect(page.locator("#gf-guard")).to_contain_text("1 of 1 image blurred (S12 Sexual Content)")
        expect(page.locator("#gf-badge")).to_have_text("blurred")
        expect(page.locator("#gf-badge")).to_have_attribute(
            "title", re.compile(r"the image: S12 Sexual Content [<\d.]+ \(over its threshold\)"))
        page.screenshot(path=str(ARTIFACTS / "ui-blurred.png"), full_page=True)
