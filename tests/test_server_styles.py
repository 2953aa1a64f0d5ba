"""Styles and dynamic prompts through the API (in-process, FastAPI's TestClient) and the CLI (main() in-process):
A1111's styles list and /prompt-styles, png-info's Styles array read back without applying a style twice, the
native /v1/jobs, and the refusals each edge gives (422 naming the style or wildcard; one CLI line)."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from guardforge.storage.outputs import read_infotext
from tests.test_cli_generate import env, run_main  # noqa: F401 (fixtures)

STYLES = ('name,prompt,negative_prompt\n'
          'film,"{prompt}, film grain","blurry, lowres"\n'
          'grain,grainy,\n')
PAYLOAD = {"prompt": "a {red|blue|green|white} square", "styles": ["film"], "steps": 1, "width": 32,
           "height": 32, "seed": 5, "batch_size": 3}


def with_styles(home):
    (home / "styles.csv").write_text(STYLES)
    (home / "wildcards").mkdir()
    (home / "wildcards" / "shape.txt").write_text("circle\n")
    return home


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.livesrv import make_home

    home = with_styles(make_home(tmp_path_factory.mktemp("styles-api"), tiny_model_dir))
    studio = Studio(Settings(home=home, default_model="tiny-sd", device="cpu", guard={"policy": "off"}))
    with TestClient(create_app(studio, mount_ui=False)) as http:
        yield http


def test_a1111_styles_prompt_styles_and_png_info(client):
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "film", "prompt": "{prompt}, film grain", "negative_prompt": "blurry, lowres"},
        {"name": "grain", "prompt": "grainy", "negative_prompt": ""}]
    answer = client.post("/sdapi/v1/txt2img", json=PAYLOAD)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["styles"] == ["film"] and info["guardforge"]["ignored_fields"] == []  # styles was ignored before
    assert info["prompt"] == PAYLOAD["prompt"]  # the request, as sent
    # all_prompts: what each image read, as A1111's; each one of the template's, styled, not all the same.
    assert len(info["all_prompts"]) == 3 and len(set(info["all_prompts"])) > 1
    assert set(info["all_prompts"]) <= {f"a {c} square, film grain" for c in ("red", "blue", "green", "white")}
    assert info["all_negative_prompts"] == ["blurry, lowres"] * 3
    assert [text.split("\n")[0] for text in info["infotexts"]] == info["all_prompts"]
    assert 'Template: "a {red|blue|green|white} square, film grain"' in info["infotexts"][0]

    # PNG info takes the style back out, as A1111 1.8 does: sending Prompt with Styles array makes the image again.
    image = answer.json()["images"][1]
    parameters = client.post("/sdapi/v1/png-info", json={"image": image}).json()["parameters"]
    first_line = info["all_prompts"][1]
    assert parameters["Styles array"] == ["film"]
    assert parameters["Prompt"] == first_line.removesuffix(", film grain") and parameters["Negative prompt"] == ""
    again = client.post("/sdapi/v1/txt2img", json={
        "prompt": parameters["Prompt"], "negative_prompt": parameters["Negative prompt"],
        "styles": parameters["Styles array"], "steps": 1, "width": 32, "height": 32, "seed": int(parameters["Seed"])})
    assert json.loads(again.json()["info"])["infotexts"][0].split("\n")[:2] == info["infotexts"][1].split("\n")[:2]
    assert _pixels(again.json()["images"][0]) == _pixels(image)


def _pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


@pytest.mark.parametrize(("fields", "message"), [
    ({"styles": ["nope"]}, "unknown style 'nope'; known styles: film, grain"),
    ({"prompt": "a __../styles__"}, "a name is a path inside the wildcards folder"),
    ({"prompt": "a __nope__"}, "unknown wildcard __nope__"),
    ({"negative_prompt": "{a|b"}, "negative_prompt: '{' is never closed"),
])
def test_refusals_are_422_naming_the_cause(client, fields, message):
    for route, body in (("/sdapi/v1/txt2img", {**PAYLOAD, **fields}),
                        ("/v1/jobs", {"prompt": "a cat", "steps": 1, "width": 32, "height": 32, **fields})):
        answer = client.post(route, json=body)
        assert answer.status_code == 422 and message in answer.text, (route, answer.text)


def test_native_jobs_take_styles_and_keep_the_template(client):
    created = client.post("/v1/jobs", json={"prompt": "a __shape__", "styles": ["grain"], "steps": 1, "width": 32,
                                            "height": 32, "seed": 2})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["state"] == "succeeded", job
    assert job["request"]["prompt"] == "a __shape__" and job["request"]["styles"] == ["grain"]
    infotext = job["result"]["images"][0]["infotext"]
    assert infotext.startswith("a circle, grainy\nSteps: 1,") and 'Template: "a __shape__, grainy"' in infotext


def test_cli_style_option(run_main, gf_home, tmp_path):  # noqa: F811 (run_main is the imported fixture)
    with_styles(gf_home)
    code, out, err = run_main("generate", "a cat", "--style", "grain", "--style", "film", "-m", "tiny-sd",
                              "--steps", "1", "--width", "32", "--height", "32", "--seed", "4",
                              "-o", str(tmp_path / "out"))
    assert code == 0, err
    path = out.split()[0]
    assert read_infotext(path).startswith("a cat, grainy, film grain\nNegative prompt: blurry, lowres\n")
    code, _, err = run_main("generate", "a cat", "--style", "nope", "-m", "tiny-sd", "--steps", "1")
    assert code == 2 and [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: unknown style 'nope'; known styles: film, grain"], err


def test_the_ui_style_picker_and_reuse_merge_styles_once(client):
    import gradio as gr

    from guardforge.ui import networks

    studio = client.app.state.studio
    assert networks.style_names(studio) == ["film", "grain"]
    assert networks.styled(studio, "film", "a cat", "") == ("a cat, film grain", "blurry, lowres")
    assert networks.styled(studio, None, "a cat", "x") == ("a cat", "x")
    with pytest.raises(gr.Error, match="unknown style 'nope'"):
        networks.styled(studio, "nope", "a cat", "")
    # A job sent with styles is reused in the form (which has no styles box) with them merged in, once.
    reused = networks.with_styles(studio, {"prompt": "a cat", "styles": ["grain", "film"], "steps": 1})
    assert (reused["prompt"], reused["negative_prompt"], reused["styles"]) == (
        "a cat, grainy, film grain", "blurry, lowres", [])
