"""Memory placement of a pipeline: dtype, CPU offload, attention/VAE slicing and tiling, channels_last."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from guardforge.models.devices import available_memory
from guardforge.settings import MemorySettings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from guardforge.engine.request import MemoryOptions

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# `offload: auto` on an accelerator: keep everything on the device when the free memory holds the whole
# pipeline with this much room to spare for activations (latents, attention maps, the VAE decode);
# otherwise move one model at a time (model offload) when the largest model fits with that room;
# otherwise stream layer by layer (sequential offload: slowest, smallest).
AUTO_HEADROOM = 1.5


def effective_memory(settings: MemorySettings, request: MemoryOptions | None = None) -> MemorySettings:
    """The server's memory settings with the request's non-None fields laid over them."""
    if request is None:
        return settings
    overrides = {k: v for k, v in request.model_dump().items() if v is not None}
    return settings.model_copy(update=overrides)


def resolve_dtype(memory: MemorySettings, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on CUDA and XPU, fp32 on CPU and MPS (fp16 on those is slow or loses quality)."""
    if memory.dtype != "auto":
        return _DTYPES[memory.dtype]
    return torch.float16 if device.type in ("cuda", "xpu") else torch.float32


def _module_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(p.numel() for p in module.parameters()) * size


def model_sizes(pipe: DiffusionPipeline, dtype: torch.dtype) -> list[int]:
    return [_module_bytes(m, dtype) for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def resolve_offload(memory: MemorySettings, device: torch.device, sizes: list[int],
                    free: int | None) -> Literal["none", "model", "sequential"]:
    """The offload in force: none on CPU (there is nowhere to offload to); `auto` by free memory."""
    if device.type == "cpu":
        if memory.offload not in ("none", "auto"):
            log.info("offload=%s needs an accelerator; on CPU the models already live in RAM, so it is off",
                     memory.offload)
        return "none"
    if memory.offload != "auto":
        return memory.offload
    if free is None:
        return "none"
    if free >= AUTO_HEADROOM * sum(sizes):
        return "none"
    if free >= AUTO_HEADROOM * max(sizes, default=0):
        return "model"
    return "sequential"


@dataclass(frozen=True)
class Placement:
    """What apply_memory did, so the cache can tell whether a request needs the pipeline re-placed."""

    memory: MemorySettings
    device: torch.device
    dtype: torch.dtype
    offload: Literal["none", "model", "sequential"]


def apply_memory(pipe: DiffusionPipeline, memory: MemorySettings, device: torch.device,
                 previous: Placement | None = None) -> Placement:
    """Place `pipe` on `device` as `memory` says; undoes the previous placement's offload hooks first."""
    dtype = resolve_dtype(memory, device)
    if previous is not None and previous.offload != "none":
        # Offload hooks keep weights on the CPU and move them per call; remove them before moving again.
        pipe.remove_all_hooks()
    sizes = model_sizes(pipe, dtype)
    free = available_memory(device) if device.type != "cpu" else None
    if free is not None and previous is not None and previous.offload == "none" and previous.device == device:
        # Re-placing a pipeline that already sits on the device: its own weights count as free.
        free += sum(model_sizes(pipe, previous.dtype))
    offload = resolve_offload(memory, device, sizes, free)
    # Cast only when the dtype changes: diffusers warns on every cast, and a no-op cast is wasted work.
    cast = {"dtype": dtype} if pipe.dtype != dtype else {}
    if offload == "none":
        pipe.to(device=device, **cast)
    else:
        pipe.to(device="cpu", **cast)
        if offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)

    if hasattr(pipe, "enable_attention_slicing"):
        if memory.attention_slicing:
            pipe.enable_attention_slicing()
        else:
            pipe.disable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing") and hasattr(vae, "enable_tiling"):
        # Slicing decodes a batch one image at a time; tiling decodes large images in overlapping tiles.
        (vae.enable_slicing if memory.vae_slicing else vae.disable_slicing)()
        (vae.enable_tiling if memory.vae_tiling else vae.disable_tiling)()
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is not None and offload != "sequential":
        denoiser.to(memory_format=torch.channels_last if memory.channels_last else torch.contiguous_format)
    return Placement(memory=memory, device=device, dtype=dtype, offload=offload)
