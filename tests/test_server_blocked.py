"""A policy that blocks every generated image: A1111 clients get same-size 'blocked' placeholders, /v1 no pixels."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.livesrv import LiveServer, make_home, server_env
from tests.test_server import TINY, wait_state

# Open-NSFW scores every image above this S12 threshold, so the embedded image guard blocks each output.
BLOCK_ALL = """
name: block-all-outputs
default: {threshold: 0.5, action: allow}
categories:
  S12: {threshold: 0.000001, action: block}
checkpoints: {prompt: false, input_image: false, output_image: true, training_data: false}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("blocked")
    policy = root / "block-all.yaml"
    policy.write_text(BLOCK_ALL)
    home = make_home(root, tiny_model_dir)
    live = LiveServer(home, server_env(home, GUARDFORGE_GUARD__POLICY=str(policy))).start()
    yield live
    live.stop()


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
