"""Which torch device to run on (CUDA, then XPU, then MPS, then CPU) and how much memory it has free."""

from __future__ import annotations

import gc
import os

import torch

from guardforge.errors import InvalidRequest


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def pick_device(setting: str = "auto") -> torch.device:
    """`auto` takes the first of cuda, xpu, mps, cpu that is present; anything else is checked, then used."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _xpu_available():
            return torch.device("xpu")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise InvalidRequest(
            f"device {setting!r} is not a torch device ({exc}); use auto, cpu, cuda, cuda:1, mps or xpu") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "xpu": _xpu_available(), "mps": _mps_available()}
    if not present.get(device.type, False):
        found = [name for name, ok in present.items() if ok]
        raise InvalidRequest(f"device {setting!r} is not available here; available: {', '.join(found)} (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidRequest(f"device {setting!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def large_model_placement(device: str | None, dtype: torch.dtype | None) -> tuple[str, torch.dtype]:
    """Where and in what precision a multi-billion-parameter model (a guard) loads: `device` as the engine picks
    it (auto: CUDA, XPU, MPS, then CPU), and unless given, bf16 on any accelerator (a 4-12B model in fp32 would
    not fit beside the image model) and fp32 on CPU."""
    picked = str(pick_device(device or "auto"))
    return picked, dtype if dtype is not None else (torch.float32 if picked == "cpu" else torch.bfloat16)


def available_memory(device: torch.device) -> int | None:
    """Bytes free on the device now, or None where torch cannot tell."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "xpu" and hasattr(torch.xpu, "mem_get_info"):
        free, _total = torch.xpu.mem_get_info(device)
        return int(free)
    if device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def free_memory(device: torch.device | None = None) -> None:
    """Give memory back after dropping models: collect cycles, then empty the accelerator's cache."""
    gc.collect()
    kind = device.type if device is not None else None
    if (kind in (None, "cuda")) and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    if (kind in (None, "xpu")) and _xpu_available():
        torch.xpu.empty_cache()
    if (kind in (None, "mps")) and _mps_available():
        torch.mps.empty_cache()


def device_name(device: torch.device) -> str:
    """One spelling per device: `cuda` and `cuda:0` are the same GPU, and cache keys and job records must agree."""
    if device.index is None and device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    if device.index is None and device.type == "xpu":
        return f"xpu:{torch.xpu.current_device()}"
    return str(device)


def worker_devices(devices: list[str] | None, device: str = "auto") -> list[str]:
    """The device of each server worker, one entry per worker, checked and spelled out by device_name.

    `devices` None means [`device`]. An `auto` entry means one worker per visible CUDA GPU when there are
    several (a second GPU left idle is the usual surprise), else the one device `auto` picks.
    """
    names: list[str] = []
    for setting in devices if devices is not None else [device]:
        if setting == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
            names.extend(f"cuda:{index}" for index in range(torch.cuda.device_count()))
        else:
            names.append(device_name(pick_device(setting)))
    return names
