"""PipelineCache: load once, LRU eviction that frees the model, modes share weights, re-placement, threads."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import weakref

import pytest
import torch

from guardforge.engine.request import MemoryOptions
from guardforge.errors import ModelNotFound
from guardforge.models.cache import PipelineCache
from guardforge.models.registry import ModelRegistry
from guardforge.settings import MemorySettings, Settings


def _cache(**overrides) -> PipelineCache:
    settings = Settings(**overrides)
    return PipelineCache(ModelRegistry(settings), settings)


@pytest.fixture
def two_models(gf_home):
    sd = gf_home / "models" / "Stable-diffusion"
    shutil.copytree(sd / "tiny-sd", sd / "tiny-b")
    return gf_home


def test_loads_once_and_evicts_lru_freeing_memory(two_models):
    cache = _cache(max_loaded_models=1)
    first = cache.get("tiny-sd")
    assert cache.get("tiny-sd") is first
    assert cache.loaded() == ["tiny-sd"]
    first.for_mode("img2img")  # a mode variant must not keep the weights alive either
    pipeline_ref, unet_ref = weakref.ref(first.pipeline), weakref.ref(first.pipeline.unet)
    del first
    cache.get("tiny-b")
    gc.collect()
    assert cache.loaded() == ["tiny-b"]
    assert pipeline_ref() is None and unet_ref() is None


def test_lru_order_with_two_slots(two_models):
    sd = two_models / "models" / "Stable-diffusion"
    shutil.copytree(sd / "tiny-sd", sd / "tiny-c")
    cache = _cache(max_loaded_models=2)
    cache.get("tiny-sd")
    cache.get("tiny-b")
    cache.get("tiny-sd")  # now most recently used
    cache.get("tiny-c")
    assert cache.loaded() == ["tiny-sd", "tiny-c"]
    assert cache.unload("tiny-sd") is True and cache.unload("tiny-sd") is False
    cache.unload_all()
    assert cache.loaded() == []


def test_modes_share_weights_without_reloading(gf_home):
    cache = _cache()
    loaded = cache.get("tiny-sd")
    base = loaded.pipeline
    img2img = loaded.for_mode("img2img")
    inpaint = loaded.for_mode("inpaint")
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert loaded.for_mode("txt2img") is base and loaded.for_mode("img2img") is img2img
    ptr = base.unet.conv_in.weight.data_ptr()
    for pipe in (img2img, inpaint):
        assert pipe.unet.conv_in.weight.data_ptr() == ptr
        assert pipe.text_encoder is base.text_encoder and pipe.vae is base.vae
    assert cache.get("tiny-sd") is loaded


def test_request_memory_re_places_the_same_model(gf_home):
    cache = _cache()
    loaded = cache.get("tiny-sd")
    assert loaded.pipeline.unet.dtype == torch.float32  # auto on CPU
    img2img = loaded.for_mode("img2img")
    again = cache.get("tiny-sd", MemoryOptions(attention_slicing=True, channels_last=True))
    assert again is loaded
    assert loaded.memory.attention_slicing
    assert loaded.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # Mode pipelines are rebuilt after a re-placement, still over the same modules.
    rebuilt = loaded.for_mode("img2img")
    assert rebuilt is not img2img and rebuilt.unet is loaded.pipeline.unet
    back = cache.get("tiny-sd", MemorySettings())
    assert back is loaded and not loaded.memory.attention_slicing
    assert cache.loaded() == ["tiny-sd"]


def test_another_dtype_is_loaded_again_not_cast_back(gf_home):
    """fp32 -> bf16 -> fp32 by casting in place rounds every weight for good: the fp32 requests after a bf16 one
    (another user's too) got other images. Another dtype is a fresh load from disk."""
    cache = _cache()
    original = {k: v.clone() for k, v in cache.get("tiny-sd").pipeline.unet.state_dict().items()}
    half = cache.get("tiny-sd", MemoryOptions(dtype="bf16"))
    assert half.pipeline.unet.dtype == torch.bfloat16 and half.pipeline.text_encoder.dtype == torch.bfloat16
    back = cache.get("tiny-sd", MemorySettings())
    assert back is not half and back.pipeline.unet.dtype == torch.float32
    restored = back.pipeline.unet.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in original.items())
    assert cache.loaded() == ["tiny-sd"]


def test_settings_memory_is_the_default(gf_home):
    cache = _cache(memory=MemorySettings(vae_slicing=True, vae_tiling=True))
    loaded = cache.get("tiny-sd")
    assert loaded.memory.vae_slicing and loaded.pipeline.vae.use_slicing and loaded.pipeline.vae.use_tiling
    assert loaded.device == torch.device("cpu")


def test_model_saved_again_under_the_same_name_is_reloaded(gf_home):
    # A model retrained while the server runs (DreamBooth saving into Stable-diffusion/) replaces the old one.
    from tests.tiny import tiny_sd_components

    sd = gf_home / "models" / "Stable-diffusion"
    cache = _cache()
    first = cache.get("tiny-sd")
    retrained = tiny_sd_components(gf_home / "tok2", seed=3)
    tmp = sd / ".tiny-sd-new"
    shutil.copytree(sd / "tiny-sd", tmp)
    retrained["unet"].save_pretrained(tmp / "unet")
    (tmp / "model_index.json").write_text((tmp / "model_index.json").read_text() + " ")
    shutil.rmtree(sd / "tiny-sd")
    os.replace(tmp, sd / "tiny-sd")
    second = cache.get("tiny-sd")
    assert second is not first
    assert torch.equal(second.pipeline.unet.conv_in.weight, retrained["unet"].conv_in.weight)


def test_concurrent_gets_load_once(two_models):
    cache = _cache(max_loaded_models=2)
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        results[i] = cache.get("tiny-sd" if i % 2 else "tiny-b")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[1] is results[3] and results[0] is results[2] and results[0] is not results[1]
    assert sorted(cache.loaded()) == ["tiny-b", "tiny-sd"]
    # Overlapping loads must not leave accelerate's empty-weights patch on torch.nn.Module behind.
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_vae_override_is_its_own_cache_entry(gf_home):
    from tests.tiny import tiny_sd_components

    tiny_sd_components(gf_home / "tok", seed=5)["vae"].save_pretrained(gf_home / "models" / "VAE" / "v")
    cache = _cache(max_loaded_models=2)
    plain = cache.get("tiny-sd")
    with_vae = cache.get("tiny-sd", vae="v")
    assert with_vae is not plain and with_vae.vae == "v"
    assert cache.loaded() == ["tiny-sd", "tiny-sd+vae:v"]
    assert cache.unload("tiny-sd") and cache.loaded() == []
    with pytest.raises(ModelNotFound):
        cache.get("tiny-sd", vae="nope")


def test_a_copy_per_device_and_replica_with_its_own_cap(two_models):
    # Two workers on one device each need their own pipeline (one runs in one thread at a time); the cap on
    # loaded models is per device, so one worker's loads never evict the model another worker is running.
    cache = _cache(max_loaded_models=1, device="cpu")
    default = cache.get("tiny-sd")
    second = cache.get("tiny-sd", device="cpu", replica=1)
    assert second is not default and second.pipeline.unet is not default.pipeline.unet
    assert second.replica == 1 and second.device == torch.device("cpu")
    assert cache.loaded() == ["tiny-sd", "tiny-sd@cpu#1"]
    assert cache.get("tiny-sd", device="cpu") is default  # the default device spelled out: the same copy
    cache.get("tiny-b")  # evicts tiny-sd from the default slot only
    assert cache.loaded() == ["tiny-sd@cpu#1", "tiny-b"]
    assert cache.unload("tiny-sd") is True and cache.loaded() == ["tiny-b"]
