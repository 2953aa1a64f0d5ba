"""The web UI's Extras tab on a live server, through Gradio's own client: an upload upscaled by an ESRGAN file, and
the reasons for what cannot be done."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.ui_inputs import txt2img_off
from tests.test_upscalers import picture


@pytest.fixture(scope="module")
def client(shared_server):
    from gradio_client import Client

    client = Client(f"{shared_server.url}/ui/", verbose=False)
    yield client
    client.close()


def test_the_extras_tab_upscales_an_upload(client, tmp_path):
    from gradio_client import handle_file

    source = tmp_path / "small.png"
    picture(12, 8).save(source)
    upscaled, info = client.predict(handle_file(str(source)), "tiny-esrgan", 2, "None", 0,
                                    api_name="/upscale_image")
    assert Image.open(upscaled).size == (24, 16)
    assert info.startswith("24x16 in ") and "Postprocess upscaler: tiny-esrgan" in info
    upscaled, info = client.predict(handle_file(str(source)), "tiny-esrgan", 2, "None", 0, "Scale to", 40, 40, True,
                                    api_name="/upscale_image")
    assert Image.open(upscaled).size == (40, 40) and "Postprocess upscale to: 40x40" in info


def test_the_extras_tab_says_why_not(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    source = tmp_path / "small.png"
    picture(100, 100).save(source)
    with pytest.raises(AppError, match="over this server's limit of 100000 pixels"):
        client.predict(handle_file(str(source)), "Lanczos", 8, "None", 0, api_name="/upscale_image")
    with pytest.raises(AppError, match="gone is not in the list of choices"):  # Gradio's own check
        client.predict(handle_file(str(source)), "gone", 2, "None", 0, api_name="/upscale_image")


def test_the_txt2img_tab_runs_hires_fix(client):
    from gradio_client.exceptions import AppError

    fields = ("", "tiny-sd", "Automatic", "Euler a", "Automatic", 2, 7, 32, 32, 3, None, 0.75, None)
    hires = (True, "Latent (bicubic)", 2, 2, 0.6, 0, 0, "Use same sampler", "", "")
    progress, gallery, infotext, verdict = client.predict("a hires square", *fields, *txt2img_off(hires=hires), api_name="/run_mode")
    assert 'data-state="done"' in progress and len(gallery) == 1
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    assert "Size: 32x32" in infotext and "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent (bicubic)" in infotext
    assert "Denoising strength: 0.6" in infotext
    off = (False, *hires[1:])
    progress, gallery, infotext, _ = client.predict("a plain square", *fields, *txt2img_off(hires=off), api_name="/run_mode")
    assert Image.open(gallery[0]["image"]).size == (32, 32) and "Hires" not in infotext
    with pytest.raises(AppError, match="hires fix: the upscaled width 4096"):
        client.predict("a huge square", *fields[:7], 1024, 1024, *fields[9:], *txt2img_off(hires=(True, "Lanczos", 4, *hires[3:])),
                       api_name="/run_mode")


def test_png_info_fills_the_hires_section(client, tmp_path):
    from gradio_client import handle_file
    from PIL.PngImagePlugin import PngInfo

    def png(text: str):
        info = PngInfo()
        info.add_text("parameters", text)
        path = tmp_path / f"{len(text)}.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        return handle_file(str(path))

    base = "a fox\nSteps: 5, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 9, Size: 32x32, Model: tiny-sd"
    hires = ", Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Latent (nearest), " \
            "Hires prompt: a red fox"
    def values(answer):  # Gradio's client hands over each update as {"__type__": "update", "value": ...}
        return [part.get("value") for part in answer[:-1]]

    filled = values(client.predict(png(base + hires), api_name="/read_png"))
    assert filled[:2] == ["a fox", ""] and filled[8:10] == [32, 32]
    assert filled[11:16] == [False, -1, 0, 0, 0]
    assert filled[16:26] == [True, "Latent (nearest)", 1.5, 3, 0.45, 0, 0, "Use same sampler", "a red fox", ""]
    assert filled[26] == "None"  # no refiner in the image: the picker is reset
    assert values(client.predict(png(base), api_name="/read_png"))[16] is False
    refined = values(client.predict(png(base + ", Refiner: tiny-xl-refiner [0123456789], Refiner switch at: 0.6"),
                                    api_name="/read_png"))
    assert refined[26:28] == ["tiny-xl-refiner", 0.6]
