"""Policies that block every generated image, or every prompt: A1111 clients get 'blocked' placeholders of the
size the images were, or would have been, made at; /v1 gives no pixels."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.livesrv import make_home
from tests.test_server import TINY, wait_state

# Open-NSFW scores every image above this S12 threshold, so the embedded image guard blocks each output.
BLOCK_ALL = """
name: block-all-outputs
default: {threshold: 0.5, action: allow}
categories:
  S12: {threshold: 0.000001, action: block}
checkpoints: {prompt: false, input_image: false, output_image: true, training_data: false}
"""


# Every prompt scores above this S1 threshold: each request is refused before the model is loaded.
BLOCK_PROMPTS = """
name: block-all-prompts
default: {threshold: 0.5, action: allow}
categories:
  S1: {threshold: 0.000001, action: block}
checkpoints: {prompt: true, input_image: false, output_image: false, training_data: false}
"""


def _server_with_policy(tmp_path_factory, tiny_model_dir, name: str, policy_yaml: str):
    from guardforge.settings import GuardSettings, Settings
    from guardforge.studio import Studio
    from tests.test_server_hardening import InProcessServer

    root = tmp_path_factory.mktemp(name)
    policy = root / f"{name}.yaml"
    policy.write_text(policy_yaml)
    home = make_home(root, tiny_model_dir)
    # uvicorn in this process: the answers to blocked requests are under test, not the server's process, and
    # each `guardforge serve` would cost an interpreter and torch.
    studio = Studio(Settings(home=home, device="cpu", default_model="tiny-sd", guard=GuardSettings(policy=str(policy))))
    with InProcessServer(studio, start_workers=True) as live:
        yield live


@pytest.fixture(scope="module")
def prompt_blocking_server(tmp_path_factory, tiny_model_dir):
    yield from _server_with_policy(tmp_path_factory, tiny_model_dir, "blocked-prompts", BLOCK_PROMPTS)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    yield from _server_with_policy(tmp_path_factory, tiny_model_dir, "blocked", BLOCK_ALL)


def test_sdapi_answers_a_blocked_image_with_a_placeholder(server):
    body = {"prompt": "anything", "steps": 2, "width": 64, "height": 48, "batch_size": 2, "seed": 11}
    response = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert info["guardforge"]["actions"] == ["block", "block"]
    assert all("S12" in verdict["violated"] for verdict in info["guardforge"]["verdicts"])
    assert len(answer["images"]) == 2
    for encoded in answer["images"]:
        image = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")
        pixels = np.asarray(image)
        assert image.size == (64, 48)
        assert (pixels == 128).all(axis=2).mean() > 0.7  # grey background
        assert (pixels > 200).all(axis=2).sum() > 20  # the white "blocked" text


def test_native_api_withholds_blocked_pixels(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        job_id = client.post("/v1/jobs", json={"prompt": "anything", **TINY}).json()["id"]
        job = wait_state(client, job_id, {"succeeded", "failed"})
        assert job["state"] == "succeeded"
        [image] = job["images"]
        assert image["action"] == "block" and image["url"] is None
        response = client.get(f"/v1/images/{image['id']}")
        assert response.status_code == 404 and "withheld" in response.json()["detail"]


def test_a_blocked_prompt_without_a_size_gets_placeholders_at_the_models_native_size(server, prompt_blocking_server):
    body = {"prompt": "anything", "steps": 2, "batch_size": 2, "seed": 5}  # no width or height: the model's own
    made = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300).json()
    refused = httpx.post(f"{prompt_blocking_server.url}/sdapi/v1/txt2img", json=body, timeout=300).json()
    sizes = {name: [Image.open(io.BytesIO(base64.b64decode(e))).size for e in answer["images"]]
             for name, answer in (("made", made), ("refused", refused))}
    refused_info, made_info = json.loads(refused["info"]), json.loads(made["info"])
    assert refused_info["guardforge"]["blocked"] and not made_info["guardforge"]["blocked"]
    # The tiny model's native size (sample size 8, VAE factor 2), for images made and images refused alike.
    assert sizes["refused"] == sizes["made"] == [(16, 16)] * 2, sizes
    assert (refused_info["width"], refused_info["height"]) == (made_info["width"], made_info["height"]) == (16, 16)


def test_a_blocked_outpainting_gets_placeholders_of_the_outpainted_size(prompt_blocking_server):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 24), (10, 200, 10)).save(buffer, format="PNG")
    body = {"prompt": "anything", "steps": 2, "init_images": [base64.b64encode(buffer.getvalue()).decode()],
            "script_name": "poor man's outpainting", "script_args": [16, 4, 0, ["left", "down"]]}
    refused = httpx.post(f"{prompt_blocking_server.url}/sdapi/v1/img2img", json=body, timeout=300).json()
    info = json.loads(refused["info"])
    assert info["guardforge"]["blocked"]
    [placeholder] = [Image.open(io.BytesIO(base64.b64decode(e))) for e in refused["images"]]
    assert placeholder.size == (56, 40) and (info["width"], info["height"]) == (56, 40)
