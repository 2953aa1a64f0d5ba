"""Engine on the tiny SD model: samplers, seeds, batches, img2img, inpaint, clip skip, progress, cancel."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from guardforge.engine.pipelines import Engine
from guardforge.engine.request import GenerationRequest
from guardforge.engine.samplers import SAMPLERS, build_scheduler, canonical_sampler_name
from guardforge.errors import Cancelled, InvalidRequest


def make_loaded(model_dir):
    """A LoadedModel built the way the cache builds one: a diffusers pipeline from the model folder, on CPU."""
    from diffusers import StableDiffusionPipeline

    from guardforge.models.cache import LoadedModel
    from guardforge.models.families import family_from_folder
    from guardforge.models.registry import ModelEntry
    from guardforge.settings import MemorySettings

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    entry = ModelEntry(name="tiny-sd", path=model_dir, kind="checkpoint", format="diffusers",
                       family=family_from_folder(model_dir), source="user")
    return LoadedModel(entry=entry, pipeline=pipe, memory=MemorySettings(), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return make_loaded(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from guardforge.settings import Settings

    return Engine(Settings(home=tmp_path_factory.mktemp("home")))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def req(**kw) -> GenerationRequest:
    base = {"prompt": "a red square", "negative_prompt": "blurry", "steps": 2, "seed": 1, "sampler": "Euler"}
    return GenerationRequest(**{**base, **kw})


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(engine, loaded, sampler):
    [(image, seed)] = engine.run(loaded, req(sampler=sampler))
    assert image.size == (16, 16)  # tiny UNet sample_size 8 x VAE scale factor 2
    assert seed == 1
    assert pixels(image).std() > 0  # a real decode, not a blank


def test_sampler_names_as_a1111_spells_them():
    assert canonical_sampler_name("k_euler_a") == "Euler a"
    assert canonical_sampler_name("EULER A") == "Euler a"
    assert canonical_sampler_name("dpm++ 2m sde") == "DPM++ 2M SDE"
    assert canonical_sampler_name("nope") is None
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "DPM2 a", "Heun", "LMS", "DDIM",
            "PNDM", "UniPC", "LCM", "DEIS"} <= set(SAMPLERS)
    with pytest.raises(ValidationError, match="unknown sampler"):
        GenerationRequest(prompt="x", sampler="Euler b")


def test_scheduler_keeps_model_config_and_schedule_type(loaded):
    config = loaded.pipeline.scheduler.config
    karras = build_scheduler(config, "Euler", "Karras")
    assert karras.config.use_karras_sigmas and karras.config.beta_schedule == config.beta_schedule
    assert build_scheduler(config, "DPM++ 2M", "Automatic").config.use_karras_sigmas  # A1111's default for it
    assert build_scheduler(config, "DPM++ 2M SDE", "Automatic").config.use_exponential_sigmas
    assert not build_scheduler(config, "Euler", "Automatic").config.use_karras_sigmas
    with pytest.raises(InvalidRequest, match="no Karras schedule"):
        build_scheduler(config, "DDIM", "Karras")


def test_schedule_type_changes_the_image(engine, loaded):
    [(plain, _)] = engine.run(loaded, req(steps=3))
    [(karras, _)] = engine.run(loaded, req(steps=3, schedule="Karras"))
    assert not np.array_equal(pixels(plain), pixels(karras))


def test_same_seed_same_pixels_other_seed_different(engine, loaded):
    [(a, _)] = engine.run(loaded, req(sampler="Euler a", seed=42))
    [(b, _)] = engine.run(loaded, req(sampler="Euler a", seed=42))
    [(c, _)] = engine.run(loaded, req(sampler="Euler a", seed=43))
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_seeds_count_up_and_match_single_runs(engine, loaded):
    outputs = engine.run(loaded, req(seed=10, batch_size=2, n_iter=2, sampler="Euler a"))
    assert [seed for _, seed in outputs] == [10, 11, 12, 13]
    # Each image has its own CPU generator, so image 3 of the batch is the image seed 13 makes alone.
    [(alone, _)] = engine.run(loaded, req(seed=13, sampler="Euler a"))
    assert np.abs(pixels(outputs[3][0]) - pixels(alone)).max() <= 1
    assert not np.array_equal(pixels(outputs[0][0]), pixels(outputs[1][0]))


def test_random_seed_is_reported_and_reproduces(engine, loaded):
    [(image, seed)] = engine.run(loaded, req(seed=-1))
    assert 0 <= seed < 2**32
    [(again, _)] = engine.run(loaded, req(seed=seed))
    assert np.array_equal(pixels(image), pixels(again))


def test_progress_events_cover_the_whole_request(engine, loaded):
    events = []
    engine.run(loaded, req(steps=3, n_iter=2), on_progress=events.append)
    assert [e.step for e in events] == list(range(1, 7))
    assert {e.total for e in events} == {6}
    assert [e.batch_index for e in events] == [0, 0, 0, 1, 1, 1]
    assert events[-1].eta_s == 0 and all(e.it_per_s > 0 for e in events)


def test_skip_ends_the_current_batch_only(engine, loaded):
    """A1111's skip: the batch in progress stops early and keeps its partial images; later batches run whole."""
    [(first, _), (second, _), (third, _)] = whole = engine.run(loaded, req(steps=6, n_iter=3))
    skip = threading.Event()
    events = []

    def on_progress(event):
        events.append((event.batch_index, event.step))
        if event.batch_index == 0 and event.step == 2:
            skip.set()

    skipped = engine.run(loaded, req(steps=6, n_iter=3), on_progress=on_progress, skip=skip)
    assert [seed for _, seed in skipped] == [seed for _, seed in whole] == [1, 2, 3]
    assert not np.array_equal(pixels(skipped[0][0]), pixels(first))  # stopped after 2 of 6 steps
    assert np.array_equal(pixels(skipped[1][0]), pixels(second))
    assert np.array_equal(pixels(skipped[2][0]), pixels(third))
    # Progress counts the skipped steps as done, so the next batch starts at step 7 of 18.
    assert events == [(0, 1), (0, 2)] + [(1, s) for s in range(7, 13)] + [(2, s) for s in range(13, 19)]
    assert not skip.is_set()


def test_interrupt_delivers_the_batch_in_progress_and_runs_no_more(engine, loaded):
    interrupt = threading.Event()

    def on_progress(event):
        if event.batch_index == 1 and event.step == 8:
            interrupt.set()

    results = engine.run(loaded, req(steps=6, n_iter=3), on_progress=on_progress, interrupt=interrupt)
    assert [seed for _, seed in results] == [1, 2]  # batch 0 whole, batch 1 cut short, batch 2 never ran


def test_re_placing_weights_waits_for_the_generation_in_progress(engine, tiny_model_dir):
    """Another request's memory settings (here bf16) must not change the weights under a running generation."""
    from guardforge.settings import MemorySettings

    loaded = make_loaded(tiny_model_dir)
    [(reference, _)] = engine.run(loaded, req(steps=4))
    order, dtypes = [], []
    placer = threading.Thread(target=lambda: (loaded.place(MemorySettings(dtype="bf16")), order.append("placed")))

    def on_progress(event):
        dtypes.append(loaded.pipeline.unet.dtype)
        if event.step == 1:
            placer.start()
            placer.join(timeout=0.5)  # long enough for an unguarded re-place to finish mid-run

    [(image, _)] = engine.run(loaded, req(steps=4), on_progress=on_progress)
    order.append("generated")
    placer.join()
    assert order == ["generated", "placed"]
    assert dtypes == [torch.float32] * 4
    assert np.array_equal(pixels(image), pixels(reference))
    assert loaded.pipeline.unet.dtype == torch.bfloat16


def test_cancel_from_progress_stops_promptly(engine, loaded):
    cancel = threading.Event()
    seen = []
    cancelled_at = []

    def on_progress(event):
        seen.append(event.step)
        if event.step == 2:
            cancel.set()
            cancelled_at.append(time.perf_counter())

    with pytest.raises(Cancelled):
        engine.run(loaded, req(steps=50), on_progress=on_progress, cancel=cancel)
    # Measured from the cancel, not from the start, so a slow first run on a busy machine does not count.
    assert time.perf_counter() - cancelled_at[0] < 2
    assert seen == [1, 2]  # stopped at the step that saw the cancel: 48 steps never ran
    # The pipeline is usable afterwards and its scheduler is the model's own again.
    assert type(loaded.pipeline.scheduler).__name__ == "PNDMScheduler"
    assert len(engine.run(loaded, req())) == 1


def test_cancel_before_start(engine, loaded):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine.run(loaded, req(), cancel=cancel)


def test_size_defaults_to_native_and_follows_request(engine, loaded):
    [(image, _)] = engine.run(loaded, req(width=32, height=24))
    assert image.size == (32, 24)


def test_width_not_multiple_of_8_is_rejected():
    with pytest.raises(ValidationError, match="multiple of 8"):
        GenerationRequest(prompt="x", width=20)


def _init_image(width=40, height=24):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_img2img_uses_request_size_and_strength(engine, loaded):
    init = _init_image()
    request = req(init_image="x", width=32, height=16, denoising_strength=0.5, steps=4)
    [(image, _)] = engine.run(loaded, request, init_image=init)
    assert image.size == (32, 16)
    [(stronger, _)] = engine.run(loaded, request.model_copy(update={"denoising_strength": 1.0}), init_image=init)
    assert not np.array_equal(pixels(image), pixels(stronger))
    with pytest.raises(InvalidRequest, match="no step"):
        engine.run(loaded, request.model_copy(update={"denoising_strength": 0.1}), init_image=init)


def _half_mask(width, height):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, : width // 2] = 255
    return Image.fromarray(mask)


def test_inpaint_changes_only_masked_pixels(engine, loaded):
    init = _init_image(32, 32)
    request = req(init_image="x", mask="x", width=32, height=32, mask_blur=0, denoising_strength=1.0)
    [(image, _)] = engine.run(loaded, request, init_image=init, mask=_half_mask(32, 32))
    out, original = pixels(image), pixels(init)
    assert image.size == (32, 32)
    assert np.array_equal(out[:, 16:], original[:, 16:])  # unmasked: exactly the original
    assert not np.array_equal(out[:, :16], original[:, :16])  # masked: repainted

    inverted = request.model_copy(update={"inpainting_mask_invert": True})
    [(image, _)] = engine.run(loaded, inverted, init_image=init, mask=_half_mask(32, 32))
    out = pixels(image)
    assert np.array_equal(out[:, :16], original[:, :16])
    assert not np.array_equal(out[:, 16:], original[:, 16:])


def test_inpaint_mask_blur_feathers_the_edge(engine, loaded):
    init = _init_image(64, 64)
    request = req(init_image="x", mask="x", width=64, height=64, mask_blur=2, denoising_strength=1.0)
    [(image, _)] = engine.run(loaded, request, init_image=init, mask=_half_mask(64, 64))
    out, original = pixels(image), pixels(init)
    assert np.array_equal(out[:, 48:], original[:, 48:])  # far from the edge: untouched
    edge = out[:, 33:36]  # just outside the mask: blended, neither original nor fully repainted
    assert not np.array_equal(edge, original[:, 33:36])


def test_clip_skip_changes_the_image(engine, loaded):
    [(one, _)] = engine.run(loaded, req(clip_skip=1))
    [(two, _)] = engine.run(loaded, req(clip_skip=2))
    assert not np.array_equal(pixels(one), pixels(two))
    with pytest.raises(InvalidRequest, match="only 3 layers"):
        engine.run(loaded, req(clip_skip=4))


def test_engine_pixels_equal_a_plain_diffusers_call(engine, loaded):
    """Without weights or clip skip, the engine's compel embeddings and seeding add nothing diffusers would not do."""
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = loaded.pipeline
    [(ours, _)] = engine.run(loaded, req(sampler="Euler a", steps=3, seed=9))
    base = pipe.scheduler
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(base.config)
    try:
        plain = pipe("a red square", negative_prompt="blurry", num_inference_steps=3, guidance_scale=7.0,
                     generator=torch.Generator("cpu").manual_seed(9)).images[0]
    finally:
        pipe.scheduler = base
    assert np.array_equal(pixels(ours), pixels(plain))


def _square_on_transparent_white(size=32, start=8, end=24):
    """An editor's mask: opaque strokes (a square) on a transparent white canvas."""
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[start:end, start:end, 3] = 255
    return Image.fromarray(rgba, "RGBA")


def test_inpaint_reads_an_rgba_masks_alpha_as_a1111_does(engine, loaded):
    init = _init_image(32, 32)
    request = req(init_image="x", mask="x", width=32, height=32, mask_blur=0, denoising_strength=1.0)
    [(image, _)] = engine.run(loaded, request, init_image=init, mask=_square_on_transparent_white())
    out, original = pixels(image), pixels(init)
    inside = np.zeros((32, 32), dtype=bool)
    inside[8:24, 8:24] = True
    assert np.array_equal(out[~inside], original[~inside])  # the transparent canvas: kept exactly
    assert not np.array_equal(out[inside], original[inside])  # the opaque square: repainted


def test_binary_mask_thresholds_alpha_at_128_and_keeps_grey_masks():
    from guardforge.engine.pipelines import binary_mask, prepare_mask

    alpha = np.array([[0, 128, 129, 254]], dtype=np.uint8)
    rgba = np.zeros((1, 4, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    assert np.asarray(binary_mask(Image.fromarray(rgba, "RGBA"))).tolist() == [[0, 0, 255, 255]]
    la = Image.fromarray(np.stack([np.full_like(alpha, 255), alpha], axis=-1), "LA")
    assert np.asarray(binary_mask(la)).tolist() == [[0, 0, 255, 255]]
    # Fully opaque RGBA and plain grey masks: their grey level, not cut (A1111 leaves soft masks soft).
    opaque = np.full((1, 4, 4), 255, dtype=np.uint8)
    opaque[..., 0] = opaque[..., 1] = opaque[..., 2] = alpha
    assert np.asarray(binary_mask(Image.fromarray(opaque, "RGBA"))).tolist() == alpha.tolist()
    assert np.asarray(binary_mask(Image.fromarray(alpha, "L"))).tolist() == alpha.tolist()
    # Invert comes after the alpha cut: the transparent canvas becomes the part repainted.
    inverted = np.asarray(prepare_mask(_square_on_transparent_white(), (32, 32), blur=0, invert=True))
    assert inverted[0, 0] == 255 and inverted[16, 16] == 0
