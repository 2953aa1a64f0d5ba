"""IP-Adapter through Studio.generate on the tiny SD model, a tiny IP-Adapter and a tiny CLIP vision encoder built
in-process: scale 0 is no adapter to the pixel, a scale changes the image, the shared pipeline is as it was after,
img2img, inpaint and ControlNet units run with it, the guard reads its image, and bad input is refused at submit.

The image backend is a test-only class implementing the guard's backend protocol (it flags magenta images); the
Guard, Policy, Studio, engine, diffusers pipelines and models are the real ones.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from guardforge.db import Database
from guardforge.engine.infotext import parse_infotext
from guardforge.engine.ip_adapter import ip_adapter_from_infotext
from guardforge.engine.controlnet import units_from_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest, ModelNotFound, PathEscape, UnsafeModelFormat
from guardforge.guard.audit import AuditLog
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from tests.test_controlnet_engine import MagentaIsUnsafe, SafeText, b64, square
from tests.tiny_controlnet import save_tiny_controlnet
from tests.tiny_ip_adapter import save_clip_vision, save_ip_adapter_bin, save_ip_adapter_file


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    from diffusers import UNet2DConditionModel

    home = tmp_path_factory.mktemp("ipa") / "home"
    shutil.copytree(tiny_model_dir, home / "models" / "Stable-diffusion" / "tiny-sd")
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    save_ip_adapter_file(home / "models" / "ipadapter" / "tiny-ip.safetensors", unet)
    save_ip_adapter_bin(home / "models" / "ipadapter" / "tiny-ip-bin.bin", unet)
    save_ip_adapter_file(home / "models" / "ipadapter" / "plus-ip.safetensors", unet, plus=True)
    save_ip_adapter_file(home / "models" / "ipadapter" / "wide-ip.safetensors", unet, embed_dim=48)
    # Made for a UNet of cross-attention 48 (as an SDXL adapter is for 2048 where SD 1.x has 768).
    other = UNet2DConditionModel.from_config({**unet.config, "cross_attention_dim": 48})
    save_ip_adapter_file(home / "models" / "ipadapter" / "other-ip.safetensors", other)
    save_clip_vision(home / "models" / "clip_vision" / "tiny-clip")
    (home / "models" / "clip_vision" / "empty-clip").mkdir()
    shutil.copy(home / "models" / "clip_vision" / "tiny-clip" / "config.json",
                home / "models" / "clip_vision" / "empty-clip" / "config.json")
    save_tiny_controlnet(home / "models" / "ControlNet" / "tiny-cn")
    # Where sd-webui-controlnet keeps them: among the ControlNets, named ip-adapter*.
    shutil.copy(home / "models" / "ipadapter" / "tiny-ip.safetensors",
                home / "models" / "ControlNet" / "ip-adapter_in_cn.safetensors")
    return home


@pytest.fixture(scope="module")
def studio(home):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=home),
                  guard=Guard(load_policy("default"), text_backend=SafeText(), image_backend=MagentaIsUnsafe(),
                              audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))


def photo(colour="red") -> str:
    image = Image.new("RGB", (40, 40), colour)
    image.paste(Image.new("RGB", (20, 20), "yellow"), (10, 10))
    return b64(image)


def adapter(**kw) -> dict:
    return {"image": photo(), "model": "tiny-ip", **kw}


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a square", "negative_prompt": "blurry", "model": "tiny-sd", "steps": 3, "seed": 5,
            "sampler": "Euler", "width": 16, "height": 16}
    return GenerationRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].pil.convert("RGB"), dtype=np.int16)


def test_scale_zero_is_no_adapter_and_a_scale_changes_the_image(studio):
    plain = pixels(studio.generate(request(), save=False))
    assert np.array_equal(pixels(studio.generate(request(ip_adapter=adapter(scale=0.0)), save=False)), plain)
    full = studio.generate(request(ip_adapter=adapter(scale=1.0)), save=False)
    assert np.abs(pixels(full) - plain).mean() > 2
    half = pixels(studio.generate(request(ip_adapter=adapter(scale=0.5)), save=False))
    assert not np.array_equal(half, plain) and not np.array_equal(half, pixels(full))
    other = pixels(studio.generate(request(ip_adapter=adapter(image=photo("blue"))), save=False))
    assert not np.array_equal(other, pixels(full))  # the image is what steers it


def test_an_adapter_in_the_controlnet_folder_is_an_adapter_not_a_controlnet(studio):
    controlnets = [e.name for e in studio.models("controlnet")]
    assert "tiny-cn" in controlnets and "ip-adapter_in_cn" not in controlnets
    assert sorted(e.name for e in studio.models("ipadapter")) == ["ip-adapter_in_cn", "other-ip", "plus-ip",
                                                                  "tiny-ip", "tiny-ip-bin", "wide-ip"]
    assert np.array_equal(pixels(studio.generate(request(ip_adapter=adapter(model="ip-adapter_in_cn")), save=False)),
                          pixels(studio.generate(request(ip_adapter=adapter()), save=False)))


def test_a_plus_adapter_reads_the_encoders_hidden_states(studio):
    from guardforge.models.ipadapter_loading import adapter_shape

    shape = adapter_shape(studio.registry.resolve("plus-ip", kind="ipadapter"), studio.settings)
    assert (shape.kind, shape.hidden_states, shape.embed_dim) == ("IPAdapterPlus", True, 32)
    plain = pixels(studio.generate(request(), save=False))
    assert np.array_equal(pixels(studio.generate(request(ip_adapter=adapter(model="plus-ip", scale=0.0)),
                                                 save=False)), plain)
    plus = pixels(studio.generate(request(ip_adapter=adapter(model="plus-ip")), save=False))
    assert np.abs(plus - plain).mean() > 1
    assert not np.array_equal(plus, pixels(studio.generate(request(ip_adapter=adapter()), save=False)))
    assert np.array_equal(pixels(studio.generate(request(), save=False)), plain)


def test_the_shared_pipeline_is_restored_after_the_request(studio):
    plain = pixels(studio.generate(request(), save=False))
    loaded = studio.pipelines.get("tiny-sd")
    unet = loaded.pipeline.unet
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    studio.generate(request(ip_adapter=adapter()), save=False)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert loaded.pipeline.image_encoder is None
    assert np.array_equal(pixels(studio.generate(request(), save=False)), plain)


def test_pickle_and_safetensors_files_are_the_same_adapter(studio, home):
    with pytest.raises(UnsafeModelFormat):
        studio.submit(request(ip_adapter=adapter(model="tiny-ip-bin")))
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    trusting = Studio(Settings(home=home, allow_pickle=True),
                      guard=Guard(load_policy("default"), text_backend=SafeText(), image_backend=MagentaIsUnsafe(),
                                  audit=AuditLog(Database(f"sqlite:///{home / 'audit2.db'}"))))
    assert np.array_equal(pixels(trusting.generate(request(ip_adapter=adapter(model="tiny-ip-bin")), save=False)),
                          pixels(studio.generate(request(ip_adapter=adapter()), save=False)))


def test_img2img_inpaint_and_controlnet_run_with_it(studio):
    init = b64(square(16))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 16, 12))
    unit = {"image": b64(square()), "module": "canny", "model": "tiny-cn"}
    for kw in ({"init_image": init, "denoising_strength": 0.8},
               {"init_image": init, "mask": b64(mask), "mask_blur": 0, "denoising_strength": 0.8},
               {"controlnet": [unit]}):
        plain = pixels(studio.generate(request(**kw), save=False))
        steered = pixels(studio.generate(request(**kw, ip_adapter=adapter()), save=False))
        assert not np.array_equal(plain, steered), kw
        assert np.array_equal(pixels(studio.generate(request(**kw), save=False)), plain), kw


def test_the_guard_reads_the_ip_adapter_image(studio):
    blocked = studio.generate(request(ip_adapter=adapter(image=photo("magenta"))), save=False)
    assert blocked.blocked and blocked.images == []
    assert blocked.prompt_verdict.action == "block"  # the IP-Adapter image's verdict, the first that blocks
    assert not studio.generate(request(ip_adapter=adapter()), save=False).blocked


def test_infotext_is_sd_webui_controlnets_unit_and_reads_back(studio):
    unit = {"image": b64(square()), "module": "canny", "model": "tiny-cn"}
    result = studio.generate(request(controlnet=[unit], ip_adapter=adapter(scale=0.6)), save=False)
    info = result.images[0].infotext
    entry = studio.registry.resolve("tiny-ip", kind="ipadapter")
    assert (f'ControlNet 1: "Module: ip-adapter_clip_sd15, Model: tiny-ip [{entry.short_hash()}], Weight: 0.6, '
            'Resize Mode: Crop and Resize') in info
    params = parse_infotext(info)
    assert [u["module"] for u in units_from_infotext(params)] == ["canny"]
    back = ip_adapter_from_infotext(params)
    assert back == {"module": "ip-adapter_clip_sd15", "model": f"tiny-ip [{entry.short_hash()}]", "scale": 0.6}
    again = studio.generate(request(controlnet=[unit], ip_adapter={**back, "image": photo()}), save=False)
    assert np.array_equal(pixels(again), pixels(result))


def test_bad_input_is_refused_at_submit(studio):
    with pytest.raises(ModelNotFound, match="ipadapter"):
        studio.submit(request(ip_adapter=adapter(model="nope")))
    with pytest.raises(PathEscape):
        studio.submit(request(ip_adapter=adapter(model="../Stable-diffusion/tiny-sd")))
    with pytest.raises(ModelNotFound, match="clip_vision"):
        studio.submit(request(ip_adapter=adapter(encoder="missing")))
    with pytest.raises(InvalidRequest, match="clip_vision"):  # no encoder of its width: the folder is named
        studio.submit(request(ip_adapter=adapter(model="wide-ip")))
    with pytest.raises(InvalidRequest, match="does not fit"):
        studio.submit(request(ip_adapter=adapter(model="wide-ip", encoder="tiny-clip")))
    with pytest.raises(InvalidRequest, match="'other-ip' does not fit checkpoint 'tiny-sd'.*cross-attention 48"):
        studio.submit(request(ip_adapter=adapter(model="other-ip")))
    with pytest.raises(InvalidRequest, match="needs model.safetensors"):
        studio.submit(request(ip_adapter=adapter(encoder="empty-clip")))
    with pytest.raises(InvalidRequest, match="ip_adapter.image"):
        studio.submit(request(ip_adapter=adapter(image="bm90IGFuIGltYWdl")))
    with pytest.raises(ValueError, match="hires"):
        request(ip_adapter=adapter(), hires={"scale": 2})
    with pytest.raises(ValueError, match="not an IP-Adapter module"):
        request(ip_adapter=adapter(module="canny"))


def test_sdxl_txt2img_and_img2img(tmp_path, tmp_path_factory):
    """SDXL: the adapter loaded into a tiny SDXL pipeline's UNet (two text encoders, text_time conditioning) for the
    run, scale 0 the same pixels as none, and the pipeline as it was after."""
    import base64
    import io

    import torch

    from guardforge.engine.ip_adapter import IPAdapterRun
    from guardforge.engine.pipelines import Engine
    from guardforge.models.cache import LoadedModel
    from guardforge.models.ipadapter_cache import EncoderCache
    from guardforge.settings import MemorySettings, Settings
    from tests.test_engine_prompts import sdxl as sdxl_fixture
    from tests.tiny_ip_adapter import ip_adapter_state_dict

    pipe = sdxl_fixture.__wrapped__(tmp_path_factory)
    settings = Settings(home=tmp_path)
    save_clip_vision(tmp_path / "models" / "clip_vision" / "tiny-clip")
    from guardforge.models.registry import ModelRegistry

    [encoder_entry] = ModelRegistry(settings).list("clip_vision")
    encoder, processor = EncoderCache(settings).get(encoder_entry, torch.device("cpu"), pipe.unet.dtype)
    state = ip_adapter_state_dict(pipe.unet, embed_dim=32)
    loaded = LoadedModel(entry=None, pipeline=pipe, memory=MemorySettings(), device=torch.device("cpu"))
    engine = Engine(settings)
    picture = Image.open(io.BytesIO(base64.b64decode(photo())))
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    for init in (None, b64(square(32, colour="blue"))):
        request = GenerationRequest(prompt="a square", negative_prompt="dog", steps=2, seed=3, sampler="Euler",
                                    init_image=init, denoising_strength=0.8)
        init_image = Image.open(io.BytesIO(base64.b64decode(init))) if init else None

        def run(scale=None):
            adapter = IPAdapterRun(scale, picture, state, encoder, processor) if scale is not None else None
            [(image, _)] = engine.run(loaded, request, init_image=init_image, ip_adapter=adapter)
            return np.asarray(image, dtype=np.int16)

        plain = run()
        assert np.array_equal(run(0.0), plain)
        assert np.abs(run(1.0) - plain).mean() > 1
        assert np.array_equal(run(), plain)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
    assert pipe.unet.encoder_hid_proj is None and pipe.image_encoder is None


def test_sdxl_through_the_studio_with_a_refiner(tmp_path):
    """An SDXL adapter through Studio.generate (submit's checks included), and with the SDXL refiner: the adapter
    steers the base model's part, the refiner's part runs on its own UNet without it, and the base is restored."""
    from diffusers import UNet2DConditionModel

    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.test_engine_refiner import save_tiny_refiner, save_tiny_sdxl

    models = tmp_path / "home" / "models"
    save_tiny_sdxl(models / "Stable-diffusion" / "tiny-xl")
    save_tiny_refiner(models / "Stable-diffusion" / "tiny-xl-refiner")
    save_ip_adapter_file(models / "ipadapter" / "xl-ip.safetensors",
                         UNet2DConditionModel.from_pretrained(models / "Stable-diffusion" / "tiny-xl" / "unet"),
                         embed_dim=32)
    save_clip_vision(models / "clip_vision" / "tiny-clip")
    studio = Studio(Settings(home=tmp_path / "home", device="cpu", guard={"policy": "off"}))
    base = {"prompt": "a square", "negative_prompt": "blurry", "model": "tiny-xl", "steps": 4, "seed": 11,
            "sampler": "Euler", "width": 32, "height": 32}
    for extra in ({}, {"refiner": {"checkpoint": "tiny-xl-refiner", "switch_at": 0.5}}):
        plain = pixels(studio.generate(GenerationRequest(**base, **extra), save=False))
        job = studio.submit(GenerationRequest(**base, **extra, ip_adapter=adapter(model="xl-ip")))
        assert job.id
        zero = studio.generate(GenerationRequest(**base, **extra, ip_adapter=adapter(model="xl-ip", scale=0.0)),
                               save=False)
        assert np.array_equal(pixels(zero), plain), extra
        steered = pixels(studio.generate(GenerationRequest(**base, **extra, ip_adapter=adapter(model="xl-ip")),
                                         save=False))
        assert np.abs(steered - plain).mean() > 1, extra
        assert np.array_equal(pixels(studio.generate(GenerationRequest(**base, **extra), save=False)), plain)


def test_infotext_names_the_module_sd_webui_controlnet_would_show(tmp_path):
    """Without a module in the request, the infotext's is the one the adapter and encoder mean there."""
    import json

    from guardforge.engine.ip_adapter import IPAdapterInputs
    from guardforge.engine.ip_adapter_unit import IPAdapterUnit
    from guardforge.models.ipadapter_loading import AdapterShape
    from guardforge.models.registry import ModelRegistry
    from guardforge.settings import Settings

    for name, projection in (("bigg", 1280), ("vith", 1024)):
        folder = tmp_path / "models" / "clip_vision" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"projection_dim": projection, "hidden_size": 1664}))
    registry = ModelRegistry(Settings(home=tmp_path))
    unit = IPAdapterUnit(image=photo(), model="x")
    assert unit.module is None

    def module(cross, encoder):
        shape = AdapterShape("ImageProjection", 1280, False, cross, 70)
        return IPAdapterInputs(unit, None, None, registry.resolve(encoder, kind="clip_vision"), shape).module()

    assert module(2048, "bigg") == "ip-adapter_clip_sdxl"
    assert module(2048, "vith") == "ip-adapter_clip_sdxl_plus_vith"
    assert module(768, "vith") == "ip-adapter_clip_sd15"
