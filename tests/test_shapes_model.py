"""The shipped tiny-shapes model: loads offline, follows captions, and runs img2img and inpainting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect

MODEL = Path(__file__).resolve().parent.parent / "guardforge" / "assets" / "models" / "tiny-shapes"
pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="tiny-shapes not exported")


@pytest.fixture(scope="module")
def pipe():
    from guardforge.train.shapes.adherence import load_pipeline

    torch.set_num_threads(1)
    return load_pipeline(MODEL, "Euler")


def test_shipped_folder_is_small_and_loads_with_the_network_off():
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, size
    assert not list(MODEL.rglob("*.bin")) and list(MODEL.rglob("*.safetensors"))
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    code = ("from diffusers import StableDiffusionPipeline; import sys; "
            f"p = StableDiffusionPipeline.from_pretrained({str(MODEL)!r}, local_files_only=True); "
            "print(p.unet.config.sample_size * p.vae_scale_factor, p.tokenizer.model_max_length)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["64", "32"]


def test_guidance_makes_two_object_images_follow_the_caption(pipe):
    """Guidance on against off. On two-object captions the model must bind each colour and shape to its place,
    and without guidance it slips (a small object comes out the wrong shape); single-object captions fix every
    pixel, so there CFG 1.0 already lands on the true image (the test below, and docs/tiny-shapes.md)."""
    from guardforge.train.shapes.adherence import evaluate_pairs, vae_round_trip_pairs

    unguided = evaluate_pairs(pipe, 40, steps=12, cfg=1.0, seed=0).correct
    guided = evaluate_pairs(pipe, 40, steps=12, cfg=3.0, seed=0).correct
    assert guided["shape"] > unguided["shape"] and guided["both"] >= unguided["both"] + 5, (guided, unguided)
    # The ceiling: the same captions' true images through the VAE, read the same way.
    assert vae_round_trip_pairs(pipe, 40).accuracy()["both"] >= 0.9


def test_decoding_the_final_latents_is_the_pipelines_own_pil_path(pipe):
    from guardforge.train.shapes.adherence import generate

    prompt = "a small green square on the left, on a white background"
    ours = generate(pipe, [prompt], steps=6, cfg=7.5, seed=3)[0]
    theirs = pipe(prompt, num_inference_steps=6, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_vae_round_trip_reads_back_every_attribute(pipe):
    from guardforge.train.shapes.adherence import vae_round_trip

    accuracy = vae_round_trip(pipe, held_out=False, n=20).accuracy()
    assert all(accuracy[a] == 1.0 for a in ("background", "colour", "position", "size")), accuracy
    # A few small stars decode as blobs a human would not call stars either.
    assert accuracy["shape"] >= 0.9, accuracy


def test_guidance_moves_the_latents_away_from_the_captions_true_images(pipe):
    """The captions fix every attribute, so the conditional model alone lands near the true image's latents;
    CFG 7.5 extrapolates past them (over-saturation): on single objects guidance has nothing to add."""
    from guardforge.train.shapes.adherence import evaluate

    unguided = evaluate(pipe, held_out=False, n=8, steps=12, cfg=1.0, seed=5).latent_error
    guided = evaluate(pipe, held_out=False, n=8, steps=12, cfg=7.5, seed=5).latent_error
    assert unguided < 0.05 and guided > 2 * unguided, (unguided, guided)


def _red_circle() -> np.ndarray:
    obj = data.ShapeObject("red", "circle", "large", "centre")
    return data.render(data.Scene("white", [obj]))


def test_img2img_changes_the_colour_it_is_asked_to(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    before = detect(_red_circle())
    assert before.colour == "red"
    image = img2img("a large blue circle in the centre, on a white background", image=_red_circle(),
                    strength=0.8, num_inference_steps=20, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(0)).images[0]
    assert detect(image, shapes=data.SHAPES).colour == "blue"


def test_inpaint_through_the_engine_changes_the_masked_region_only(tmp_path):
    """tiny-shapes has an 8-channel latent, which diffusers' SD inpaint pipeline refuses: the engine inpaints
    it as img2img with the known region put back after every step (engine/latent_inpaint.py)."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from guardforge.engine.pipelines import Engine
    from guardforge.engine.request import GenerationRequest
    from guardforge.models.cache import LoadedModel
    from guardforge.models.families import family_from_folder
    from guardforge.models.registry import ModelEntry
    from guardforge.settings import MemorySettings, Settings

    torch.set_num_threads(1)
    entry = ModelEntry(name="tiny-shapes", path=MODEL, kind="checkpoint", format="diffusers",
                       family=family_from_folder(MODEL), source="package")
    pipeline = StableDiffusionPipeline.from_pretrained(MODEL, local_files_only=True)
    loaded = LoadedModel(entry=entry, pipeline=pipeline, memory=MemorySettings(), device=torch.device("cpu"))
    scene = data.Scene("white", [data.ShapeObject("red", "circle", "large", "left")])
    source = data.render(scene)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:56, 32:64] = 255  # the right half, where nothing is yet
    request = GenerationRequest(prompt="a large blue square on the right, on a white background", init_image="x",
                                mask="x", width=64, height=64, mask_blur=0, denoising_strength=1.0, steps=20,
                                cfg_scale=7.5, sampler="Euler", seed=0)
    [(image, _)] = Engine(Settings(home=tmp_path)).run(loaded, request, init_image=source,
                                                       mask=Image.fromarray(mask))
    before, after = np.asarray(source, dtype=float), np.asarray(image, dtype=float)
    assert np.array_equal(after[mask == 0], before[mask == 0])  # outside the mask: the original, exactly
    right = after[8:56, 32:64].reshape(-1, 3)
    blue = np.array(data.PALETTE["blue"], dtype=float)
    assert (np.linalg.norm(right - blue, axis=1) < 80).sum() > 30  # a blue object appeared there
    assert detect(Image.fromarray(after[:, :32].astype(np.uint8)).resize((64, 64))).colour == "red"


def test_latent_blend_puts_the_known_region_back(pipe):
    """Without the blend, img2img repaints everything; with it, after every Euler step the latents outside the
    mask are the original's noised to the next sigma (x0 + sigma * noise), the clean original after the last
    step, and inside they are new. Strength 0.6 starts part-way down the schedule."""
    from types import SimpleNamespace

    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
    from PIL import Image

    from guardforge.engine.latent_inpaint import LatentBlend, needs_latent_blend

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.scheduler = EulerDiscreteScheduler.from_config(img2img.scheduler.config)
    assert needs_latent_blend(img2img)
    assert not needs_latent_blend(SimpleNamespace(transformer=object(), vae=img2img.vae))  # SD3, Flux
    source = data.render(data.Scene("white", [data.ShapeObject("red", "circle", "large", "left")]))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255

    def run(blend, strength):
        seen = []

        def record(p, step, timestep, kwargs):
            kwargs = blend(p, step, timestep, kwargs) if blend else kwargs
            sigma = p.scheduler.sigmas[p.scheduler.step_index]  # the next step's sigma, 0 after the last
            seen.append((kwargs["latents"].clone(), float(sigma)))
            return kwargs

        img2img("a large blue square on the right, on a white background", image=source, strength=strength,
                num_inference_steps=8, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                callback_on_step_end=record, output_type="latent")
        return seen

    blend = LatentBlend(img2img, source, Image.fromarray(mask))
    blend.start_batch([0])
    keep = (blend.mask == 0).expand(1, blend.image_latents.shape[1], -1, -1)
    x0, noise = blend.image_latents, blend.noise
    for strength, steps in ((1.0, 8), (0.6, 4)):
        seen = run(blend, strength)
        assert len(seen) == steps
        for latents, sigma in seen:
            torch.testing.assert_close(latents[keep], (x0 + sigma * noise)[keep], rtol=1e-5, atol=1e-5)
        assert seen[-1][1] == 0.0
        assert not torch.allclose(seen[-1][0][~keep], x0[~keep], atol=0.1)  # the masked half is repainted
    plain = run(None, 1.0)[-1][0]
    assert not torch.allclose(plain[keep], x0[keep], atol=0.1)


def test_adherence_command_prints_every_row_and_writes_the_grids(tmp_path):
    from typer.testing import CliRunner

    from guardforge.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["eval", "adherence", "--n", "2", "--two-objects", "2", "--steps", "2",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert {"held-out", "seen", "two"} <= set(rows) and rows.count("VAE") == 3, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "held-out_Euler_cfg7.5_steps2.png", "seen_Euler_cfg7.5_steps2.png", "two-objects_Euler_cfg7.5_steps2.png"]
