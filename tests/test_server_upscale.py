"""Upscaling over HTTP on a real server: A1111's /sdapi/v1/upscalers, /extra-single-image (through the real webuiapi
client) and /extra-batch-images, the native /v1/upscalers and /v1/upscale, and `guardforge upscale`."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_upscalers import LargeOrRedIsUnsafe, b64, picture
from tests.tiny_upscalers import rrdb_state, srvgg_state, write_safetensors


def _home(root):
    models = root / "home" / "models"
    write_safetensors(models / "ESRGAN" / "tiny-esrgan.safetensors", rrdb_state(nb=1))
    write_safetensors(models / "RealESRGAN" / "tiny-x2plus.safetensors", rrdb_state(unshuffle=2, nb=1, seed=1))
    write_safetensors(models / "RealESRGAN" / "tiny-compact.safetensors", srvgg_state(seed=2))
    return root / "home"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from guardforge.db import Database
    from guardforge.guard.audit import AuditLog
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.settings import Limits, Settings
    from guardforge.studio import Studio
    from tests.test_server_hardening import InProcessServer

    home = _home(tmp_path_factory.mktemp("upscale-server"))
    settings = Settings(home=home, device="cpu", limits=Limits(max_image_pixels=200_000, max_batch_size=2,
                                                                 max_n_iter=1))
    studio = Studio(settings, guard=Guard(load_policy("default"), image_backend=LargeOrRedIsUnsafe(),
                                          audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))
    with InProcessServer(studio, start_workers=False) as live:
        yield live


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def decoded(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def grey(size=(12, 8)) -> Image.Image:
    return Image.new("RGB", size, (90, 90, 90))


def test_upscalers_are_listed_as_a1111_lists_them(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    listed = api.get_upscalers()
    assert [u["name"] for u in listed][:3] == ["None", "Lanczos", "Nearest"]
    models = {u["name"]: u for u in listed if u["model_name"]}
    assert {name: u["scale"] for name, u in models.items()} == {"tiny-compact": 4, "tiny-esrgan": 4,
                                                               "tiny-x2plus": 2}
    # A local caller of an open server sees the file (as in A1111); the set of keys is A1111's UpscalerItem.
    assert models["tiny-x2plus"]["model_path"].endswith("RealESRGAN/tiny-x2plus.safetensors")
    assert listed[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}


def test_extra_single_image_through_webuiapi(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    image = picture(12, 8, seed=3)
    image.putpixel((0, 0), (0, 0, 0))
    result = api.extra_single_image(image=image, upscaler_1="tiny-x2plus", upscaling_resize=2)
    assert result.image.size == (24, 16)
    assert "Postprocess upscale by: 2" in result.info and "Postprocess upscaler: tiny-x2plus" in result.info

    to_size = api.extra_single_image(image=grey(), upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=16,
                                     upscaling_resize_h=16, upscaler_2="tiny-esrgan",
                                     extras_upscaler_2_visibility=0.3, gfpgan_visibility=0.5)
    assert to_size.image.size == (16, 16)
    assert "Postprocess upscaler 2: tiny-esrgan" in to_size.info
    assert "guardforge ignored: gfpgan_visibility" in to_size.info  # reported, not silently dropped


def test_the_guard_on_both_sides_of_an_extras_call(client):
    blurred = client.post("/sdapi/v1/extra-single-image",
                          json={"image": b64(grey((10, 10))), "upscaler_1": "Nearest", "upscaling_resize": 4})
    assert blurred.status_code == 200, blurred.text
    assert "guardforge guard: blur" in blurred.json()["html_info"]
    assert decoded(blurred.json()["image"]).size == (40, 40)

    red = Image.new("RGB", (8, 8), (230, 10, 10))
    blocked = client.post("/sdapi/v1/extra-single-image",
                          json={"image": b64(red), "upscaler_1": "tiny-esrgan", "upscaling_resize": 2}).json()
    # The withheld tile, grey, as large as the image it stands for; the red input never comes back.
    tile = np.asarray(decoded(blocked["image"]).convert("RGB"))
    assert tile.shape == (16, 16, 3) and "guardforge guard: block" in blocked["html_info"]
    assert not ((tile[..., 0] > 200) & (tile[..., 1] < 100)).any()


def test_extra_batch_images(server, client):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    result = api.extra_batch_images(images=[grey((8, 8)), grey((16, 8))], upscaler_1="tiny-compact",
                                    upscaling_resize=2)
    assert [image.size for image in result.images] == [(16, 16), (32, 16)]
    too_many = client.post("/sdapi/v1/extra-batch-images",
                           json={"imageList": [{"data": b64(grey()), "name": str(i)} for i in range(3)],
                                 "upscaler_1": "Lanczos"})
    assert too_many.status_code == 422 and "over this server's limit of 2" in too_many.text


@pytest.mark.parametrize(("body", "size", "status", "reason"), [
    ({"upscaler_1": "no-such"}, (12, 8), 404, "no upscaler named 'no-such'"),
    ({"upscaler_1": "../../Stable-diffusion/x"}, (12, 8), 422, "leaves the models folder"),
    ({"upscaler_1": "Latent"}, (12, 8), 422, "hires fix only"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 100}, (12, 8), 422, "upscaling_resize"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 8}, (200, 200), 422, "over this server's limit of 200000 pixels"),
    # x1.5 of 200x200 fits the cap, but the x4 model makes the x4 image on the way
    ({"upscaler_1": "tiny-esrgan", "upscaling_resize": 1.5}, (200, 200), 422, "makes a 800x800 image first"),
    ({"upscaler_1": "Lanczos", "image": "not base64!"}, (12, 8), 422, "not valid base64"),
    ({"upscaler_1": "Lanczos", "resize_mode": 3}, (12, 8), 422, "resize_mode"),
])
def test_bad_extras_requests_get_a_4xx_with_the_reason(client, body, size, status, reason):
    response = client.post("/sdapi/v1/extra-single-image", json={"image": b64(grey(size)), **body})
    assert response.status_code == status, response.text
    assert reason in response.text


def test_native_routes(client):
    listed = client.get("/v1/upscalers").json()
    assert listed["upscalers"][0] == {"name": "None", "kind": "builtin", "scale": None}
    assert "Latent (nearest-exact)" in listed["latent_upscale_modes"]
    done = client.post("/v1/upscale", json={"image": b64(grey((8, 8))), "upscaler": "tiny-esrgan", "scale": 2})
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["width"], body["height"], body["action"], body["blocked"]) == (16, 16, "allow", False)
    assert decoded(body["image"]).size == (16, 16) and body["verdict"]["checkpoint"] == "output_image"
    assert client.post("/v1/upscale", json={"image": b64(grey()), "upscaler": "x", "sharpen": 1}).status_code == 422
    blocked = client.post("/v1/upscale", json={"image": b64(Image.new("RGB", (8, 8), (230, 0, 0)))}).json()
    assert blocked["blocked"] and blocked["image"] is None and blocked["input_verdict"]["action"] == "block"


def test_the_cli_upscales_and_says_why_not_in_one_line(tmp_path, monkeypatch, capsys):
    """The first run as users run it (a subprocess); the refusals through the same main() in-process."""
    from tests.inprocess_cli import cli_caller

    home = _home(tmp_path)
    env = {**os.environ, "GUARDFORGE_HOME": str(home), "GUARDFORGE_GUARD__POLICY": "off", "OMP_NUM_THREADS": "1",
           "GUARDFORGE_DEVICE": "cpu"}
    from PIL.PngImagePlugin import PngInfo

    source = tmp_path / "in.png"
    chunks = PngInfo()
    chunks.add_text("parameters", "a fox\nSteps: 5, Seed: 9, Size: 12x8")
    picture(12, 8).save(source, pnginfo=chunks)
    out = tmp_path / "out.png"

    done = subprocess.run([sys.executable, "-m", "guardforge", "upscale", str(source), "--upscaler", "tiny-x2plus",
                           "--scale", "2", "-o", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (24, 16) and f"{out}  24x16  action=allow" in done.stdout
    assert Image.open(out).info["parameters"] == "a fox\nSteps: 5, Seed: 9, Size: 12x8"  # kept, as A1111's extras
    cli = cli_caller(monkeypatch, capsys, {key: env[key] for key in ("GUARDFORGE_HOME", "GUARDFORGE_GUARD__POLICY",
                                                                      "GUARDFORGE_DEVICE")})
    for args, reason in [(["--upscaler", "nope"], "no upscaler named 'nope'"),
                         (["--scale", "0"], "scale: Input should be greater than 0"),
                         (["--upscaler", "../x"], "leaves the models folder")]:
        code, _, err = cli("upscale", str(source), *args, "-o", str(out))
        assert code == 2 and reason in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("upscale", str(tmp_path / "none.png"))
    assert code == 2 and "is not a file" in err


def test_the_source_infotext_stays_in_the_upscaled_png(client, tmp_path):
    """As A1111's extras: `parameters` of the source kept, `postprocessing` saying what was done."""
    from PIL.PngImagePlugin import PngInfo

    text = "a fox\nSteps: 5, Sampler: Euler a, CFG scale: 6, Seed: 9, Size: 12x8, Model: tiny-sd"
    chunks = PngInfo()
    chunks.add_text("parameters", text)
    buffer = io.BytesIO()
    grey().save(buffer, format="PNG", pnginfo=chunks)
    source = base64.b64encode(buffer.getvalue()).decode()
    extras = client.post("/sdapi/v1/extra-single-image",
                         json={"image": source, "upscaler_1": "tiny-esrgan", "upscaling_resize": 2}).json()
    native = client.post("/v1/upscale", json={"image": source, "upscaler": "Lanczos", "scale": 2}).json()
    for answer, upscaler in ((extras["image"], "tiny-esrgan"), (native["image"], "Lanczos")):
        image = decoded(answer)
        assert image.size == (24, 16) and image.info["parameters"] == text
        assert image.info["postprocessing"] == f"Postprocess upscale by: 2.0, Postprocess upscaler: {upscaler}"
        assert client.post("/sdapi/v1/png-info", json={"image": answer}).json()["info"] == text
