"""Scripts (guardforge/scripts/): a third-party package installed in the test (a dist-info with entry_points.txt on
sys.path, as pip would leave it) is found, listed by /sdapi/v1/scripts, script-info and /v1/scripts, and runs from
the API, the CLI and the Studio; the guard reads what its scripts write and screens what they paint; the built-in
watermark marks the pixels it says it marks.

The guard's backends here are test-only classes implementing its backend protocol (a text model that flags the word
"forbidden", an image model that flags a red image); the Guard, the Policy, the Studio and the engine are real."""

from __future__ import annotations

import base64
import importlib
import io
import json
import logging
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardforge.db import Database
from guardforge.engine.request import GenerationRequest
from guardforge.guard.audit import AuditLog
from guardforge.guard.backends.base import Scores
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from tests.inprocess_cli import cli_caller
from tests.test_studio_guard import ReadsTheFirstWords

SMALL = {"steps": 1, "width": 32, "height": 32, "seed": 5}

PLUGIN = '''
from typing import Literal

from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, Field

from guardforge.scripts import MadeImage, Script, ScriptRun


class ShoutArgs(BaseModel):
    word: str = Field("loudly", title="Word", max_length=40)
    tint: Literal["red", "none"] = Field("red", title="Tint")


class Shout(Script):
    """Adds a word to the prompt; paints each image red unless told not to."""

    title = "Shout"
    Args = ShoutArgs

    def alter_request(self, request, args):
        return request.model_copy(update={"prompt": f"{request.prompt}, {args.word}"})

    def process_images(self, images, request, args):
        return images if args.tint == "none" else [Image.new("RGB", image.size, (255, 0, 0)) for image in images]

    def infotext(self, args):
        return {"Shout": args.word}

    def router(self):
        router = APIRouter()

        @router.get("/echo")
        def echo(word: str) -> dict:
            return {"shouted": word.upper()}

        return router


class RepeatArgs(BaseModel):
    times: int = Field(2, title="Times", ge=1, le=4)
    label: str = Field("", title="Label")


class Repeat(Script):
    """One generation per seed, and a strip of them side by side."""

    title = "Repeat seeds"
    modes = frozenset({"txt2img"})
    Args = RepeatArgs

    def texts(self, args):
        return [args.label] if args.label else []

    def run(self, request, args, generate):
        results = [generate(request.model_copy(update={"seed": request.seed + i})) for i in range(args.times)]
        cells = [image.pil for result in results for image in result.images]
        strip = Image.new("RGB", (sum(c.width for c in cells), cells[0].height))
        for index, cell in enumerate(cells):
            strip.paste(cell, (index * cell.width, 0))
        return ScriptRun(results, [MadeImage(strip, f"{request.prompt}\\nRepeat: {args.times}")])
'''

ENTRY_POINTS = """
[guardforge.scripts]
shout = gf_tinyscripts:Shout
repeat = gf_tinyscripts:Repeat
broken = gf_tinyscripts:Missing
notascript = gf_tinyscripts:ShoutArgs
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The package `gf-tinyscripts` installed on sys.path: its module and its dist-info (what pip writes)."""
    site = tmp_path_factory.mktemp("site")
    (site / "gf_tinyscripts.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "gf_tinyscripts-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gf-tinyscripts\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("gf_tinyscripts", None)


class RedIsUnsafe:
    """Image backend: S1 = 1 for an image whose pixels are mostly pure red."""

    name = "test-red"
    categories = frozenset({"S1"})

    def score_images(self, images):
        return [Scores({"S1": float((np.asarray(image.convert("RGB")) == (255, 0, 0)).all(axis=2).mean() > 0.5)})
                for image in images]


def make_studio(home: Path):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=home, default_model="tiny-sd", device="cpu"),
                  guard=Guard(load_policy("default"), text_backend=ReadsTheFirstWords(), image_backend=RedIsUnsafe(),
                              audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))


@pytest.fixture
def studio(plugin, gf_home):
    return make_studio(gf_home)


@pytest.fixture(scope="module")
def served(plugin, tmp_path_factory, tiny_model_dir):
    """One app (its own Studio, workers and all) for the HTTP tests of this file: an app's start costs a second."""
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app
    from tests.livesrv import make_home

    studio = make_studio(make_home(tmp_path_factory.mktemp("scripts-app"), tiny_model_dir))
    with TestClient(create_app(studio, mount_ui=False)) as http:
        yield http, studio


@pytest.fixture
def client(served):
    return served[0]


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_a_third_party_script_is_listed_and_runs_over_http(client, served):
    studio = served[1]
    listed = client.get("/sdapi/v1/scripts").json()
    assert listed["txt2img"] == ["controlnet", "watermark", "repeat seeds", "shout", "x/y/z plot"]
    assert listed["img2img"] == ["poor man's outpainting", "controlnet", "watermark", "shout",
                                 "x/y/z plot"]  # repeat: txt2img
    infos = {(i["name"], i["is_img2img"]): i for i in client.get("/sdapi/v1/script-info").json()}
    assert infos[("shout", False)]["is_alwayson"] is False and infos[("watermark", True)]["is_alwayson"] is True
    assert infos[("shout", True)]["args"] == [
        {"label": "Word", "value": "loudly", "minimum": None, "maximum": None, "step": None, "choices": None},
        {"label": "Tint", "value": "red", "minimum": None, "maximum": None, "step": None, "choices": ["red", "none"]}]
    assert infos[("repeat seeds", False)]["args"][0] == {"label": "Times", "value": 2, "minimum": 1, "maximum": 4,
                                                          "step": None, "choices": None}
    native = {s["name"]: s for s in client.get("/v1/scripts").json()}
    assert set(native) == {"watermark", "repeat", "shout", "xyz_plot"}  # the broken entry points are left out
    assert native["shout"]["routes"] == "/v1/scripts/shout/" and native["repeat"]["routes"] is None
    assert native["watermark"]["args_schema"]["properties"]["opacity"]["maximum"] == 1.0
    assert client.get("/v1/scripts/shout/echo", params={"word": "hi"}).json() == {"shouted": "HI"}

    # A1111's selected script by its title, positional args: the prompt it altered is what the guard read and what
    # the infotext says; its image processing ran (tint none: the model's own pixels, not red).
    text_backend = studio.guard.backend("text")
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a red square", **SMALL, "script_name": "Shout",
                                                    "script_args": ["again", "none"]})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["infotexts"][0].startswith("a red square, again\n") and ", Shout: again" in info["infotexts"][0]
    assert "Watermark" not in info["infotexts"][0]  # the always-on watermark is off by default
    assert "a red square, again" in text_backend.seen
    assert info["guardforge"]["actions"] == ["allow"] and info["guardforge"]["ignored_fields"] == []
    assert not (decoded(answer.json()["images"][0]) == (255, 0, 0)).all()


def test_a_scripts_image_passes_the_output_guard(client):
    """The script paints the image red after the engine, and the image guard, which flags red, blocks it."""
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a square", **SMALL, "script_name": "shout"})
    info = json.loads(answer.json()["info"])
    assert info["guardforge"]["actions"] == ["block"]
    assert info["guardforge"]["verdicts"][0]["violated"] == ["S1"]
    assert not (decoded(answer.json()["images"][0]) == (255, 0, 0)).all(axis=2).any()  # the withheld tile
    job = client.post("/v1/jobs", json={"prompt": "a square", **SMALL, "scripts": {"shout": {"tint": "red"}}}).json()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    while done["state"] in ("queued", "running"):
        time.sleep(0.05)
        done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["result"]["images"][0]["action"] == "block"


def test_the_xyz_plot_runs_as_a_native_job_through_the_scripts_interface(client):
    """The built-in script on /v1/jobs: one `generate` job whose images are the grid, then each cell."""
    axes = {"x": "steps=1,2", "draw_legend": False}
    job = client.post("/v1/jobs", json={"prompt": "a blue square", **SMALL, "scripts": {"x/y/z plot": axes}})
    assert job.status_code == 202, job.text
    done = client.get(f"/v1/jobs/{job.json()['id']}").json()
    while done["state"] in ("queued", "running"):
        time.sleep(0.05)
        done = client.get(f"/v1/jobs/{job.json()['id']}").json()
    assert done["state"] == "succeeded", done
    grid, *cells = done["result"]["images"]
    assert (grid["width"], grid["height"]) == (64, 32) and len(cells) == 2
    assert grid["infotext"].endswith('Script: X/Y/Z plot, X Type: Steps, X Values: "1,2"')
    assert [cell["infotext"].split("Steps: ")[1][0] for cell in cells] == ["1", "2"]


@pytest.mark.parametrize("path, extra, needle", [
    ("/sdapi/v1/txt2img", {"script_name": "Shout", "script_args": ["x", "blue"]}, "tint: Input should be 'red' or"),
    ("/sdapi/v1/txt2img", {"script_name": "shout", "script_args": ["x", "none", 3]}, "takes 2 args (word, tint)"),
    ("/sdapi/v1/txt2img", {"script_name": "loopback"}, "'loopback' is not installed here; installed: repeat, "),
    ("/sdapi/v1/txt2img", {"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "'ADetailer' is not installed"),
    ("/sdapi/v1/txt2img", {"alwayson_scripts": {"watermark": [True]}}, 'must be an object'),
    ("/sdapi/v1/txt2img", {"script_name": 5, "script_args": "abc"}, "script_name must be a script's name"),
    ("/sdapi/v1/txt2img", {"script_name": "shout", "script_args": "abc"}, "script_args must be a list"),
    ("/sdapi/v1/img2img", {"script_name": "repeat seeds", "init_images": ["x"]}, "runs on txt2img, not img2img"),
    ("/sdapi/v1/txt2img", {"script_name": "Poor man's outpainting"}, "is an img2img script"),
    ("/sdapi/v1/txt2img", {"alwayson_scripts": {"Shout": {"args": ["x", "red"]}}}, "is a selectable script: send"),
    ("/sdapi/v1/txt2img", {"script_name": "watermark", "script_args": [True]}, "is an always-on script: send its"),
    ("/v1/jobs", {"scripts": {"watermark": {"opacity": 3}}}, "opacity: Input should be less than or equal to 1"),
    ("/v1/jobs", {"scripts": {"watermark": {"colour": "red"}}}, "has no arg 'colour'"),
    ("/v1/jobs", {"scripts": {"shout": {}, "repeat": {}}}, "one selectable script per request, not 2"),
    ("/v1/jobs", {"scripts": {"x/y/z plot": {"x": "cfg=1,900"}}}, "the cell CFG Scale = 900.0: cfg_scale"),
])
def test_bad_scripts_or_args_are_422_with_the_reason(client, path, extra, needle):
    answer = client.post(path, json={"prompt": "x", **SMALL, **extra})
    assert answer.status_code == 422 and needle in answer.text, answer.text


def test_the_guard_reads_the_text_scripts_write(studio):
    """A prompt a script altered, a watermark's text and the text a selectable run would paint into what it
    makes are screened before anything runs."""
    shouted = studio.generate(GenerationRequest(prompt="a cat", scripts={"shout": {"word": "forbidden"}}, **SMALL),
                              save=False)
    assert shouted.blocked and shouted.prompt_verdict.violated == ["S1"]
    assert shouted.request.prompt == "a cat, forbidden"
    marked = studio.generate(GenerationRequest(prompt="a cat", scripts={"watermark": {"enabled": True,
                                                                                      "text": "forbidden"}},
                                               **SMALL), save=False)
    assert marked.blocked
    labelled = studio.generate(GenerationRequest(prompt="a cat", scripts={"repeat": {"label": "forbidden"}}, **SMALL),
                               save=False)
    assert labelled.blocked and labelled.images == []
    assert studio.pipelines.loaded() == []  # the engine never ran


def test_a_selectable_run_makes_several_generations_and_its_strip_is_screened(studio):
    result = studio.generate(GenerationRequest(prompt="a cat", scripts={"repeat": [2], "watermark": {"enabled": True}},
                                               **SMALL), save=False)
    strip, *cells = result.images
    assert (strip.width, strip.height) == (64, 32) and strip.infotext == "a cat\nRepeat: 2"
    assert [cell.seed for cell in cells] == [5, 6] and all("Watermark: guardforge" in c.infotext for c in cells)
    assert np.array_equal(np.asarray(strip.pil)[:, 32:], np.asarray(cells[1].pil))  # the cells as delivered
    checks = [row["checkpoint"] for row in studio.guard.audit.recent(20)]
    assert checks.count("output_image") == 3  # each cell, then the strip


def test_the_watermark_marks_its_corner_and_nothing_else(studio):
    plain = studio.generate(GenerationRequest(prompt="a cat", **{**SMALL, "width": 64, "height": 64}), save=False)
    args = {"enabled": True, "text": "mine", "position": "top-left", "opacity": 1.0, "size": 16}
    marked = studio.generate(GenerationRequest(prompt="a cat", scripts={"watermark": args},
                                               **{**SMALL, "width": 64, "height": 64}), save=False)
    before, after = np.asarray(plain.images[0].pil), np.asarray(marked.images[0].pil)
    changed = np.argwhere((before != after).any(axis=2))
    assert len(changed) > 20
    assert (changed.max(axis=0) < [32, 48]).all()  # within the text's box at the top left (rows, columns)
    assert (after == 255).all(axis=2).sum() > 20  # opacity 1: the white of the letters, exactly
    assert marked.images[0].infotext.endswith(
        "Watermark: mine, Watermark position: top-left, Watermark opacity: 1.0, Watermark size: 16")


def test_broken_entry_points_are_logged_and_skipped_and_pyproject_declares_the_watermark(plugin, caplog):
    import tomllib
    from importlib.metadata import EntryPoint

    from guardforge.scripts import ScriptRegistry
    from guardforge.scripts.registry import BUILTIN

    with caplog.at_level(logging.ERROR, logger="guardforge.scripts.registry"):
        names = [script.name for script in ScriptRegistry.from_entry_points()]
    assert names == ["watermark", "repeat", "shout", "xyz_plot"]
    assert "'broken'" in caplog.text and "'notascript'" in caplog.text and "not a subclass" in caplog.text
    declared = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    entries = declared["project"]["entry-points"]["guardforge.scripts"]
    found = ScriptRegistry.from_entry_points([EntryPoint(n, v, "guardforge.scripts") for n, v in entries.items()])
    assert [script.title for script in found] == ["Watermark", "X/Y/Z plot"]
    assert {ep.name: ep.value for ep in BUILTIN} == entries  # what an install made before them still runs


def test_cli_lists_scripts_and_generates_with_them(plugin, gf_home, monkeypatch, capsys):
    from guardforge.storage.outputs import read_infotext

    call = cli_caller(monkeypatch, capsys, {"GUARDFORGE_GUARD__POLICY": "off"})

    code, out, err = call("scripts", "list")
    assert code == 0 and "shout  (Shout, selectable, img2img and txt2img)" in out
    assert "  opacity = 0.5  [0.0..1.0]  (Opacity)" in out
    code, out, err = call("generate", "a cat", "-m", "tiny-sd", "--steps", "1", "--width", "32", "--height", "32",
                          "--script", "shout", "--script-arg", "word=again", "--script-arg", "tint=none",
                          "--script-arg", "watermark.enabled=true", "--script-arg", "watermark.size=8",
                          "--script-arg", "watermark.text=2026")
    assert code == 0, err
    made = out.split()[0]
    text = read_infotext(made)
    assert text.startswith("a cat, again\n") and "Shout: again" in text and "Watermark: 2026," in text
    # The watermark reads its args back from the image: --from-png makes the same pixels, watermark and all.
    code, out, err = call("generate", "--from-png", made, "-o", str(gf_home / "again"))
    assert code == 0, err
    again = out.split()[0]
    assert "Watermark: 2026, Watermark position: bottom-right" in read_infotext(again)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(made)))
    code, out, err = call("generate", "a cat", "-m", "tiny-sd", "--script", "shout", "--script", "watermark",
                          "--script-arg", "size=8")
    assert code == 2 and "say which script it is for, as NAME.size=" in err and len(err.strip().splitlines()) == 1
    code, out, err = call("generate", "a cat", "--script", "nope")
    assert code == 2 and "script 'nope' is not installed here" in err


def test_the_watermark_through_webuiapi_on_a_live_server(shared_server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=shared_server.port, steps=1)
    assert "watermark" in api.get_scripts()["txt2img"]
    result = api.txt2img(prompt="a blue square", seed=3, width=64, height=64,
                         alwayson_scripts={"Watermark": {"args": [True, "gf", "bottom-right", 1.0, 16]}})
    assert "Watermark: gf, Watermark position: bottom-right" in result.info["infotexts"][0]
    pixels = np.asarray(result.image.convert("RGB"))
    white = (pixels == 255).all(axis=2)
    assert white[32:, 32:].sum() > 10 and white[:32].sum() == 0  # the letters' white, at the bottom right only
