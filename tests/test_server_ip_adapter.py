"""IP-Adapter over HTTP on a live `guardforge serve`: sd-webui-controlnet's IP-Adapter units through the real
webuiapi client (its ControlNetUnit with module "ip-adapter_clip_sd15"), the native request field, and 4xx answers
for what cannot run."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from tests.shared_server import client, server  # noqa: F401 (fixtures)
from tests.test_server_controlnet import b64, square


@pytest.fixture
def api(server):
    import webuiapi

    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)


def picture(colour="red") -> Image.Image:
    image = Image.new("RGB", (48, 48), colour)
    image.paste(Image.new("RGB", (24, 24), "yellow"), (12, 12))
    return image


def array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_listed_among_sd_webui_controlnets_models_and_modules(api, client):
    titles = api.controlnet_model_list()
    assert any(t.startswith("tiny-cn") for t in titles) and "ip-adapter_tiny" in [t.split(" [")[0] for t in titles]
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_h"} <= set(api.controlnet_module_list())


def test_webuiapi_ip_adapter_unit_round_trip(api):
    import webuiapi

    title = next(t for t in api.controlnet_model_list() if t.startswith("ip-adapter_tiny"))
    # alwayson_scripts={} on every call: webuiapi fills its mutable default dict with the units, and later calls in
    # the process would carry them (see tests/test_server_controlnet.py).
    kw = dict(prompt="a square", seed=3, width=64, height=64, cfg_scale=5)
    plain = api.txt2img(alwayson_scripts={}, **kw)

    def unit(weight=1.0, model=title):
        return webuiapi.ControlNetUnit(image=picture(), module="ip-adapter_clip_sd15", model=model, weight=weight)

    adapted = api.txt2img(alwayson_scripts={}, **kw, controlnet_units=[unit()])
    assert np.abs(array(adapted.image) - array(plain.image)).mean() > 1
    zero = api.txt2img(alwayson_scripts={}, **kw, controlnet_units=[unit(0.0)])
    assert np.array_equal(array(zero.image), array(plain.image))
    info = adapted.info["infotexts"][0]
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny [' in info and "Weight: 1," in info
    # The infotext read back (PNG info) and sent again gives the same image.
    from guardforge.engine.infotext import parse_infotext
    from guardforge.engine.ip_adapter import ip_adapter_from_infotext

    back = ip_adapter_from_infotext(parse_infotext(info))
    assert back["model"].startswith("ip-adapter_tiny [") and back["scale"] == 1
    # The A1111 title resolves.
    again = api.txt2img(alwayson_scripts={}, **kw, controlnet_units=[unit(back["scale"], back["model"])])
    assert np.array_equal(array(again.image), array(adapted.image))
    # With a ControlNet unit beside it: both act, and the unit keeps its index in infotext.
    canny = webuiapi.ControlNetUnit(image=square(), module="canny", model=next(
        t for t in api.controlnet_model_list() if t.startswith("tiny-cn")), processor_res=64)
    both = api.txt2img(alwayson_scripts={}, **kw, controlnet_units=[canny, unit()])
    only_canny = api.txt2img(alwayson_scripts={}, **kw, controlnet_units=[canny])
    assert not np.array_equal(array(both.image), array(only_canny.image))
    assert 'ControlNet 0: "Module: canny' in both.info["infotexts"][0]
    assert 'ControlNet 1: "Module: ip-adapter_clip_sd15' in both.info["infotexts"][0]
    # img2img too
    i2i = dict(images=[square()], prompt="a square", seed=4, denoising_strength=0.7, width=64, height=64)
    img = api.img2img(alwayson_scripts={}, **i2i)
    img_adapted = api.img2img(alwayson_scripts={}, **i2i, controlnet_units=[unit()])
    assert not np.array_equal(array(img.image), array(img_adapted.image))
    # A unit without an image reads the init image, as sd-webui-controlnet's do.
    no_image = webuiapi.ControlNetUnit(module="ip-adapter_clip_sd15", model=title)
    implicit = api.img2img(alwayson_scripts={}, **i2i, controlnet_units=[no_image])
    with_image = webuiapi.ControlNetUnit(image=square(), module="ip-adapter_clip_sd15", model=title)
    explicit = api.img2img(alwayson_scripts={}, **i2i, controlnet_units=[with_image])
    assert np.array_equal(array(implicit.image), array(explicit.image))
    assert not np.array_equal(array(implicit.image), array(img.image))


def unit_payload(**unit) -> dict:
    return {"prompt": "x", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args": [
        {"image": b64(picture()), "module": "ip-adapter_clip_sd15", "model": "ip-adapter_tiny", **unit}]}}}


@pytest.mark.parametrize("unit, status, needle", [
    ({"model": "nope"}, 404, "no ipadapter named 'nope'"),
    ({"model": "../ControlNet/tiny-cn"}, 422, "leaves the models folder"),
    ({"module": "ip-adapter_face_id_plus"}, 422, "FaceID"),
    ({"image": ""}, 422, "needs its own image"),
    ({"weight": 9}, 422, "scale"),
    ({"image": "bm90IGFuIGltYWdl"}, 422, "ip_adapter.image"),
])
def test_bad_ip_adapter_units_are_4xx(client, unit, status, needle):
    answer = client.post("/sdapi/v1/txt2img", json=unit_payload(**unit))
    assert answer.status_code == status, answer.text
    assert needle in answer.text


def test_two_ip_adapter_units_are_refused(client):
    payload = unit_payload()
    payload["alwayson_scripts"]["controlnet"]["args"] *= 2
    answer = client.post("/sdapi/v1/txt2img", json=payload)
    assert answer.status_code == 422 and "one IP-Adapter unit per request" in answer.text


def test_native_field_and_missing_encoder(client):
    body = {"prompt": "a square", "steps": 2, "width": 64, "height": 64, "seed": 1,
            "ip_adapter": {"image": b64(picture()), "model": "ip-adapter_tiny", "scale": 0.7}}
    missing = client.post("/v1/jobs", json={**body, "ip_adapter": {**body["ip_adapter"], "encoder": "clip_g"}})
    assert missing.status_code == 404 and "clip_vision" in missing.text, missing.text
    job = client.post("/v1/jobs", json=body).json()
    deadline = time.monotonic() + 120
    while (view := client.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert view["state"] == "succeeded", view
    assert view["request"]["ip_adapter"]["image"] == "<base64 image>"
    assert "Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny [" in view["result"]["images"][0]["infotext"]
