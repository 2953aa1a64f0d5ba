"""Upscalers: ESRGAN-family files (both RRDBNet key layouts, Real-ESRGAN x2plus's unshuffled input, SRVGGNetCompact)
read from the models folder's ESRGAN/ and RealESRGAN/, tiled runs, A1111's size rules, the pickle rule, bad names
and sizes, and Studio.upscale with the guard on its input and its output."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from guardforge.engine.upscalers import UpscaleRequest, Upscalers
from guardforge.errors import InvalidRequest, ModelNotFound, PathEscape, UnsafeModelFormat
from tests.tiny_upscalers import rrdb_state, srvgg_state, write_safetensors


def settings_for(home, **extra):
    from guardforge.settings import GuardSettings, Settings

    return Settings(home=home, device="cpu", guard=GuardSettings(policy="off"), **extra)


@pytest.fixture
def home(tmp_path):
    models = tmp_path / "home" / "models"
    write_safetensors(models / "ESRGAN" / "esrgan-new-x4.safetensors", rrdb_state(layout="new"))
    write_safetensors(models / "ESRGAN" / "esrgan-old-x4.safetensors", rrdb_state(layout="old"))
    write_safetensors(models / "ESRGAN" / "bsrgan-x4.safetensors", rrdb_state(layout="mmsr"))
    write_safetensors(models / "RealESRGAN" / "x2plus.safetensors", rrdb_state(unshuffle=2, nb=1, seed=1))
    write_safetensors(models / "RealESRGAN" / "compact-x4.safetensors", srvgg_state(seed=2))
    return tmp_path / "home"


@pytest.fixture
def upscalers(home):
    from guardforge.models.registry import ModelRegistry

    settings = settings_for(home)
    return Upscalers(settings, ModelRegistry(settings))


def picture(width=20, height=12, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_list_is_a1111s_with_each_models_scale_read_from_its_tensors(upscalers):
    listed = {u.name: u for u in upscalers.listed()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    assert {name: u.scale for name, u in listed.items() if u.entry} == {
        "bsrgan-x4": 4, "esrgan-new-x4": 4, "esrgan-old-x4": 4, "x2plus": 2, "compact-x4": 4}


def test_old_and_new_esrgan_layouts_are_the_same_network(upscalers):
    image = picture()
    new = upscalers.run_model(upscalers.resolve("esrgan-new-x4"), image, torch.device("cpu"))
    old = upscalers.run_model(upscalers.resolve("esrgan-old-x4"), image, torch.device("cpu"))
    mmsr = upscalers.run_model(upscalers.resolve("bsrgan-x4"), image, torch.device("cpu"))
    assert new.size == (80, 48)
    assert np.array_equal(np.asarray(new), np.asarray(old)) and np.array_equal(np.asarray(new), np.asarray(mmsr))
    assert np.asarray(new).std() > 1  # not a flat image: the weights did something


def test_x2plus_unshuffles_its_input_and_odd_sizes_are_padded(upscalers):
    entry = upscalers.resolve("x2plus")
    assert upscalers.net(entry, torch.device("cpu")).unshuffle == 2
    assert upscalers.run_model(entry, picture(13, 9), torch.device("cpu")).size == (26, 18)


def test_a_one_x_model_unshuffles_by_four(home, upscalers):
    write_safetensors(home / "models" / "ESRGAN" / "one-x.safetensors", rrdb_state(unshuffle=4, nb=1))
    entry = upscalers.resolve("one-x")
    assert upscalers.model_scale(entry) == 1
    assert upscalers.run_model(entry, picture(10, 7), torch.device("cpu")).size == (10, 7)


def test_compact_net_with_zero_weights_is_exactly_the_nearest_upscale(home, upscalers):
    write_safetensors(home / "models" / "RealESRGAN" / "zero.safetensors", srvgg_state(zero=True, scale=2))
    image = picture(9, 6)
    out = upscalers.run_model(upscalers.resolve("zero"), image, torch.device("cpu"))
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((18, 12), Image.NEAREST)))


def test_tiled_equals_untiled(home):
    """With the overlap covering the net's receptive field the stitched result is the whole-image one; with a
    practical overlap on a deeper net it stays within a few 8-bit levels."""
    from guardforge.engine.esrgan import build_network
    from guardforge.engine.tiling import run_tiled

    net, arch = build_network(rrdb_state(nb=1, seed=3))
    tensor = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = net(tensor)
        tiled = run_tiled(net, tensor, arch.scale, tile=8, overlap=24)
        assert tiled.shape == whole.shape == (1, 3, 148, 116)
        assert torch.allclose(tiled, whole, atol=1e-5)
        deep, arch = build_network(rrdb_state(nb=3, seed=4))
        rough = run_tiled(deep, tensor, arch.scale, tile=16, overlap=8)
        assert (rough.clamp(0, 1) - deep(tensor).clamp(0, 1)).abs().max() * 255 < 8


def test_upscalers_tile_as_configured(home):
    from guardforge.models.registry import ModelRegistry

    settings = settings_for(home)
    whole = Upscalers(settings, ModelRegistry(settings), tile=0)
    tiled = Upscalers(settings, ModelRegistry(settings), tile=8, overlap=64)
    image = picture(30, 22)
    a = whole.run_model(whole.resolve("esrgan-new-x4"), image, torch.device("cpu"))
    b = tiled.run_model(tiled.resolve("esrgan-new-x4"), image, torch.device("cpu"))
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_a_scale_not_the_models_own_is_reached_as_a1111_does(upscalers):
    """A x2 model asked for x3 runs twice (x4), then Lanczos down to x3 rounded to a multiple of 8; a x4 model asked
    for x2 runs once and comes down."""
    cpu = torch.device("cpu")
    image = picture(16, 8)
    x2 = upscalers.resolve("x2plus")
    twice = upscalers.run_model(x2, upscalers.run_model(x2, image, cpu), cpu)
    assert twice.size == (64, 32)
    three = upscalers.upscale(image, "x2plus", 3)
    assert three.size == (48, 24)
    assert np.array_equal(np.asarray(three), np.asarray(twice.resize((48, 24), Image.LANCZOS)))
    once = upscalers.run_model(upscalers.resolve("compact-x4"), image, cpu)
    assert np.array_equal(np.asarray(upscalers.upscale(image, "compact-x4", 2)),
                          np.asarray(once.resize((32, 16), Image.LANCZOS)))


def test_pil_upscalers_and_the_crop(upscalers):
    image = picture(20, 12)
    assert np.array_equal(np.asarray(upscalers.upscale(image, "Nearest", 2)),
                          np.asarray(image.resize((40, 24), Image.NEAREST)))
    assert upscalers.upscale(picture(20, 10), "Lanczos", 2).size == (40, 16)  # A1111 rounds down to 8s
    request = UpscaleRequest(image="x", upscaler="Lanczos", width=24, height=24)
    size, info = upscalers.plan(request, image.size, 10**6)
    assert size == (24, 24) and info["Postprocess upscale to"] == "24x24"
    assert upscalers.run(request, image).size == (24, 24)
    covering = UpscaleRequest(image="x", upscaler="Lanczos", width=24, height=24, crop=False)
    assert upscalers.plan(covering, image.size, 10**6)[0] == upscalers.run(covering, image).size == (40, 24)
    assert upscalers.run(UpscaleRequest(image="x", upscaler="None"), image).size == (20, 12)


def test_a_second_upscaler_is_blended_at_its_visibility(upscalers):
    image = picture(16, 16)
    blended = upscalers.run(UpscaleRequest(image="x", upscaler="Nearest", upscaler_2="Lanczos",
                                           upscaler_2_visibility=0.5), image)
    expected = Image.blend(image.resize((32, 32), Image.NEAREST), image.resize((32, 32), Image.LANCZOS), 0.5)
    assert np.array_equal(np.asarray(blended), np.asarray(expected))


def test_bad_names_and_files(home, upscalers):
    with pytest.raises(ModelNotFound, match="no upscaler named 'nope'"):
        upscalers.resolve("nope")
    with pytest.raises(PathEscape):
        upscalers.resolve("../Stable-diffusion/x")
    with pytest.raises(InvalidRequest, match="hires fix only"):
        upscalers.resolve("Latent (bicubic)")
    write_safetensors(home / "models" / "ESRGAN" / "not-esrgan.safetensors", {"lora_down.weight": torch.zeros(2, 2)})
    assert {u.name: u.scale for u in upscalers.listed()}["not-esrgan"] is None
    with pytest.raises(InvalidRequest, match="not an ESRGAN-family model"):
        upscalers.upscale(picture(), "not-esrgan", 2)
    state = rrdb_state()
    state["conv_hr.weight"] = torch.zeros(8, 8, 1, 1)  # misshapen: the layout read from names cannot load it
    write_safetensors(home / "models" / "ESRGAN" / "broken.safetensors", state)
    with pytest.raises(InvalidRequest, match="do not fit"):
        upscalers.upscale(picture(), "broken", 2)


def test_a_missing_name_lists_the_built_ins_it_could_have_been(tmp_path):
    """With no model files the registry knows no upscalers, but None, Lanczos and Nearest are always there (and the
    latent modes for hires fix): the refusal lists them rather than saying "known: none"."""
    from guardforge.models.registry import ModelRegistry

    settings = settings_for(tmp_path / "empty-home")
    upscalers = Upscalers(settings, ModelRegistry(settings))
    with pytest.raises(ModelNotFound) as caught:
        upscalers.resolve("NoSuch")
    assert str(caught.value).startswith("no upscaler named 'NoSuch'; known: None, Lanczos, Nearest (model files go")
    assert "Latent" not in str(caught.value)
    with pytest.raises(ModelNotFound, match=r"known: Latent, Latent \(antialiased\), .*, None, Lanczos, Nearest"):
        upscalers.resolve("NoSuch", hires=True)


def test_pickles_need_allow_pickle_and_load_weights_only(home, tmp_path):
    from guardforge.models.registry import ModelRegistry

    folder = home / "models" / "RealESRGAN"
    torch.save({"params_ema": rrdb_state(seed=5)}, folder / "x4plus.pth")  # Real-ESRGAN's own wrapper

    class Payload:  # an object a weights-only load refuses to build
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"params_ema": Payload()}, folder / "evil.pth")
    refusing = Upscalers(settings_for(home), ModelRegistry(settings_for(home)))
    assert {u.name: u.scale for u in refusing.listed()}["x4plus"] is None
    with pytest.raises(UnsafeModelFormat, match="pickle"):
        refusing.resolve("x4plus")

    allowing_settings = settings_for(home, allow_pickle=True)
    allowing = Upscalers(allowing_settings, ModelRegistry(allowing_settings))
    assert allowing.upscale(picture(8, 8), "x4plus", 4).size == (32, 32)
    assert {u.name: u.scale for u in allowing.listed()}["x4plus"] == 4
    with pytest.raises(InvalidRequest, match="weights only"):
        allowing.upscale(picture(8, 8), "evil", 2)


def test_sizes_are_capped_before_anything_runs(upscalers):
    with pytest.raises(InvalidRequest, match="over this server's limit of 1000 pixels"):
        upscalers.plan(UpscaleRequest(image="x", upscaler="Lanczos", scale=4), (20, 20), 1000)
    # x2 fits the cap, but the x4 model makes the x4 image on the way
    with pytest.raises(InvalidRequest, match="x4 model.*80x80 image first"):
        upscalers.plan(UpscaleRequest(image="x", upscaler="compact-x4", scale=2), (20, 20), 2000)
    with pytest.raises(InvalidRequest, match="less than 8 pixels"):
        upscalers.plan(UpscaleRequest(image="x", upscaler="Lanczos", scale=0.1), (20, 20), 10**6)
    with pytest.raises(ValueError, match="both width and height"):
        UpscaleRequest(image="x", width=64)
    with pytest.raises(ValueError):
        UpscaleRequest(image="x", scale=9)


# -- Studio.upscale: the guard on both sides ------------------------------------------------------------------
class LargeOrRedIsUnsafe:
    """Image backend: S12 = 0.95 for an image wider than 32 px or whose top-left pixel is red."""

    name = "test-large-or-red"
    categories = frozenset({"S12"})

    def __init__(self):
        self.sizes: list[tuple[int, int]] = []

    def score_images(self, images):
        from guardforge.guard.backends.base import Scores

        self.sizes += [image.size for image in images]
        return [Scores({"S12": 0.95 if image.width > 32 or image.getpixel((0, 0))[0] > 200 else 0.001})
                for image in images]


def guarded_studio(home):
    from guardforge.db import Database
    from guardforge.guard.audit import AuditLog
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.studio import Studio

    return Studio(settings_for(home), guard=Guard(load_policy("default"), image_backend=LargeOrRedIsUnsafe(),
                                                  audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))


def test_studio_guards_the_input_and_the_output(home):
    studio = guarded_studio(home)
    backend = studio.guard.backend("image")
    grey = Image.new("RGB", (8, 8), (90, 90, 90))
    small = studio.upscale(UpscaleRequest(image=b64(grey), upscaler="Nearest", scale=2))
    assert (small.width, small.height, small.action, small.blocked) == (16, 16, "allow", False)
    assert small.pil.size == (16, 16) and backend.sizes == [(8, 8), (16, 16)]

    # The default policy blurs S12 in an output image: the raw upscale never leaves.
    start = picture(12, 12, seed=1)
    start.putpixel((0, 0), (0, 0, 0))
    large_request = UpscaleRequest(image=b64(start), upscaler="Nearest", scale=4)
    large = studio.upscale(large_request)
    assert large.action == "blur" and large.verdict.checkpoint == "output_image" and large.pil.size == (48, 48)
    raw = studio.upscalers.run(large_request, start)
    assert not np.array_equal(np.asarray(large.pil), np.asarray(raw))

    red = Image.new("RGB", (8, 8), (230, 10, 10))
    blocked = studio.upscale(UpscaleRequest(image=b64(red), upscaler="Nearest", scale=2))
    assert blocked.blocked and blocked.pil is None and blocked.input_verdict.checkpoint == "input_image"
    assert (blocked.width, blocked.height) == (16, 16) and backend.sizes[-1] == (8, 8)  # nothing ran after


def test_studio_refuses_bad_requests_before_the_guard(home):
    studio = guarded_studio(home)
    with pytest.raises(ModelNotFound):
        studio.upscale(UpscaleRequest(image=b64(picture()), upscaler="missing"))
    with pytest.raises(InvalidRequest, match="not valid base64"):
        studio.upscale(UpscaleRequest(image="!!", upscaler="Lanczos"))
    assert studio.guard.backend("image").sizes == []
