"""LoRA per request: a tiny LoRA made here changes the image, and the next request gets the base weights back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from guardforge.engine.pipelines import Engine
from guardforge.engine.request import GenerationRequest
from guardforge.errors import Cancelled, ModelNotFound
from tests.test_engine import make_loaded, pixels


def save_tiny_lora(unet_dir, target, seed=0):
    """A rank-4 LoRA on the tiny UNet's attention, with non-zero B so that it has an effect."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(target.parent, unet_lora_layers=layers, weight_name=target.name,
                                              safe_serialization=True)
    return target


def save_tiny_text_encoder_lora(text_encoder_dir, target, seed=0):
    """A rank-4 LoRA on the tiny CLIP text encoder's attention only."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(text_encoder_dir)
    torch.manual_seed(seed)
    text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    StableDiffusionPipeline.save_lora_weights(target.parent, text_encoder_lora_layers=get_peft_model_state_dict(
        text_encoder), weight_name=target.name, safe_serialization=True)
    return target


@pytest.fixture
def setup(gf_home, tiny_model_dir):
    from guardforge.settings import Settings

    lora_dir = gf_home / "models" / "Lora"
    save_tiny_lora(tiny_model_dir / "unet", lora_dir / "ink.safetensors", seed=1)
    save_tiny_lora(tiny_model_dir / "unet", lora_dir / "sub" / "glow.safetensors", seed=2)
    save_tiny_text_encoder_lora(tiny_model_dir / "text_encoder", lora_dir / "words.safetensors", seed=3)
    return Engine(Settings()), make_loaded(tiny_model_dir)


def run(engine, loaded, prompt, **kw):
    request = GenerationRequest(prompt=prompt, steps=2, seed=5, sampler="Euler", **kw)
    return pixels(engine.run(loaded, request, **{k: v for k, v in kw.items() if k == "cancel"})[0][0])


def test_lora_applies_and_is_removed(setup):
    engine, loaded = setup
    base = run(engine, loaded, "a cat")
    with_lora = run(engine, loaded, "a cat <lora:ink:1>")
    assert not np.array_equal(base, with_lora)
    half = run(engine, loaded, "a cat <lora:ink:0.3>")
    assert not np.array_equal(half, with_lora)
    both = run(engine, loaded, "a cat <lora:ink:1> <lora:sub/glow:0.8>")
    assert not np.array_equal(both, with_lora)
    assert not loaded.pipeline.get_list_adapters()  # nothing left loaded
    assert np.array_equal(run(engine, loaded, "a cat"), base)  # bit for bit


def test_lora_is_removed_when_the_request_fails(setup):
    engine, loaded = setup
    base = run(engine, loaded, "a cat")
    cancel = threading.Event()
    request = GenerationRequest(prompt="a cat <lora:ink>", steps=5, seed=5, sampler="Euler")
    with pytest.raises(Cancelled):
        engine.run(loaded, request, on_progress=lambda e: cancel.set(), cancel=cancel)
    assert not loaded.pipeline.get_list_adapters()
    assert np.array_equal(run(engine, loaded, "a cat"), base)


def test_unknown_lora_is_refused_before_anything_runs(setup):
    engine, loaded = setup
    with pytest.raises(ModelNotFound, match="no lora named 'missing'"):
        run(engine, loaded, "a cat <lora:missing:1>")


def test_lora_text_encoder_and_unet_weights_are_a1111s(setup):
    # `ink` has UNet weights only, so A1111's second weight (the text encoder's) has nothing to act on.
    engine, loaded = setup
    base = run(engine, loaded, "a cat")
    full = run(engine, loaded, "a cat <lora:ink:1>")
    assert np.array_equal(run(engine, loaded, "a cat <lora:ink:1:0>"), base)  # text encoder 1, UNet 0
    assert np.array_equal(run(engine, loaded, "a cat <lora:ink:0:1>"), full)  # text encoder 0, UNet 1
    assert np.array_equal(run(engine, loaded, "a cat <lora:ink:te=0:unet=0.3>"), run(engine, loaded, "a cat <lora:ink:0.3>"))
    # `words` has text-encoder weights only: the first weight moves it, the second does not.
    words = run(engine, loaded, "a cat <lora:words:1>")
    assert not np.array_equal(words, base)
    assert np.array_equal(run(engine, loaded, "a cat <lora:words:1:0>"), words)
    assert np.array_equal(run(engine, loaded, "a cat <lora:words:0:1>"), base)
    # Named twice: each weight summed on its own.
    assert np.array_equal(run(engine, loaded, "a cat <lora:ink:1:0.5> <lora:ink:0:0.5>"), full)
    assert not loaded.pipeline.get_list_adapters()
