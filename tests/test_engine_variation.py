"""Variation seeds and "resize seed from" (A1111's subseed, subseed_strength, seed_resize_from_w/h) on the tiny SD
model: txt2img, img2img, inpaint, batches, the noise itself, the request's checks and the infotext."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from guardforge.engine.infotext import build_infotext, parse_infotext, request_from_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.engine.variation import Variation, _recipe, paste_centred, slerp
from tests.test_engine import _half_mask, _init_image, engine, loaded, pixels, req  # noqa: F401 (fixtures)


def one(engine, loaded, **kw):
    [(image, _)] = engine.run(loaded, req(**kw))
    return pixels(image)


def most(a, b) -> int:
    return int(np.abs(a - b).max())


def test_strength_0_is_no_variation_and_1_is_the_subseeds_image(engine, loaded):
    plain = one(engine, loaded, seed=5)
    assert np.array_equal(one(engine, loaded, seed=5, subseed=9, subseed_strength=0.0), plain)
    # Euler draws no noise while sampling, so strength 1 starts and ends as seed 9 does (A1111 gives the same:
    # its slerp at 1 returns the subseed's noise; float rounding in the slerp may move a pixel by one level).
    assert most(one(engine, loaded, seed=5, subseed=9, subseed_strength=1.0), one(engine, loaded, seed=9)) <= 1
    half = one(engine, loaded, seed=5, subseed=9, subseed_strength=0.5)
    assert most(half, plain) > 20 and most(half, one(engine, loaded, seed=9)) > 20
    # A tiny strength is a tiny change: the seed's noise is the pipeline's own, not a redraw of it.
    assert most(one(engine, loaded, seed=5, subseed=9, subseed_strength=1e-6), plain) <= 1


def test_ancestral_samplers_keep_drawing_from_the_seed_as_in_a1111(engine, loaded):
    """A1111 seeds the sampler's per-step noise with the image's seed, not the subseed: with Euler a, strength 1
    starts from the subseed's noise but is not seed 9's image."""
    full = one(engine, loaded, seed=5, subseed=9, subseed_strength=1.0, sampler="Euler a", steps=4)
    assert not np.array_equal(full, one(engine, loaded, seed=9, sampler="Euler a", steps=4))
    assert np.array_equal(one(engine, loaded, seed=5, subseed=9, subseed_strength=0.0, sampler="Euler a"),
                          one(engine, loaded, seed=5, sampler="Euler a"))


def test_a_batch_keeps_one_seed_and_numbers_the_subseeds(engine, loaded):
    outputs = engine.run(loaded, req(seed=20, subseed=30, subseed_strength=0.4, batch_size=2, n_iter=2))
    assert [seed for _, seed in outputs] == [20, 20, 20, 20]  # A1111: with a strength, no seed+1
    # The fourth image is subseed 33's variation of seed 20, whether made fourth or alone.
    alone = one(engine, loaded, seed=20, subseed=33, subseed_strength=0.4)
    assert most(pixels(outputs[3][0]), alone) <= 1
    assert not np.array_equal(pixels(outputs[0][0]), pixels(outputs[1][0]))


def test_a_random_subseed_is_drawn_once_and_counts_up():
    from guardforge.engine.variation import request_subseeds, with_fixed_subseed

    fixed = with_fixed_subseed(GenerationRequest(prompt="x", subseed=-1, subseed_strength=0.3, batch_size=3))
    first = fixed.subseed
    assert 0 <= first < 2**32 and request_subseeds(fixed) == [first, first + 1, first + 2]
    assert with_fixed_subseed(fixed) is fixed


@pytest.mark.parametrize("inpaint", [False, True])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_and_inpaint_vary_the_noise_they_add(engine, loaded, inpaint, strength):
    init = _init_image(32, 32)
    kw = dict(init_image="x", width=32, height=32, denoising_strength=strength, steps=4, mask_blur=0)
    mask = None
    if inpaint:
        kw["mask"], mask = "x", _half_mask(32, 32)

    def run(**extra):
        [(image, _)] = engine.run(loaded, req(**kw, **extra), init_image=init, mask=mask)
        return pixels(image)

    plain = run(seed=5)
    assert np.array_equal(run(seed=5, subseed=9, subseed_strength=0.0), plain)
    assert most(run(seed=5, subseed=9, subseed_strength=1e-6), plain) <= 1  # the pipeline's own noise, varied
    varied = run(seed=5, subseed=9, subseed_strength=0.5)
    assert most(varied, plain) > 20
    again = run(seed=5, subseed=9, subseed_strength=0.5)
    assert np.array_equal(varied, again)
    if inpaint:  # what the mask keeps stays the original's
        assert np.array_equal(varied[:, 16:], pixels(init)[:, 16:])


def test_the_subseeds_noise_is_drawn_as_the_pipeline_drew_the_seeds(loaded):
    """img2img samples the image through the VAE with each image's generator before drawing its noise: the
    subseed's noise must be drawn after the same sample, so _recipe must find it in the noise diffusers draws."""
    pipe = loaded.for_mode("img2img")
    captured = []
    scheduler = pipe.scheduler
    original = scheduler.add_noise

    def capture(samples, noise, timesteps):
        captured.append(noise.clone())
        return original(samples, noise, timesteps)

    scheduler.add_noise = capture
    try:
        pipe(prompt="x", image=_init_image(32, 32), strength=0.5, num_inference_steps=2, output_type="latent",
             generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 4)], num_images_per_prompt=2)
    finally:
        del scheduler.add_noise
    noise = captured[0]
    for base, seed in zip(noise, (3, 4)):
        assert _recipe(base, seed, [torch.float32]) == (torch.float32,)
    assert _recipe(torch.randn(noise.shape[1:]), 3, [torch.float32]) == ()  # no draw gives it: none assumed


def test_seed_resize_pastes_the_old_sizes_noise_in_the_centre(loaded):
    pipe = loaded.pipeline
    request = req(seed=7, width=32, height=24, seed_resize_from_w=16, seed_resize_from_h=8)
    variation = Variation.of(request, pipe)
    generators = [torch.Generator("cpu").manual_seed(7)]
    [latents] = variation.prepare_batch(pipe, "txt2img", {"width": 32, "height": 24}, generators, [7], [0],
                                        torch.float32)["latents"]
    assert latents.shape == (4, 12, 16)  # the tiny VAE halves each side
    own = torch.randn((1, 4, 12, 16), generator=torch.Generator("cpu").manual_seed(7))[0]
    small = torch.randn((1, 4, 4, 8), generator=torch.Generator("cpu").manual_seed(7))[0]
    assert torch.equal(latents[:, 4:8, 4:12], small)  # the 16x8 image's noise, centred
    outside = torch.ones_like(latents, dtype=torch.bool)
    outside[:, 4:8, 4:12] = False
    assert torch.equal(latents[outside], own[outside])  # the rest: this size's own noise
    # The pipeline's generator went on past its own draw, as without a resize.
    after = torch.Generator("cpu").manual_seed(7)
    torch.randn((1, 4, 12, 16), generator=after)
    assert torch.equal(generators[0].get_state(), after.get_state())


def test_seed_resize_changes_the_image_and_from_the_same_size_does_nothing(engine, loaded):
    plain = one(engine, loaded, seed=7, width=32, height=32)
    assert np.array_equal(one(engine, loaded, seed=7, width=32, height=32, seed_resize_from_w=32,
                              seed_resize_from_h=32), plain)
    resized = one(engine, loaded, seed=7, width=32, height=32, seed_resize_from_w=16, seed_resize_from_h=16)
    assert most(resized, plain) > 20


def test_paste_centred_crops_a_larger_noise_centrally():
    small = torch.arange(36.0).reshape(1, 6, 6)
    big = torch.zeros(1, 4, 4)
    assert torch.equal(paste_centred(small, big), small[:, 1:5, 1:5])
    wide = paste_centred(torch.ones(1, 2, 6), torch.zeros(1, 4, 4))
    assert wide[0].tolist() == [[0] * 4, [1] * 4, [1] * 4, [0] * 4]


def test_slerp_ends_are_its_inputs():
    low, high = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert torch.allclose(slerp(0.0, low, high), low, atol=1e-5)
    assert torch.allclose(slerp(1.0, low, high), high, atol=1e-5)
    mid = slerp(0.5, low, high)
    assert not torch.allclose(mid, low) and not torch.allclose(mid, high)


@pytest.mark.parametrize("fields, message", [
    ({"subseed_strength": 1.5}, "less than or equal to 1"),
    ({"subseed": -2}, "greater than or equal to -1"),
    ({"seed_resize_from_w": 64}, "needs both a width and a height"),
    ({"seed_resize_from_w": 60, "seed_resize_from_h": 64}, "multiples of 8"),
    ({"subseed": 2**64 - 1, "subseed_strength": 0.5, "batch_size": 2}, "subseeds"),
])
def test_bad_variation_fields_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        GenerationRequest(prompt="x", **fields)


def test_seed_resize_is_held_to_the_size_limits():
    from guardforge.errors import InvalidRequest
    from guardforge.settings import Limits

    request = GenerationRequest(prompt="x", seed_resize_from_w=4096, seed_resize_from_h=64)
    with pytest.raises(InvalidRequest, match="seed_resize_from_w=4096 is over"):
        request.check_limits(Limits(max_width=1024))


def test_infotext_writes_and_reads_the_variation_keys_as_a1111():
    request = GenerationRequest(prompt="a cat", seed=5, subseed=9, subseed_strength=0.25, seed_resize_from_w=512,
                                seed_resize_from_h=384, steps=20, sampler="Euler")
    text = build_infotext(request, seed=5, width=640, height=512, model_name="m", model_hash="abc", subseed=10)
    assert ("Seed: 5, Size: 640x512, Model hash: abc, Model: m, Variation seed: 10, Variation seed strength: 0.25, "
            "Seed resize from: 512x384") in text
    parsed = parse_infotext(text)
    assert parsed["Seed resize from-1"] == "512" and parsed["Seed resize from-2"] == "384"
    back = request_from_infotext(text)
    assert (back.subseed, back.subseed_strength, back.seed_resize_from_w, back.seed_resize_from_h) == (10, 0.25, 512,
                                                                                                       384)
    plain = build_infotext(request.model_copy(update={"subseed_strength": 0.0, "seed_resize_from_w": -1,
                                                      "seed_resize_from_h": -1}),
                           seed=5, width=640, height=512, model_name="m", model_hash="abc", subseed=10)
    assert "Variation" not in plain and "Seed resize" not in plain


def test_models_without_a_unet_refuse_variation():
    from guardforge.engine.variation import check_family
    from guardforge.errors import InvalidRequest

    varied = GenerationRequest(prompt="x", subseed_strength=0.2)
    for family in ("sd3", "flux"):
        with pytest.raises(InvalidRequest, match=f"UNet models .* only.*\\({family}\\)"):
            check_family(varied, family)
        check_family(GenerationRequest(prompt="x"), family)
    check_family(varied, "sdxl")
    with pytest.raises(InvalidRequest, match="UNet models"):
        Variation.of(varied, object())  # a pipeline with no `unet`, as SD3's and Flux's


def test_sdxl_variation_in_txt2img_and_img2img(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from guardforge.engine.pipelines import Engine
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import MemorySettings, Settings
    from tests.test_models_loading import _tiny_sdxl_folder

    pipe = StableDiffusionXLPipeline.from_pretrained(_tiny_sdxl_folder(tmp_path / "tiny-xl"))
    loaded_xl = LoadedModel(entry=None, pipeline=pipe, memory=MemorySettings(), device=torch.device("cpu"))
    engine = Engine(Settings(home=tmp_path / "home"))
    init = _init_image(16, 16)

    def run(**kw):
        image = init if "init_image" in kw else None
        [(made, _)] = engine.run(loaded_xl, req(steps=3, **kw), init_image=image)
        return pixels(made)

    plain = run(seed=4)
    assert np.array_equal(run(seed=4, subseed=6, subseed_strength=0.0), plain)
    assert most(run(seed=4, subseed=6, subseed_strength=1.0), run(seed=6)) <= 1
    assert most(run(seed=4, subseed=6, subseed_strength=0.5), plain) > 10
    img2img = dict(init_image="x", denoising_strength=0.6)
    plain = run(seed=4, **img2img)
    assert most(run(seed=4, subseed=6, subseed_strength=1e-6, **img2img), plain) <= 1
    assert most(run(seed=4, subseed=6, subseed_strength=0.7, **img2img), plain) > 10
