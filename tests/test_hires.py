"""Hires fix on the shipped tiny-shapes model and a tiny SD model: A1111's sizes, both passes run (progress counts
both), latent and pixel upscalers (an ESRGAN file among them), the infotext written as A1111 writes it and read
back into the same request and the same image, the hires prompt guarded, limits, and A1111 payloads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from guardforge.engine.hires import HiresOptions, hires_sizes
from guardforge.engine.infotext import parse_infotext, request_from_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest, ModelNotFound
from tests.test_engine_prompts import sdxl  # noqa: F401 (a fixture: the tiny SDXL pipeline)
from tests.tiny_upscalers import rrdb_state, write_safetensors


def studio_at(home, **limits):
    from guardforge.settings import GuardSettings, Limits, Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=home, device="cpu", guard=GuardSettings(policy="off"), limits=Limits(**limits)))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """The shipped tiny-shapes (the default model: 64 px, 8 latent channels) and an ESRGAN file."""
    home = tmp_path_factory.mktemp("hires") / "home"
    write_safetensors(home / "models" / "ESRGAN" / "tiny-esrgan.safetensors", rrdb_state(nb=1))
    return studio_at(home, max_width=256, max_height=256)


def generate(studio, events=None, **fields):
    request = GenerationRequest(**{"prompt": "a red circle on a blue background", "steps": 3, "seed": 5, **fields})
    return studio.generate(request, on_progress=events.append if events is not None else None, save=False)


def pixels(image) -> np.ndarray:
    return np.asarray(image.pil.convert("RGB"), dtype=np.int16)


def test_a1111s_target_sizes():
    # by scale; one side given keeps the aspect; both given crop to fill them (A1111's truncate_x/y)
    assert hires_sizes(512, 512, HiresOptions(scale=2)) == ((1024, 1024), (1024, 1024))
    assert hires_sizes(512, 768, HiresOptions(resize_x=1024)) == ((1024, 1536), (1024, 1536))
    assert hires_sizes(512, 768, HiresOptions(resize_y=1024)) == ((680, 1024), (680, 1024))
    assert hires_sizes(512, 512, HiresOptions(resize_x=1024, resize_y=512)) == ((1024, 1024), (1024, 512))
    assert hires_sizes(64, 64, HiresOptions(scale=1.3)) == ((80, 80), (80, 80))  # 83 rounded down to 8s


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos", "tiny-esrgan"])
def test_both_passes_run_at_the_hires_size(studio, upscaler):
    events = []
    result = generate(studio, events, batch_size=2,
                      hires=HiresOptions(scale=1.5, upscaler=upscaler, steps=4, denoising_strength=0.5))
    assert [(image.width, image.height) for image in result.images] == [(96, 96), (96, 96)]
    # 3 first-pass steps, then int(4 x 0.5) = 2 of the second pass: the bar counts both, to the end.
    assert [(event.step, event.total) for event in events] == [(n, 5) for n in range(1, 6)]
    assert result.images[0].seed == 5 and result.images[1].seed == 6


def test_strength_zero_is_the_upscale_alone_and_the_second_pass_changes_it(studio):
    plain = generate(studio)
    upscaled = plain.images[0].pil.convert("RGB").resize((128, 128), Image.LANCZOS)
    only_upscaled = generate(studio, hires=HiresOptions(upscaler="Lanczos", denoising_strength=0))
    assert np.array_equal(pixels(only_upscaled.images[0]), np.asarray(upscaled, dtype=np.int16))
    second = generate(studio, hires=HiresOptions(upscaler="Lanczos", denoising_strength=0.6))
    assert np.abs(pixels(second.images[0]) - np.asarray(upscaled, dtype=np.int16)).mean() > 1


def test_latent_and_pixel_upscales_differ(studio):
    latent = generate(studio, hires=HiresOptions(upscaler="Latent", denoising_strength=0.5))
    pixel = generate(studio, hires=HiresOptions(upscaler="Nearest", denoising_strength=0.5))
    assert latent.images[0].width == pixel.images[0].width == 128
    assert np.abs(pixels(latent.images[0]) - pixels(pixel.images[0])).mean() > 1


def test_the_infotext_is_a1111s_and_reproduces_the_image(studio):
    options = HiresOptions(scale=1.5, upscaler="Latent (bicubic)", steps=4, denoising_strength=0.55,
                           sampler="DPM++ 2M", prompt="a green square", negative_prompt="blurry", cfg_scale=4.5)
    first = generate(studio, negative_prompt="noise", hires=options).images[0]
    params = parse_infotext(first.infotext)
    # Size is the first pass's, as A1111 writes it; the hires keys say the rest.
    assert (params["Size-1"], params["Size-2"], params["Denoising strength"]) == ("64", "64", "0.55")
    assert {k: v for k, v in params.items() if k.startswith("Hires")} == {
        "Hires upscale": "1.5", "Hires steps": "4", "Hires upscaler": "Latent (bicubic)",
        "Hires sampler": "DPM++ 2M", "Hires prompt": "a green square", "Hires negative prompt": "blurry",
        "Hires CFG Scale": "4.5"}
    again = request_from_infotext(first.infotext)
    assert again.hires == options and (again.width, again.height) == (64, 64)
    # what --from-png runs: the same request, so the same pixels
    remade = studio.generate(again, save=False).images[0]
    assert (remade.width, remade.height) == (96, 96)
    assert np.array_equal(pixels(remade), pixels(first))


def test_a1111s_own_hires_infotext_is_read():
    text = ("a castle\nNegative prompt: fog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
            "Seed: 1, Size: 512x768, Model hash: 0123456789, Model: sd15, Denoising strength: 0.45, "
            "Hires resize: 1024x0, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, Version: v1.10.1")
    request = request_from_infotext(text)
    assert request.hires == HiresOptions(resize_x=1024, resize_y=0, steps=10, upscaler="R-ESRGAN 4x+",
                                         denoising_strength=0.45)
    assert (request.width, request.height) == (512, 768)


def test_limits_and_names_are_checked_before_anything_runs(studio):
    with pytest.raises(InvalidRequest, match="hires fix: the upscaled width 512 .* limit of 256"):
        studio.generate(GenerationRequest(prompt="x", width=64, height=64, hires=HiresOptions(scale=8)))
    with pytest.raises(InvalidRequest, match="upscaled width 512"):  # the native size, known once loaded
        generate(studio, hires=HiresOptions(scale=8))
    with pytest.raises(InvalidRequest, match="hires.steps=500 is over"):
        studio.generate(GenerationRequest(prompt="x", hires=HiresOptions(steps=500)))
    with pytest.raises(ModelNotFound, match="no upscaler named 'gone'"):
        studio.engine.check(GenerationRequest(prompt="x", hires=HiresOptions(upscaler="gone")))
    with pytest.raises(InvalidRequest, match="lora"):
        studio.engine.check(GenerationRequest(prompt="x", hires=HiresOptions(prompt="y <lora:style:1>")))
    with pytest.raises(ValueError, match="hires fix is for txt2img"):
        GenerationRequest(prompt="x", init_image="aGk=", hires=HiresOptions())
    with pytest.raises(ValueError, match="unknown sampler"):
        HiresOptions(sampler="Warp drive")


def test_the_hires_prompt_is_guarded_like_the_prompt(tmp_path, tiny_model_dir):
    from guardforge.db import Database
    from guardforge.guard.audit import AuditLog
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings
    from guardforge.studio import Studio, request_texts
    from tests.livesrv import make_home
    from tests.test_studio_guard_texts import ATTACK, KnowsNude

    home = make_home(tmp_path, tiny_model_dir)
    studio = Studio(Settings(home=home, device="cpu", default_model="tiny-sd"),
                    guard=Guard(load_policy("default"), text_backend=KnowsNude(),
                                audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))
    base = dict(prompt="a woman on a beach", steps=2, width=16, height=16, seed=1)
    request = GenerationRequest(**base, hires=HiresOptions(prompt="a nude woman"))
    assert request_texts(request).hires_prompt == "a nude woman"
    blocked = studio.generate(request, save=False)
    assert blocked.blocked and blocked.prompt_verdict.action == "block" and blocked.images == []
    by_negation = studio.generate(GenerationRequest(**base, hires=HiresOptions(negative_prompt=ATTACK)), save=False)
    assert by_negation.blocked and "negative prompt" in by_negation.prompt_verdict.reason
    fine = studio.generate(GenerationRequest(**base, hires=HiresOptions(prompt="a woman in a red coat")), save=False)
    assert not fine.blocked and (fine.images[0].width, fine.images[0].height) == (32, 32)


def test_an_a1111_payload_becomes_the_same_hires_request():
    from guardforge.a1111.adapter import to_generation_request
    from guardforge.a1111.schemas import Txt2ImgPayload

    payload = Txt2ImgPayload(prompt="a fox", width=64, height=64, steps=6, sampler_name="Euler", enable_hr=True,
                             hr_scale=1.5, hr_upscaler="Latent (antialiased)", hr_second_pass_steps=3,
                             denoising_strength=0.4, hr_resize_x=0, hr_resize_y=0, hr_sampler_name="Use same sampler",
                             hr_scheduler="karras", hr_prompt="", hr_negative_prompt="", hr_checkpoint_name="other",
                             firstphase_width=0, hr_cfg=3)
    request, ignored = to_generation_request(payload, "tiny-sd")
    assert request.hires == HiresOptions(scale=1.5, upscaler="Latent (antialiased)", steps=3,
                                         denoising_strength=0.4, schedule="Karras", cfg_scale=3)
    assert ignored == ["hr_checkpoint_name"]
    off, ignored = to_generation_request(Txt2ImgPayload(prompt="a fox", enable_hr=False, hr_scale=2,
                                                        hr_upscaler="Latent", denoising_strength=0.7), "tiny-sd")
    assert off.hires is None and ignored == ["denoising_strength"]
    with pytest.raises(InvalidRequest, match="hr_second_pass_steps"):
        to_generation_request(Txt2ImgPayload(prompt="a fox", enable_hr=True, hr_second_pass_steps=-1), "tiny-sd")


def test_the_cli_makes_a_hires_image_and_from_png_remakes_it(tmp_path, monkeypatch, capsys):
    """The first run as users run it (a subprocess, where diffusers' warnings reach stderr); the rest through the
    same main() in-process, which saves four interpreter start-ups."""
    import os
    import subprocess
    import sys

    from tests.inprocess_cli import cli_caller

    env = {"GUARDFORGE_HOME": str(tmp_path / "home"), "GUARDFORGE_GUARD__POLICY": "off", "GUARDFORGE_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "guardforge", "generate", "a red circle", "--steps", "3", "--seed", "9",
         "--hires-scale", "1.5", "--hires-upscaler", "Latent (nearest)", "--hires-steps", "4", "--hires-strength",
         "0.5", "-o", str(tmp_path / "a")],
        env={**os.environ, **env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr
    # diffusers' from_pipe warned "modules ... should be kept in float32: []" (about no module) on each latent run
    assert "kept in float32" not in done.stderr, done.stderr
    first = done.stdout.split()[0]
    assert Image.open(first).size == (96, 96)

    call = cli_caller(monkeypatch, capsys, env)

    def cli(*args):
        return call("generate", *args)

    code, out, err = cli("--from-png", first, "-o", str(tmp_path / "b"))
    assert code == 0, err
    again = out.split()[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    code, out, err = cli("--from-png", first, "--no-hires", "-o", str(tmp_path / "c"))
    assert code == 0 and Image.open(out.split()[0]).size == (64, 64)
    code, out, err = cli("x", "--hires-upscaler", "gone", "-o", str(tmp_path / "d"))
    assert code == 2 and "no upscaler named 'gone'" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("x", "--hires-scale", "0.5", "-o", str(tmp_path / "d"))
    assert code == 2 and "hires.scale" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_an_interrupt_in_the_first_pass_delivers_it_without_the_second(studio, upscaler):
    import threading

    interrupt, events = threading.Event(), []

    def on_progress(event):
        events.append(event)
        interrupt.set()

    result = studio.generate(GenerationRequest(prompt="a red circle", steps=3, seed=5,
                                               hires=HiresOptions(upscaler=upscaler, denoising_strength=0.5)),
                             on_progress=on_progress, interrupt=interrupt, save=False)
    assert [(image.width, image.height) for image in result.images] == [(64, 64)]
    assert len(events) == 1  # the first step, then nothing: the second pass never ran


def test_hires_through_webuiapi_on_a_real_server(tmp_path, tiny_model_dir):
    """A1111's payload in, A1111's answer out: the image at the hires size, its infotext (read back by PNG info),
    `denoising_strength` in info, no hires field reported as ignored, the latent modes listed, a size over the cap 422."""
    import httpx
    import webuiapi

    from guardforge.settings import GuardSettings, Settings
    from guardforge.studio import Studio
    from tests.livesrv import make_home
    from tests.test_server_hardening import InProcessServer

    home = make_home(tmp_path, tiny_model_dir)
    studio = Studio(Settings(home=home, device="cpu", default_model="tiny-sd", guard=GuardSettings(policy="off")))
    with (InProcessServer(studio, start_workers=True) as server,
          httpx.Client(base_url=server.url, timeout=120) as client):
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)
        assert [mode["name"] for mode in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
        result = api.txt2img(prompt="a fox", width=32, height=16, seed=3, enable_hr=True, hr_scale=2,
                             hr_upscaler=webuiapi.HiResUpscaler.LatentNearestExact, hr_second_pass_steps=2,
                             denoising_strength=0.5, hr_prompt="a red fox")
        assert result.images[0].size == (64, 32)
        info = result.info
        ignored = info["guardforge"]["ignored_fields"]  # webuiapi's eta, s_noise, subseed stay reported
        assert info["denoising_strength"] == 0.5 and ignored == ["eta", "s_noise"]
        infotext = info["infotexts"][0]
        assert "Size: 32x16" in infotext and "Hires upscale: 2, Hires steps: 2" in infotext
        assert "Hires upscaler: Latent (nearest-exact), Hires prompt: a red fox" in infotext
        params = client.post("/sdapi/v1/png-info", json={"image": result.json["images"][0]}).json()["parameters"]
        assert params["Hires upscaler"] == "Latent (nearest-exact)" and params["Denoising strength"] == "0.5"
        plain = api.txt2img(prompt="a fox", width=32, height=16, seed=3, enable_hr=False)
        assert plain.images[0].size == (32, 16) and "Hires" not in plain.info["infotexts"][0]
        bad = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 512, "height": 512,
                                                     "enable_hr": True, "hr_scale": 8, "steps": 2})
        assert bad.status_code == 422 and "hires fix: the upscaled width 4096" in bad.text
        native = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "enable_hr": True, "hr_scale": 8,
                                                        "hr_resize_x": 4096, "steps": 2})
        assert native.status_code == 422 and "hires fix: the upscaled width 4096 (from 16x16)" in native.text


@pytest.mark.parametrize("upscaler", ["Latent (bicubic antialiased)", "Lanczos"])
def test_hires_fix_on_sdxl(sdxl, tmp_path, upscaler):
    """SDXL's img2img pipeline (pooled embeddings, time ids from the upscaled size) takes the second pass."""
    import torch

    from guardforge.engine.pipelines import Engine
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import MemorySettings, Settings

    loaded = LoadedModel(entry=None, pipeline=sdxl, memory=MemorySettings(), device=torch.device("cpu"))
    events = []
    request = GenerationRequest(prompt="a cat", steps=2, seed=3, batch_size=2,
                                hires=HiresOptions(scale=1.5, upscaler=upscaler, denoising_strength=1.0,
                                                   sampler="DPM++ 2M", prompt="a (cat:1.2), detailed"))
    images = Engine(Settings(home=tmp_path)).run(loaded, request, on_progress=events.append)
    assert [(image.size, seed) for image, seed in images] == [((48, 48), 3), ((48, 48), 4)]
    assert [event.step for event in events] == [1, 2, 3, 4] and events[-1].total == 4


def test_the_hires_cfg_scale_is_the_second_pass_guidance(studio):
    options = dict(upscaler="Lanczos", denoising_strength=0.6)
    same = generate(studio, cfg_scale=7, hires=HiresOptions(**options))
    explicit = generate(studio, cfg_scale=7, hires=HiresOptions(**options, cfg_scale=7))
    other = generate(studio, cfg_scale=7, hires=HiresOptions(**options, cfg_scale=20))
    assert np.array_equal(pixels(same.images[0]), pixels(explicit.images[0]))
    assert not np.array_equal(pixels(same.images[0]), pixels(other.images[0]))
