"""ControlNet over HTTP on a live `guardforge serve`: sd-webui-controlnet's routes and alwayson_scripts units
through the real webuiapi client, and the native /v1 routes and request field through httpx."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.shared_server import IP_ADAPTERS, client, server  # noqa: F401 (fixtures)


def tiny_cn_title(api) -> str:
    """The test folder's ControlNet, by its A1111 title (the shipped tiny-shapes-canny is listed beside it)."""
    return next(t for t in api.controlnet_model_list() if t.split(" [")[0] == "tiny-cn")


@pytest.fixture
def api(server):
    import webuiapi

    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)


def square(size=64) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="black", width=3)
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_webuiapi_lists_and_detects(api):
    import cv2

    assert api.controlnet_version() == 2
    # The folder's, then the one the package ships; A1111's titles, "name [hash]".
    titles = api.controlnet_model_list()
    names = [t.split(" [")[0] for t in titles]
    assert [n for n in names if n not in IP_ADAPTERS] == ["tiny-cn", "tiny-shapes-canny"]
    modules = api.controlnet_module_list()
    assert modules[0] == "none" and {"canny", "threshold", "tile_resample", "shuffle", "invert"} <= set(modules)
    assert "openpose" not in modules  # needs weights guardforge does not have
    answer = api.controlnet_detect([square()], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    assert answer.info == "Success"
    detected = np.asarray(answer.image.convert("RGB"))
    assert (detected[..., 0] == cv2.Canny(np.asarray(square()), 100, 200)).all()


def test_module_list_with_aliases_and_the_unavailable_ones(client):
    body = client.get("/controlnet/module_list", params={"alias_names": True}).json()
    assert "invert (from white bg & black line)" in body["module_list"]
    assert body["module_detail"]["canny"]["sliders"][1] == {"name": "Canny Low Threshold", "value": 100, "min": 1,
                                                            "max": 255, "step": 1}
    assert "MiDaS" in body["guardforge_unavailable"]["depth_midas"]
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_webuiapi_txt2img_with_units(api):
    import webuiapi

    plain = api.txt2img(prompt="a square", seed=3, width=64, height=64, cfg_scale=5)
    title = tiny_cn_title(api)
    unit = webuiapi.ControlNetUnit(image=square(), module="canny", model=title, weight=1.0, processor_res=64,
                                   threshold_a=100, threshold_b=200, control_mode=1, resize_mode="Just Resize")
    # alwayson_scripts={} on every call with units: webuiapi puts them into its mutable default dict, so every later
    # call in the process, in any test, would carry them.
    controlled = api.txt2img(prompt="a square", seed=3, width=64, height=64, cfg_scale=5, alwayson_scripts={},
                             controlnet_units=[unit])
    difference = np.abs(np.asarray(controlled.image, dtype=np.int16) - np.asarray(plain.image, dtype=np.int16))
    assert difference.mean() > 1
    info = controlled.info["infotexts"][0]
    assert ('ControlNet 0: "Module: canny, Model: tiny-cn [' in info and "Weight: 1, Resize Mode: Just Resize, "
            "Processor Res: 64, Threshold A: 100, Threshold B: 200" in info
            and "Control Mode: My prompt is more important" in info)
    # A disabled unit, or one whose model is "None", is skipped as sd-webui-controlnet skips it.
    off = webuiapi.ControlNetUnit(image=square(), module="canny", model=title, enabled=False)
    none = webuiapi.ControlNetUnit(image=square(), module="canny", model="None")
    skipped = api.txt2img(prompt="a square", seed=3, width=64, height=64, cfg_scale=5, alwayson_scripts={},
                          controlnet_units=[off, none])
    assert np.array_equal(np.asarray(skipped.image), np.asarray(plain.image))
    assert "ControlNet" not in skipped.info["infotexts"][0]


def test_an_a1111_call_keeps_no_control_image(api, client):
    """save_images false (A1111's default): once answered, the job keeps no pixels, its unit images included."""
    import webuiapi

    title = tiny_cn_title(api)
    result = api.txt2img(prompt="a square", seed=3, width=64, height=64, save_images=False,
                         alwayson_scripts={},
                         controlnet_units=[webuiapi.ControlNetUnit(image=square(), module="canny", model=title)])
    job = client.get(f"/v1/jobs/{result.info['guardforge']['job_id']}").json()
    assert job["request"]["controlnet"][0]["image"] is None and job["request"]["controlnet"][0]["module"] == "canny"


def test_webuiapi_img2img_unit_reads_the_init_image(api):
    import webuiapi

    title = tiny_cn_title(api)
    init = square()
    implicit = api.img2img(images=[init], prompt="a square", seed=4, denoising_strength=0.7, width=64, height=64,
                           alwayson_scripts={}, controlnet_units=[webuiapi.ControlNetUnit(module="canny", model=title)])
    explicit = api.img2img(images=[init], prompt="a square", seed=4, denoising_strength=0.7, width=64, height=64,
                           alwayson_scripts={},
                           controlnet_units=[webuiapi.ControlNetUnit(image=init, module="canny", model=title)])
    assert np.array_equal(np.asarray(implicit.image), np.asarray(explicit.image))


@pytest.mark.parametrize("unit, status, needle", [
    ({"module": "depth", "model": "tiny-cn"}, 422, "'depth' is unavailable: it needs the MiDaS depth"),
    ({"module": "canny", "model": "nope"}, 404, "no controlnet named 'nope'"),
    ({"module": "canny", "model": "tiny-cn", "control_mode": 7}, 422, "control_mode 7 is not one of"),
    ({"module": "canny", "model": "tiny-cn", "weight": 9}, 422, "weight"),
    ({"module": "canny", "model": "tiny-cn", "image": ""}, 422, "no image, and there is no init_image"),
    ({"module": "canny", "model": "tiny-cn", "image": "bm90IGFuIGltYWdl"}, 422, "controlnet[0].image"),
])
def test_bad_units_are_4xx_with_a_reason(client, unit, status, needle):
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64,
               "alwayson_scripts": {"controlnet": {"args": [{"image": b64(square()), **unit}]}}}
    answer = client.post("/sdapi/v1/txt2img", json=payload)
    assert answer.status_code == status, answer.text
    assert needle in answer.text


def test_native_routes_and_request_field(client):
    models = client.get("/v1/controlnet/models").json()
    assert [(m["name"], m["format"], m["source"]) for m in models] == [("tiny-cn", "diffusers", "user"),
                                                                        ("tiny-shapes-canny", "diffusers", "shipped")]
    modules = {m["name"]: m for m in client.get("/v1/controlnet/modules").json()}
    assert modules["canny"]["available"] and not modules["openpose"]["available"]
    assert "OpenPose" in modules["openpose"]["reason"]
    detected = client.post("/v1/controlnet/detect", json={"image": b64(square()), "module": "invert"}).json()
    assert detected["action"] == "allow"
    inverted = np.asarray(Image.open(io.BytesIO(base64.b64decode(detected["image"]))).convert("RGB"))
    assert (inverted == 255 - np.asarray(square())).all()
    assert client.post("/v1/controlnet/detect", json={"image": b64(square()), "module": "hed"}).status_code == 422

    job = client.post("/v1/jobs", json={"prompt": "a square", "steps": 2, "width": 64, "height": 64, "seed": 1,
                                        "controlnet": [{"image": b64(square()), "module": "canny",
                                                        "model": "tiny-cn", "guidance_end": 0.5}]}).json()
    import time

    deadline = time.monotonic() + 120
    while (view := client.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert view["state"] == "succeeded", view
    assert view["request"]["controlnet"][0]["image"] == "<base64 image>"  # not echoed on every poll
    assert "Guidance End: 0.5" in view["result"]["images"][0]["infotext"]


def test_a_controlnet_for_another_architecture_is_a_422(server, client):
    """Refused at submit from the configs: over A1111's API a worker-side failure would have been its 500."""
    from diffusers import ControlNetModel

    ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, in_channels=4, cross_attention_dim=48,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=8,
                    norm_num_groups=32, conditioning_embedding_out_channels=(16, 32)).save_pretrained(
        server.home / "models" / "ControlNet" / "wide-cn")
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args": [
        {"image": b64(square()), "module": "canny", "model": "wide-cn"}]}}}
    answer = client.post("/sdapi/v1/txt2img", json=payload)
    assert answer.status_code == 422 and "'wide-cn' does not fit checkpoint 'tiny-sd'" in answer.text
