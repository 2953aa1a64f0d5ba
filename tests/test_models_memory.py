"""Devices and memory placement: device choice, request overrides, dtype and offload decisions."""

from __future__ import annotations

import logging

import pytest
import torch

from guardforge.engine.request import MemoryOptions
from guardforge.errors import InvalidRequest
from guardforge.models.devices import available_memory, free_memory, pick_device
from guardforge.models.memory import (
    AUTO_HEADROOM,
    apply_memory,
    effective_memory,
    resolve_dtype,
    resolve_offload,
)
from guardforge.settings import MemorySettings

GB = 1 << 30


def test_auto_picks_an_accelerator_first():
    device = pick_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif hasattr(torch, "xpu") and torch.xpu.is_available():
        assert device.type == "xpu"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="not available here; available: cpu"):
        pick_device("cuda:1")
    with pytest.raises(InvalidRequest, match="not a torch device"):
        pick_device("gpu0")


def test_cpu_memory_is_reported_and_free_memory_runs():
    assert available_memory(torch.device("cpu")) > 0
    free_memory(torch.device("cpu"))


def test_request_overrides_only_what_it_sets():
    settings = MemorySettings(dtype="fp16", offload="model", vae_tiling=True)
    merged = effective_memory(settings, MemoryOptions(offload="none", attention_slicing=True))
    assert merged == MemorySettings(dtype="fp16", offload="none", vae_tiling=True, attention_slicing=True)
    assert effective_memory(settings, MemoryOptions()) == settings
    assert effective_memory(settings, None) is settings


@pytest.mark.parametrize(("setting", "device", "dtype"), [
    ("auto", "cuda", torch.float16), ("auto", "xpu", torch.float16), ("auto", "cpu", torch.float32),
    ("auto", "mps", torch.float32), ("bf16", "cpu", torch.bfloat16), ("fp32", "cuda", torch.float32),
])
def test_dtype(setting, device, dtype):
    assert resolve_dtype(MemorySettings(dtype=setting), torch.device(device)) == dtype


def test_offload_decisions():
    cuda = torch.device("cuda")
    sizes = [2 * GB, 1 * GB, 1 * GB]  # unet, text encoder, vae
    auto = MemorySettings(offload="auto")
    assert resolve_offload(auto, cuda, sizes, free=int(AUTO_HEADROOM * 4 * GB)) == "none"
    assert resolve_offload(auto, cuda, sizes, free=int(AUTO_HEADROOM * 4 * GB) - 1) == "model"
    assert resolve_offload(auto, cuda, sizes, free=int(AUTO_HEADROOM * 2 * GB) - 1) == "sequential"
    assert resolve_offload(auto, cuda, sizes, free=None) == "none"
    assert resolve_offload(MemorySettings(offload="sequential"), cuda, sizes, free=100 * GB) == "sequential"


def test_offload_on_cpu_is_a_logged_no_op(gf_home, caplog):
    from guardforge.models.loading import load_pipeline
    from guardforge.models.registry import ModelRegistry
    from guardforge.settings import Settings

    pipe = load_pipeline(ModelRegistry(Settings()).resolve("tiny-sd"), Settings())
    with caplog.at_level(logging.INFO, logger="guardforge.models.memory"):
        placement = apply_memory(pipe, MemorySettings(offload="model", attention_slicing=True),
                                 torch.device("cpu"))
    assert placement.offload == "none" and placement.dtype == torch.float32
    assert "needs an accelerator" in caplog.text
    assert not getattr(pipe.unet, "_hf_hook", None)  # no accelerate hooks were installed
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    apply_memory(pipe, MemorySettings(), torch.device("cpu"), previous=placement)
    assert "SlicedAttnProcessor" not in {type(p).__name__ for p in pipe.unet.attn_processors.values()}
