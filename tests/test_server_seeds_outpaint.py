"""Variation seeds and outpainting through a live `guardforge serve` (with its UI): the real webuiapi client on
/sdapi/v1, httpx on the native /v1, gradio_client on the UI's Generate."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.livesrv import LiveServer, make_home, server_env
from tests.test_server import png_b64, wait_state


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("seeds-outpaint"), tiny_model_dir)
    live = LiveServer(home, server_env(home, GUARDFORGE_LIMITS__MAX_WIDTH="128", GUARDFORGE_LIMITS__MAX_HEIGHT="128"),
                      ui=True).start()
    yield live
    live.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def test_webuiapi_variation_seeds(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    result = api.txt2img(prompt="a red square", seed=50, subseed=70, subseed_strength=0.25, batch_size=2,
                         width=32, height=32, seed_resize_from_w=16, seed_resize_from_h=16)
    info = result.info
    assert info["all_seeds"] == [50, 50] and info["all_subseeds"] == [70, 71]
    assert info["subseed"] == 70 and info["subseed_strength"] == 0.25
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (16, 16)
    assert "Variation seed: 71, Variation seed strength: 0.25, Seed resize from: 16x16" in info["infotexts"][1]
    ignored = info["guardforge"]["ignored_fields"]
    assert not [name for name in ignored if "subseed" in name or "seed_resize" in name], ignored
    # Strength 0 (webuiapi's default): the seeds count up again and a random subseed is reported, unused.
    plain = api.txt2img(prompt="a red square", seed=50, batch_size=2, width=32, height=32).info
    assert plain["all_seeds"] == [50, 51] and len(plain["all_subseeds"]) == 2
    assert "Variation" not in plain["infotexts"][0]


@pytest.mark.parametrize("payload, needle", [
    ({"subseed_strength": 1.5}, "subseed_strength"),
    ({"seed_resize_from_w": 64, "seed_resize_from_h": 0}, "needs both a width and a height"),
    ({"seed_resize_from_w": 512, "seed_resize_from_h": 64}, "seed_resize_from_w=512 is over"),
])
def test_bad_variation_fields_are_422_with_a_reason(client, payload, needle):
    for path in ("/sdapi/v1/txt2img", "/v1/jobs"):
        response = client.post(path, json={"prompt": "x", "steps": 1, "width": 32, "height": 32, **payload})
        assert response.status_code == 422, response.text
        assert needle in response.text


def test_native_job_reports_the_subseeds(client):
    job = client.post("/v1/jobs", json={"prompt": "x", "steps": 1, "width": 32, "height": 32, "seed": 3,
                                        "subseed": -1, "subseed_strength": 0.5, "n_iter": 2}).json()
    done = wait_state(client, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    subseeds = done["result"]["subseeds"]
    assert len(subseeds) == 2 and subseeds[1] == subseeds[0] + 1 and done["result"]["seeds"] == [3, 3]
    assert [image["subseed"] for image in done["result"]["images"]] == subseeds


def test_the_ui_extra_seed_row_reaches_the_request(server, client):
    from gradio_client import Client

    ui = Client(f"{server.url}/ui/", verbose=False)
    # txt2img's Generate: prompt, negative, model, VAE, sampler, schedule, steps, cfg, width, height, seed, init
    # image, strength, inpaint editor, then the seed extras: Extra, variation seed, strength, resize w, resize h.
    ui.predict("ui variation", "", "tiny-sd", "Automatic", "Euler", "Automatic", 1, 7, 32, 32, 5, None, 0.75, None,
               True, 8, 0.4, 16, 24, api_name="/run_mode")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = [j for j in client.get("/v1/jobs").json()["jobs"] if j["request"]["prompt"] == "ui variation"]
        if jobs and jobs[0]["state"] == "succeeded":
            break
        time.sleep(0.2)
    [job] = jobs
    asked = job["request"]
    assert (asked["subseed"], asked["subseed_strength"], asked["seed_resize_from_w"], asked["seed_resize_from_h"]) \
        == (8, 0.4, 16, 24)
    assert "Variation seed: 8" in job["result"]["images"][0]["infotext"]
    # Unticked, the row asks for nothing, whatever it holds.
    ui.predict("ui plain", "", "tiny-sd", "Automatic", "Euler", "Automatic", 1, 7, 32, 32, 5, None, 0.75, None,
               False, 8, 0.4, 16, 24, api_name="/run_mode")
    [plain] = [j for j in client.get("/v1/jobs").json()["jobs"] if j["request"]["prompt"] == "ui plain"]
    assert plain["request"]["subseed_strength"] == 0 and plain["request"]["seed_resize_from_w"] == -1
