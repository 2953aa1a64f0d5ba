"""Choosing a VAE over HTTP on a live `guardforge serve`: A1111's override_settings.sd_vae and /options sd_vae
(through httpx and the real webuiapi client), the native /v1/jobs `vae`, and the VAE in infotext and PNG info."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.shared_server import client, server  # noqa: F401 (fixtures)

SMALL = {"steps": 2, "width": 32, "height": 32, "seed": 4, "sampler_name": "Euler a"}


def txt2img(client, **payload):
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a green triangle", **SMALL, **payload})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))))
    return image, json.loads(body["info"])


def test_override_settings_sd_vae_picks_the_vae_of_one_request(client):
    own, own_info = txt2img(client)
    other, info = txt2img(client, override_settings={"sd_vae": "alt-vae", "sd_model_checkpoint": "tiny-sd"})
    automatic, automatic_info = txt2img(client, override_settings={"sd_vae": "Automatic"})

    assert not np.array_equal(own, other) and np.array_equal(own, automatic)
    assert info["sd_vae_name"] == "alt-vae" and len(info["sd_vae_hash"]) == 10
    assert f"VAE hash: {info['sd_vae_hash']}, VAE: alt-vae" in info["infotexts"][0]
    assert "override_settings.sd_vae" not in info["guardforge"]["ignored_fields"]
    assert own_info["sd_vae_name"] is None and own_info["sd_vae_hash"] is None
    assert automatic_info["sd_vae_name"] is None and "VAE" not in automatic_info["infotexts"][0]


def test_an_unknown_vae_is_refused_before_any_job(client):
    before = len(client.get("/v1/jobs").json()["jobs"])
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "override_settings": {"sd_vae": "nope"}})
    assert answer.status_code == 404, answer.text
    assert "no vae named 'nope'; known: alt-vae" in answer.text
    answer = client.post("/v1/jobs", json={"prompt": "x", "steps": 2, "vae": "nope"})
    assert answer.status_code == 404, answer.text
    answer = client.post("/sdapi/v1/options", json={"sd_vae": "nope"})
    assert answer.status_code == 404, answer.text
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"
    assert len(client.get("/v1/jobs").json()["jobs"]) == before


def test_native_jobs_take_a_vae(client):
    created = client.post("/v1/jobs", json={"prompt": "a blue circle", "steps": 2, "width": 32, "height": 32,
                                            "vae": "alt-vae"})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    for _ in range(600):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert job["state"] == "succeeded", job
    assert (job["request"]["vae"], job["result"]["vae"]) == ("alt-vae", "alt-vae")
    [image] = job["images"]
    png = client.get(image["url"])
    assert png.status_code == 200
    read = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png.content).decode()}).json()
    assert read["parameters"]["VAE"] == "alt-vae" and len(read["parameters"]["VAE hash"]) == 10


def test_webuiapi_sets_the_callers_vae_in_options(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)
    assert [vae["model_name"] for vae in api.get_sd_vae()] == ["alt-vae"]
    try:
        api.set_options({"sd_vae": "alt-vae"})
        assert api.get_options()["sd_vae"] == "alt-vae"
        made = api.txt2img(prompt="a yellow square", seed=4, width=32, height=32, save_images=True)
        assert made.info["sd_vae_name"] == "alt-vae"
        # A request's override_settings wins over the caller's option.
        own = api.txt2img(prompt="a yellow square", seed=4, width=32, height=32,
                          override_settings={"sd_vae": "None"})
        assert own.info["sd_vae_name"] is None
        assert not np.array_equal(np.asarray(made.image), np.asarray(own.image))
        parameters = api.png_info(made.image).parameters
        assert parameters["VAE"] == "alt-vae" and parameters["VAE hash"] == made.info["sd_vae_hash"]
    finally:
        api.set_options({"sd_vae": "Automatic"})
    assert api.get_options()["sd_vae"] == "Automatic"
