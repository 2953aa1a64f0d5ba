"""Exports round-trip: each file loads back (registry / diffusers) and makes the in-memory model's image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from guardforge.train.dreambooth.callbacks import build_pipeline
from guardforge.train.dreambooth.export import export_all
from guardforge.train.dreambooth.run import BaseComponents, fit
from tests.test_dreambooth_train import make_images, tiny_config


def image_of(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    return pipe("a photo of sks dog", num_inference_steps=3, generator=generator, height=16, width=16,
                output_type="np").images[0]


@pytest.fixture
def folders(tmp_path):
    make_images(tmp_path / "instance", (200, 40, 40))
    make_images(tmp_path / "class", (40, 40, 200))
    models = tmp_path / "models"
    return tmp_path, models


def trained(root, model_dir, **overrides):
    config = tiny_config(root, model_dir, max_steps=3, learning_rate=1e-2, **overrides)
    instance = sorted((root / "instance").iterdir())
    classes = sorted((root / "class").iterdir())
    module, _ = fit(config, BaseComponents.from_folder(model_dir), instance, classes)
    return module


def test_full_exports_round_trip(folders, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    root, models = folders
    module = trained(root, tiny_model_dir, train_text_encoder=True)
    expected = image_of(build_pipeline(module))
    written = export_all(module, ["diffusers", "single_file"], models, "sks-dog")
    assert written == {"diffusers": models / "Stable-diffusion" / "sks-dog",
                       "single_file": models / "Stable-diffusion" / "sks-dog.safetensors"}

    folder_pipe = StableDiffusionPipeline.from_pretrained(written["diffusers"])
    np.testing.assert_allclose(image_of(folder_pipe), expected, atol=1e-5)

    keys = load_file(written["single_file"]).keys()
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    # diffusers' own single-file loader reads the original layout; the tiny model's shape comes from `config`.
    single = StableDiffusionPipeline.from_single_file(
        str(written["single_file"]), config=str(tiny_model_dir), local_files_only=True,
        safety_checker=None, requires_safety_checker=False)
    np.testing.assert_allclose(image_of(single), expected, atol=1e-5)
    # Not the base model's image: training changed something that the exports carry.
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert np.abs(image_of(base) - expected).max() > 1e-4


def test_lora_exports_load_back_with_load_lora_weights(folders, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    root, models = folders
    module = trained(root, tiny_model_dir, mode="lora", train_text_encoder=True,
                     lora={"rank": 4, "alpha": 2.0})
    expected = image_of(build_pipeline(module))
    written = export_all(module, ["lora_diffusers", "lora_kohya"], models, "sks-dog", alpha=2.0)
    assert (written["lora_diffusers"] / "pytorch_lora_weights.safetensors").is_file()

    kohya = load_file(written["lora_kohya"])
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in kohya)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") and k.endswith(".lora_up.weight")
               for k in kohya)
    assert all(float(v) == 2.0 for k, v in kohya.items() if k.endswith(".alpha"))

    base_image = image_of(StableDiffusionPipeline.from_pretrained(tiny_model_dir))
    assert np.abs(base_image - expected).max() > 1e-4
    for source in (written["lora_diffusers"], written["lora_kohya"]):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
        pipe.load_lora_weights(str(source))
        np.testing.assert_allclose(image_of(pipe), expected, atol=1e-5, err_msg=str(source))


def engine_image(studio, loaded, prompt: str) -> np.ndarray:
    from guardforge.engine.request import GenerationRequest

    request = GenerationRequest(prompt=prompt, seed=7, steps=3, width=16, height=16, sampler="Euler")
    return np.asarray(studio.engine.run(loaded, request)[0][0], dtype=np.int16)


def studio_image(studio, prompt: str, model: str) -> np.ndarray:
    from guardforge.engine.request import GenerationRequest

    request = GenerationRequest(prompt=prompt, model=model, seed=7, steps=3, width=16, height=16, sampler="Euler")
    result = studio.generate(request, save=False)
    assert result.images[0].action == "allow"
    return np.asarray(result.images[0].pil, dtype=np.int16)


def in_memory(studio, module):
    """The base model's loaded entry with the trained module's live pipeline in it: the engine runs both alike."""
    from dataclasses import replace

    return replace(studio.pipelines.get("tiny-sd"), pipeline=build_pipeline(module), _modes={})


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_exports_generate_the_in_memory_image_through_the_registry(gf_home, tmp_path, tiny_model_dir, monkeypatch,
                                                                   mode):
    from guardforge.studio import Studio

    monkeypatch.setenv("GUARDFORGE_GUARD__POLICY", "off")  # the same pixels, not a policy's view of them
    make_images(tmp_path / "instance", (200, 40, 40))
    make_images(tmp_path / "class", (40, 40, 200))
    module = trained(tmp_path, tiny_model_dir, mode=mode, train_text_encoder=True)
    formats = ["diffusers", "single_file"] if mode == "full" else ["lora_diffusers", "lora_kohya"]
    studio = Studio()
    prompt = "a photo of sks dog"
    expected = engine_image(studio, in_memory(studio, module), prompt)
    assert np.abs(expected - studio_image(studio, prompt, "tiny-sd")).max() > 1  # training changed the image

    written = export_all(module, formats, gf_home / "models", "sks-dog")
    studio.registry.refresh()  # what train_dreambooth does: no restart
    if mode == "full":
        names = {entry.path: entry.name for entry in studio.registry.list()}
        for fmt in formats:
            got = studio_image(studio, prompt, names[written[fmt]])
            assert np.abs(got - expected).max() <= 1, fmt  # one 8-bit level: float rounding at the PNG step
    else:
        for lora in ("sks-dog", "sks-dog-diffusers"):
            assert studio.registry.resolve(lora, "lora").name == lora
            got = studio_image(studio, f"{prompt} <lora:{lora}:1>", "tiny-sd")
            assert np.abs(got - expected).max() <= 1, lora
