"""Variation seeds and outpainting through a live `guardforge serve` (with its UI): the real webuiapi client on
/sdapi/v1, httpx on the native /v1, gradio_client on the UI's Generate."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.ui_inputs import img2img_off, txt2img_off
from tests.livesrv import LiveServer, make_home, server_env
from tests.test_server import png_b64, wait_state


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("seeds-outpaint"), tiny_model_dir)
    write_embeddings(home / "models" / "embeddings")
    live = LiveServer(home, server_env(home, GUARDFORGE_LIMITS__MAX_WIDTH="128", GUARDFORGE_LIMITS__MAX_HEIGHT="128"),
                      ui=True).start()
    yield live
    live.stop()


def write_embeddings(folder):
    import torch
    from safetensors.torch import save_file

    from tests.test_engine_embeddings import write_a1111_pt

    folder.mkdir(parents=True)
    write_a1111_pt(folder / "sparkle.pt", torch.randn(3, 32))
    save_file({"emb_params": torch.randn(1, 768)}, str(folder / "sd15-only.safetensors"))


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
               *txt2img_off(seed_extras=(True, 8, 0.4, 16, 24)), api_name="/run_mode")
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
               *txt2img_off(seed_extras=(False, 8, 0.4, 16, 24)), api_name="/run_mode")
    [plain] = [j for j in client.get("/v1/jobs").json()["jobs"] if j["request"]["prompt"] == "ui plain"]
    assert plain["request"]["subseed_strength"] == 0 and plain["request"]["seed_resize_from_w"] == -1


def noise_png_b64(width: int, height: int) -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(b64: str):
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_native_outpaint_job(client):
    import base64

    import numpy as np

    init = noise_png_b64(32, 32)
    job = client.post("/v1/jobs", json={"prompt": "x", "steps": 2, "seed": 1, "init_image": init,
                                        "denoising_strength": 1.0, "mask_blur": 0,
                                        "outpaint": {"left": 16, "right": 16}}).json()
    done = wait_state(client, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    image = client.get(done["images"][0]["url"]).content
    out = decoded(base64.b64encode(image).decode())
    assert out.shape == (32, 64, 3)
    assert np.array_equal(out[:, 16:48], decoded(init))  # the old image, exactly, in the middle
    assert 'Outpaint: "left=16,right=16"' in done["result"]["images"][0]["infotext"]


def test_webuiapi_poor_mans_outpainting(server):
    import webuiapi
    from PIL import Image

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    assert api.get_scripts()["img2img"][:2] == ["poor man's outpainting", "controlnet"]
    init = Image.new("RGB", (32, 32), (30, 160, 60))
    # A1111's script_args: pixels, mask_blur, inpainting_fill (1: original), direction.
    result = api.img2img(images=[init], prompt="grass", seed=4, denoising_strength=0.9, width=512, height=512,
                         script_name="Poor man's outpainting", script_args=[16, 0, 1, ["left", "up"]])
    assert result.images[0].size == (48, 48)  # the image's own size, not the payload's 512 (tile size in A1111)
    assert result.images[0].crop((16, 16, 48, 48)).getcolors() == [(32 * 32, (30, 160, 60))]
    infotext = result.info["infotexts"][0]
    assert 'Outpaint: "left=16,up=16"' in infotext and "Masked content: original" in infotext
    assert "script_name" not in result.info["guardforge"]["ignored_fields"]
    # A script that is not installed is refused with the reason, as A1111 refuses it (422).
    with pytest.raises(RuntimeError, match="422.*loopback.* is not installed here"):
        api.img2img(images=[init], prompt="x", steps=1, denoising_strength=1.0, width=32, height=32,
                    script_name="loopback", script_args=[2])


@pytest.mark.parametrize("path, extra, needle", [
    ("/v1/jobs", {"outpaint": {"left": 12}}, "must be a multiple of 8"),
    ("/v1/jobs", {"outpaint": {"left": 8}, "mask": "x"}, "makes its own mask"),
    ("/v1/jobs", {"outpaint": {"left": 128}}, "outpainted width=160 is over this server's limit of 128"),
    ("/v1/jobs", {"outpaint": {"left": 64}, "width": 128}, "outpainted width=192 is over this server's limit"),
    ("/sdapi/v1/img2img", {"script_name": "poor man's outpainting", "script_args": [128, 4, 0, ["up"]]},
     "outpainted height=160 is over this server's limit of 128"),
    ("/sdapi/v1/img2img", {"script_name": "poor man's outpainting", "script_args": [16, 4, 0, ["sideways"]]},
     "must list some of left, right, up, down"),
    ("/sdapi/v1/img2img", {"script_name": "poor man's outpainting", "script_args": [12]}, "multiple of 8"),
    ("/sdapi/v1/img2img", {"mask": "x", "inpainting_fill": 7}, "inpainting_fill 7: give 0 to 3"),
])
def test_bad_outpaint_requests_are_422_with_a_reason(client, path, extra, needle):
    image = noise_png_b64(32, 32)
    body = {"prompt": "x", "steps": 2}
    body.update({"init_image": image} if path == "/v1/jobs" else {"init_images": [image]})
    if extra.get("mask") == "x":
        extra = {**extra, "mask": image}
    response = client.post(path, json={**body, **extra})
    assert response.status_code == 422, response.text
    assert needle in response.text


def test_the_ui_outpaint_sliders_reach_the_request(server, client, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    path = tmp_path / "start.png"
    Image.new("RGB", (32, 32), (10, 20, 200)).save(path)
    ui = Client(f"{server.url}/ui/", verbose=False)
    # img2img's Generate: ..., init image, strength, editor, the five seed extras, then left, right, up, down and
    # Masked content.
    ui.predict("ui outpaint", "", "tiny-sd", "Automatic", "Euler", "Automatic", 2, 7, 32, 32, 5,
               handle_file(str(path)), 0.9, None, *img2img_off(outpaint=(0, 16, 8, 0, "latent nothing")),
               api_name="/run_mode_1")
    [job] = [j for j in client.get("/v1/jobs").json()["jobs"] if j["request"]["prompt"] == "ui outpaint"]
    assert job["state"] == "succeeded", job
    assert job["request"]["outpaint"] == {"left": 0, "right": 16, "up": 8, "down": 0}
    assert job["request"]["inpainting_fill"] == "latent nothing"
    image = job["result"]["images"][0]
    assert (image["width"], image["height"]) == (48, 40)


def test_sdapi_embeddings_and_ti_hashes(server, client):
    import hashlib

    listed = client.get("/sdapi/v1/embeddings").json()
    assert listed == {
        "loaded": {"sparkle": {"step": 150, "sd_checkpoint": "a1b2c3d4", "sd_checkpoint_name": "sd15", "shape": 32,
                               "vectors": 3}},
        "skipped": {"sd15-only": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 768,
                                  "vectors": 1}}}
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a (sparkle:1.2) square", "steps": 1, "width": 32,
                                                      "height": 32})
    assert response.status_code == 200, response.text
    digest = hashlib.sha256((server.home / "models" / "embeddings" / "sparkle.pt").read_bytes()).hexdigest()[:12]
    assert f"TI hashes: \"sparkle: {digest}\"" in json.loads(response.json()["info"])["infotexts"][0]
    # One made for another family is refused at the door, with the reason.
    for path in ("/v1/jobs", "/sdapi/v1/txt2img"):
        refused = client.post(path, json={"prompt": "x", "negative_prompt": "sd15-only", "steps": 1})
        assert refused.status_code == 422, refused.text
        assert "'sd15-only' (768 wide) was made for another model family than this one (text encoder 32)" \
            in refused.text


def test_ui_png_info_fills_the_extra_seed_row(server, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a hexagon\nSteps: 5, Sampler: Euler, Schedule type: Automatic, CFG scale: 6, "
                                "Seed: 99, Size: 96x64, Model: tiny-sd, Variation seed: 12, Variation seed strength: "
                                "0.35, Seed resize from: 64x48, Outpaint: \"left=32\", Masked content: fill")
    path = tmp_path / "varied.png"
    Image.new("RGB", (96, 64)).save(path, pnginfo=info)
    ui = Client(f"{server.url}/ui/", verbose=False)
    # prompt, negative, model, VAE, sampler, schedule, steps, cfg, width, height, seed, the five extras, the text;
    # each a Gradio update.
    values = [v.get("value") if isinstance(v, dict) else v for v in ui.predict(handle_file(str(path)),
                                                                              api_name="/read_png")]
    assert values[0] == "a hexagon" and values[8:11] == [64, 64, 99]  # the size before the 32 px outpaint
    assert values[11:16] == [True, 12, 0.35, 64, 48]
