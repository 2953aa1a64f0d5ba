"""Outpainting and "Masked content" (inpainting_fill) on tiny real models: a plain 4-channel SD UNet (diffusers'
inpaint pipeline), a 9-channel inpainting UNet, and the shipped 8-channel tiny-shapes (the latent blend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from guardforge.engine.masked_content import fill
from guardforge.engine.outpaint import Outpaint, extend
from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest
from tests.test_engine import _init_image, engine, loaded, make_loaded, pixels, req  # noqa: F401 (fixtures)

SHAPES = Path(__file__).resolve().parent.parent / "guardforge" / "assets" / "models" / "tiny-shapes"


def outpaint_req(**kw) -> GenerationRequest:
    return req(**{"init_image": "x", "steps": 4, "denoising_strength": 1.0, **kw})


def check_outpainted(image, init, left, up, keep_margin=0):
    """The old image sits at (left, up), exactly, `keep_margin` pixels in from each extended side; the rest is
    new and made by the model (neither blank nor the edge colours carried outward)."""
    out, old = pixels(image), pixels(init)
    h, w = old.shape[:2]
    inner = out[up:up + h, left:left + w]
    m = keep_margin
    assert np.array_equal(inner[m if up else 0:h - m, m if left else 0:w - m],
                          old[m if up else 0:h - m, m if left else 0:w - m])
    new = np.ones(out.shape[:2], dtype=bool)
    new[up:up + h, left:left + w] = False
    edge = np.pad(old, ((up, out.shape[0] - h - up), (left, out.shape[1] - w - left), (0, 0)), mode="edge")
    assert not np.array_equal(out[new], edge[new])
    assert out[new].std() > 5


def test_outpaint_extends_the_canvas_and_keeps_the_old_pixels(engine, loaded):
    init = _init_image(32, 24)
    request = outpaint_req(outpaint={"left": 16, "down": 8}, mask_blur=0)
    [(image, _)] = engine.run(loaded, request, init_image=init)
    assert image.size == (48, 32)
    check_outpainted(image, init, left=16, up=0)


def test_the_mask_reaches_into_the_old_image_by_twice_the_blur(engine, loaded):
    init = _init_image(32, 32)
    request = outpaint_req(outpaint={"right": 16, "up": 16}, mask_blur=2)
    canvas, mask = extend(init, request)
    assert canvas.size == mask.size == (48, 48)
    grid = np.asarray(mask)
    # Old image at x 0..31, y 16..47: black but for 4 px (2 x blur) along its right and top edges.
    assert (grid[20:48, 0:28] == 0).all() and (grid[16:20, :] == 255).all() and (grid[:, 28:] == 255).all()
    [(image, _)] = engine.run(loaded, request, init_image=init)
    # The blurred seam stays within a few pixels of the mask's edge; beyond it the old pixels are exact.
    check_outpainted(image, init, left=0, up=16, keep_margin=12)


def test_width_and_height_size_the_old_image_first(engine, loaded):
    init = _init_image(40, 40)
    [(image, _)] = engine.run(loaded, outpaint_req(outpaint={"up": 8}, width=16, height=16, mask_blur=0),
                              init_image=init)
    assert image.size == (16, 24)
    resized = init.resize((16, 16), Image.LANCZOS)
    assert np.array_equal(pixels(image)[8:], pixels(resized))


def test_an_image_of_odd_size_is_cut_to_multiples_of_8(engine, loaded):
    [(image, _)] = engine.run(loaded, outpaint_req(outpaint={"left": 8}), init_image=_init_image(37, 21))
    assert image.size == (40, 16)


@pytest.mark.parametrize("mode", ["fill", "original", "latent noise", "latent nothing"])
def test_each_masked_content_mode_gives_its_own_image(engine, loaded, mode):
    init = _init_image(32, 32)
    base = dict(outpaint={"left": 16}, mask_blur=0, denoising_strength=0.6)

    def run(fill_mode):
        [(image, _)] = engine.run(loaded, outpaint_req(**{**base, "inpainting_fill": fill_mode}), init_image=init)
        return image

    image = run(mode)
    check_outpainted(image, init, left=16, up=0)
    others = {"fill": "original", "original": "fill", "latent noise": "latent nothing", "latent nothing": "latent noise"}
    assert not np.array_equal(pixels(image), pixels(run(others[mode])))
    assert np.array_equal(pixels(image), pixels(run(mode)))  # seeded: the same again


def test_outpaint_is_the_default_fill_and_plain_inpaint_keeps_original(engine, loaded):
    init = _init_image(32, 32)
    [(default, _)] = engine.run(loaded, outpaint_req(outpaint={"left": 16}, denoising_strength=0.6), init_image=init)
    [(filled, _)] = engine.run(loaded, outpaint_req(outpaint={"left": 16}, denoising_strength=0.6,
                                                    inpainting_fill="fill"), init_image=init)
    assert np.array_equal(pixels(default), pixels(filled))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    inpaint = req(init_image="x", mask="x", width=32, height=32, denoising_strength=0.6, steps=4, mask_blur=0)
    [(plain, _)] = engine.run(loaded, inpaint, init_image=init, mask=mask)
    [(original, _)] = engine.run(loaded, inpaint.model_copy(update={"inpainting_fill": "original"}), init_image=init,
                                 mask=mask)
    [(zeros, _)] = engine.run(loaded, inpaint.model_copy(update={"inpainting_fill": "latent nothing"}),
                              init_image=init, mask=mask)
    assert np.array_equal(pixels(plain), pixels(original))
    assert not np.array_equal(pixels(plain)[:, :16], pixels(zeros)[:, :16])
    assert np.array_equal(pixels(zeros)[:, 16:], pixels(init)[:, 16:])


def test_fill_paints_the_masked_area_from_around_it_and_leaves_the_rest():
    image = Image.new("RGB", (32, 32), (200, 20, 20))
    image.paste((20, 20, 200), (16, 0, 32, 32))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (12, 0, 20, 32))
    out = np.asarray(fill(image, mask), dtype=np.int16)
    src = np.asarray(image, dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], src[outside])
    # Inside, the colours come from the sides: reddish at the left of the hole, bluish at the right.
    assert out[16, 12, 0] > out[16, 12, 2] and out[16, 19, 2] > out[16, 19, 0]


def tiny_inpainting_loaded(tmp_path):
    """A tiny SD 1.x model with a 9-channel inpainting UNet (latents, mask, masked-image latents)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from tests.tiny import tiny_sd_components

    components = tiny_sd_components(tmp_path / "tok")
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    folder = tmp_path / "tiny-inpainting"
    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)
    return make_loaded(folder)


@pytest.mark.parametrize("model", ["9-channel inpainting UNet", "8-channel tiny-shapes"])
def test_outpaint_on_inpainting_models_and_the_latent_blend(engine, tmp_path, model):
    if model.startswith("9"):
        loaded_model = tiny_inpainting_loaded(tmp_path)
        init = _init_image(32, 32)
    else:
        loaded_model = make_loaded(SHAPES)
        init = _init_image(64, 64)
    assert loaded_model.for_mode("inpaint").unet.config.in_channels in (9, 8)
    for fill_mode in ("fill", "latent noise"):
        request = outpaint_req(outpaint={"right": 16, "down": 16}, mask_blur=0, inpainting_fill=fill_mode,
                               denoising_strength=0.8)
        [(image, _)] = engine.run(loaded_model, request, init_image=init)
        assert image.size == (init.width + 16, init.height + 16)
        check_outpainted(image, init, left=0, up=0)


@pytest.mark.parametrize("fields, message", [
    ({"outpaint": {"left": 12}}, "must be a multiple of 8"),
    ({"outpaint": {"left": -8}}, "greater than or equal to 0"),
    ({"outpaint": {}}, "adds nothing"),
    ({"outpaint": {"sideways": 8}}, "Extra inputs are not permitted"),
    ({"outpaint": "left=8,middle=8"}, "write SIDE=PIXELS"),
    ({"outpaint": {"left": 8}, "mask": "x"}, "makes its own mask"),
    ({"outpaint": {"left": 8}, "inpainting_mask_invert": True}, "makes its own mask"),
    ({"inpainting_fill": "fill"}, "give a mask or outpaint"),
    ({"inpainting_fill": "noise", "mask": "x"}, "Input should be 'fill', 'original'"),
])
def test_bad_outpaint_specs_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        GenerationRequest(prompt="x", init_image="x", **fields)
    with pytest.raises(ValidationError, match="needs an init_image"):
        GenerationRequest(prompt="x", outpaint={"left": 8})


def test_the_outpainted_size_is_held_to_the_limits(engine, loaded):
    from guardforge.settings import Limits

    request = GenerationRequest(prompt="x", init_image="x", outpaint={"left": 64}, width=1000)
    with pytest.raises(InvalidRequest, match="outpainted width=1064 is over this server's limit of 1024"):
        request.check_limits(Limits(max_width=1024))
    # Without a width, the image's own size counts, once it is known.
    big = GenerationRequest(prompt="x", init_image="x", outpaint={"up": 64}, steps=2)
    limited = engine.__class__(engine.settings.model_copy(update={"limits": Limits(max_height=96)}))
    with pytest.raises(InvalidRequest, match="outpainted height=104 is over this server's limit of 96"):
        limited.run(loaded, big, init_image=_init_image(40, 40))


def test_outpaint_text_form_reads_and_writes_the_same():
    spec = Outpaint.model_validate("left=64, up=8")
    assert (spec.left, spec.up, spec.right) == (64, 8, 0) and str(spec) == "left=64,up=8"


@pytest.mark.parametrize("strength", [0.8, 1.0])
def test_variation_seeds_vary_an_outpainting(engine, loaded, strength):
    init = _init_image(32, 32)
    base = dict(outpaint={"left": 16}, mask_blur=0, denoising_strength=strength, seed=3)
    [(plain, _)] = engine.run(loaded, outpaint_req(**base), init_image=init)
    [(varied, _)] = engine.run(loaded, outpaint_req(**base, subseed=8, subseed_strength=0.6), init_image=init)
    [(none, _)] = engine.run(loaded, outpaint_req(**base, subseed=8, subseed_strength=0.0), init_image=init)
    check_outpainted(varied, init, left=16, up=0)
    assert np.array_equal(pixels(none), pixels(plain))
    assert not np.array_equal(pixels(varied)[:, :16], pixels(plain)[:, :16])
