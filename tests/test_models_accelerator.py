"""Memory placement on a real accelerator (CUDA): fp16 by default, offload hooks on and off, eviction frees VRAM.

Skipped where no CUDA device is present; on CPU the same code paths are covered by test_models_memory.py.
"""

from __future__ import annotations

import gc

import pytest
import torch

from guardforge.engine.request import MemoryOptions
from guardforge.models.cache import PipelineCache
from guardforge.models.registry import ModelRegistry
from guardforge.settings import Settings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_placement_offload_and_eviction(gf_home):
    import shutil

    sd = gf_home / "models" / "Stable-diffusion"
    shutil.copytree(sd / "tiny-sd", sd / "tiny-b")
    settings = Settings(max_loaded_models=1)
    cache = PipelineCache(ModelRegistry(settings), settings)
    # cuBLAS (32 MiB on Hopper) and cuBLASLt (1 MiB, the fused bias path of nn.Linear) keep a workspace from
    # their first product on: count both in the baseline, they are not the model's.
    warm = torch.ones(64, 64, device="cuda", dtype=torch.float16)
    (warm @ warm).sum().item()
    torch.nn.functional.linear(warm, warm, warm[0]).sum().item()
    del warm
    baseline = torch.cuda.memory_allocated()

    loaded = cache.get("tiny-sd")
    assert loaded.device.type == "cuda" and loaded.placement.offload == "none"
    assert loaded.pipeline.unet.dtype == torch.float16 and loaded.pipeline.unet.device.type == "cuda"

    cache.get("tiny-sd", MemoryOptions(offload="model"))
    assert loaded.placement.offload == "model"
    assert loaded.pipeline.unet.device.type == "cpu"  # moved to the GPU only while it runs
    image = loaded.pipeline("a", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)

    cache.get("tiny-sd", MemoryOptions(offload="sequential"))
    assert loaded.placement.offload == "sequential"
    cache.get("tiny-sd", MemoryOptions(offload="none"))
    assert loaded.placement.offload == "none" and loaded.pipeline.unet.device.type == "cuda"
    assert not getattr(loaded.pipeline.unet, "_hf_hook", None)

    held = torch.cuda.memory_allocated()
    assert held > baseline
    del loaded, image
    cache.get("tiny-b", MemoryOptions(offload="model"))  # evicts tiny-sd; tiny-b's weights wait on the CPU
    gc.collect()
    assert torch.cuda.memory_allocated() <= baseline + 1024
