"""Infotext in A1111's format, the output store's files, and the round trip image -> infotext -> same image."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from guardforge.engine.infotext import build_infotext, parse_infotext, request_from_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.storage.outputs import OutputStore, read_infotext


def test_txt2img_infotext_is_a1111s_format():
    request = GenerationRequest(prompt="a cat, (sitting:1.2)", negative_prompt="blurry, lowres", steps=20,
                                sampler="Euler a", schedule="Karras", cfg_scale=7, seed=1)
    text = build_infotext(request, seed=1, width=512, height=512, model_name="sd15", model_hash="abcdef0123")
    assert text == (
        "a cat, (sitting:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Model hash: abcdef0123, Model: sd15"
    )


def test_empty_negative_is_omitted_and_extras_follow_a1111_order():
    request = GenerationRequest(prompt="x", init_image="aaaa", mask="aaaa", denoising_strength=0.6, clip_skip=2,
                                mask_blur=8, cfg_scale=7.5, sampler="DPM++ 2M", inpainting_mask_invert=True)
    text = build_infotext(request, seed=9, width=64, height=32, model_name="my, model", model_hash=None)
    assert "Negative prompt" not in text
    assert text.splitlines()[1] == (
        'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 9, Size: 64x32, '
        'Model: "my, model", Denoising strength: 0.6, Clip skip: 2, Mask blur: 8, Mask mode: Inpaint not masked'
    )


def test_parse_reads_what_build_writes_and_old_a1111_sampler_names():
    request = GenerationRequest(prompt="line one\nline: two", negative_prompt="bad\nworse", steps=7, seed=123,
                                sampler="DPM++ SDE", schedule="Exponential", clip_skip=3)
    text = build_infotext(request, seed=123, width=64, height=48, model_name="m", model_hash="0123456789")
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline: two"
    assert parsed["Negative prompt"] == "bad\nworse"
    assert (parsed["Steps"], parsed["Seed"], parsed["Size-1"], parsed["Size-2"]) == ("7", "123", "64", "48")
    assert parsed["Schedule type"] == "Exponential" and parsed["Clip skip"] == "3"
    again = request_from_infotext(text)
    assert again.model_dump(exclude={"model"}) == request.model_copy(update={"width": 64, "height": 48}).model_dump(
        exclude={"model"})

    old = "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 0a1b2c3d4e"
    legacy = request_from_infotext(old)
    assert (legacy.sampler, legacy.schedule, legacy.clip_skip) == ("DPM++ 2M", "Karras", 1)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_store_writes_dated_numbered_files_with_infotext_and_verdict(tmp_path, fmt):
    store = OutputStore(tmp_path, fmt)
    image = Image.new("RGB", (16, 16), "blue")
    text = "a cat, é 猫\nSteps: 2, Seed: 7"
    first = store.save(image, text, {"action": "allow"}, "txt2img", 7)
    second = store.save(image, text, None, "inpaint", 8)
    assert first.parent.parent.name == "txt2img-images" and first.name == f"00000-7.{fmt}"
    assert second.parent.parent.name == "img2img-images"  # A1111 keeps inpainting with img2img
    assert read_infotext(first) == text
    assert json.loads(first.with_name("00000-7.verdict.json").read_text()) == {"action": "allow"}
    assert len(store.new_id()) == 32 and store.new_id() != store.new_id()


def test_store_numbers_are_unique_under_concurrent_writers(tmp_path):
    store = OutputStore(tmp_path, "png")
    image = Image.new("RGB", (8, 8))
    paths: list = []
    barrier = threading.Barrier(8)

    def write(seed):
        barrier.wait()
        paths.append(store.save(image, "x", None, "txt2img", seed))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(int(p.name.split("-")[0]) for p in paths)
    assert numbers == list(range(8))


def _files(root):
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_an_image_whose_verdict_cannot_be_written_is_not_kept(tmp_path, monkeypatch):
    store = OutputStore(tmp_path, "png")
    image = Image.new("RGB", (16, 16), "blue")
    unwritable = {"action": "blur"}
    unwritable["self"] = unwritable  # a verdict json cannot write (circular)
    with pytest.raises(ValueError, match="Circular"):
        store.save(image, "x", unwritable, "txt2img", 7)
    assert _files(tmp_path) == []

    # The disk fills up as the image is put in place: its verdict, already in place, goes too.
    real_replace = os.replace

    def disk_full_for_images(source, target):
        if str(target).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full_for_images)
    with pytest.raises(OSError, match="No space"):
        store.save(image, "x", {"action": "allow"}, "txt2img", 7)
    assert _files(tmp_path) == []
    monkeypatch.undo()
    path = store.save(image, "x", {"action": "allow"}, "txt2img", 7)
    assert _files(tmp_path) == ["00000-7.png", "00000-7.verdict.json"]
    assert read_infotext(path) == "x"


_SLOW_SAVE = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from guardforge.storage.outputs import OutputStore
noise = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
OutputStore(Path(sys.argv[1]), "png").save(Image.fromarray(noise), "x", {"action": "allow"}, "txt2img", 7)
"""


def test_a_crash_while_saving_leaves_no_half_written_image(tmp_path):
    # Killed as soon as the first file of the save appears, long before a 48 MB noise PNG is encoded.
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(tmp_path)])
    deadline = time.monotonic() + 120
    folder = None
    while time.monotonic() < deadline and proc.poll() is None:
        written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".reserved")]
        if written:
            folder = written[0].parent
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert folder is not None, "the save never started"
    visible = [name for name in _files(tmp_path) if not name.startswith(".")]
    assert visible == []  # only hidden temporary files: no image that would not open, no verdict alone


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def studio(gf_home, monkeypatch):
    monkeypatch.setenv("GUARDFORGE_GUARD__POLICY", "off")
    from guardforge.studio import Studio

    return Studio()


def test_round_trip_through_studio_gives_identical_pixels(studio):
    request = GenerationRequest(prompt="a (red:1.3) square",
                                negative_prompt="blurry, dark", model="tiny-sd", steps=3, seed=-1, sampler="DPM++ 2M",
                                cfg_scale=6.5, clip_skip=2, batch_size=2)
    result = studio.generate(request)
    assert result.seeds == [result.seeds[0], result.seeds[0] + 1]
    second = result.images[1]
    text = read_infotext(second.path)
    assert text == second.infotext and "Model: tiny-sd" in text and "Model hash: " in text
    again = studio.generate(request_from_infotext(text))
    assert again.seeds == [second.seed]
    with Image.open(second.path) as saved, Image.open(again.images[0].path) as regenerated:
        # Alone, not in its batch of two: CPU BLAS picks its kernels by batch size, so about one seed in 30
        # lands a pixel one 8-bit level away (A1111 behaves the same). At the batch's own size it is exact.
        assert np.abs(np.asarray(saved, dtype=np.int16) - np.asarray(regenerated, dtype=np.int16)).max() <= 1
    whole = studio.generate(request_from_infotext(result.images[0].infotext).model_copy(update={"batch_size": 2}))
    assert whole.seeds == result.seeds
    for original, regenerated in zip(result.images, whole.images, strict=True):
        with Image.open(original.path) as a, Image.open(regenerated.path) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_inpaint_round_trip_through_studio(studio):
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = Image.new("L", (32, 32))
    mask.paste(255, (0, 0, 16, 32))
    images = {"init_image": _b64(init), "mask": _b64(mask)}
    request = GenerationRequest(prompt="a cat", model="tiny-sd", steps=4, seed=11, width=32, height=32,
                                denoising_strength=0.75, mask_blur=1, **images)
    result = studio.generate(request)
    info = result.images[0].infotext
    assert "Denoising strength: 0.75" in info and "Mask blur: 1" in info
    again = studio.generate(request_from_infotext(info, **images))
    assert np.array_equal(np.asarray(result.images[0].pil), np.asarray(again.images[0].pil))
    # Studio's decoded inputs reach the engine: the unmasked half is the original.
    assert np.array_equal(np.asarray(result.images[0].pil)[:, 20:], np.asarray(init)[:, 20:])


def test_seeds_past_2_32_are_accepted_up_to_torchs_largest():
    from pydantic import ValidationError

    from guardforge.engine.request import SEED_MAX

    assert request_from_infotext("x\nSteps: 2, Seed: 4294967296, Size: 64x64").seed == 4294967296
    assert GenerationRequest(prompt="x", seed=SEED_MAX - 3, batch_size=2, n_iter=2).seed == SEED_MAX - 3
    with pytest.raises(ValidationError, match="run past the largest seed"):
        GenerationRequest(prompt="x", seed=SEED_MAX - 2, batch_size=2, n_iter=2)
    with pytest.raises(ValidationError):
        GenerationRequest(prompt="x", seed=SEED_MAX + 1)
