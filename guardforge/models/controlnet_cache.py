"""Loaded ControlNets, kept beside the pipeline cache: loaded once per device and dtype, reused by every request."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import ModelMixin

    from guardforge.models.registry import ModelEntry, ModelRegistry
    from guardforge.settings import Settings


class ControlNetCache:
    """Keeps the most recently used ControlNets, as many as one request may use (settings.limits'
    max_controlnet_units, at least one), least recently used evicted first.

    A ControlNet saved again under its name (another size or mtime) is loaded again: the key holds the entry's
    file signature. A model still running in a pipeline when evicted lives until that run drops it.
    """

    def __init__(self, registry: ModelRegistry, settings: Settings, reading: threading.Lock | None = None):
        self.registry = registry
        self.settings = settings
        # The pipeline cache's lock that serialises reading weights (diffusers' loading patches torch
        # process-wide; see PipelineCache).
        self._reading = reading or threading.Lock()
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple, ModelMixin] = OrderedDict()
        self._load_locks: dict[tuple, threading.Lock] = {}

    def _key(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> tuple:
        return (entry.source, str(entry.path), entry._signature, str(device), str(dtype))

    def get(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype):
        """The ControlNet of `entry` on `device` in `dtype`, loaded on first use."""
        from guardforge.models.controlnet_loading import load_controlnet

        key = self._key(entry, device, dtype)
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                model = self._loaded.get(key)
                if model is not None:
                    self._loaded.move_to_end(key)
                    return model
            with self._reading:
                model = load_controlnet(entry, self.settings, torch_dtype=dtype)
            model.to(device=device).eval().requires_grad_(False)  # in `dtype` already: loaded so
            with self._lock:
                self._loaded[key] = model
                cap = max(1, self.settings.limits.max_controlnet_units)
                while len(self._loaded) > cap:
                    self._loaded.popitem(last=False)
            return model

    def loaded(self) -> list[str]:
        """Paths of the loaded ControlNets with their device, least recently used first."""
        with self._lock:
            return [f"{key[1]}@{key[3]}" for key in self._loaded]

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
