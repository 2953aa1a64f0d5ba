"""The pipeline cache: load once, keep up to N, switch per request; modes share one set of weights."""

from __future__ import annotations

import gc

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from guardforge.engine.request import MemoryOptions
    from guardforge.models.memory import Placement
    from guardforge.models.registry import ModelEntry, ModelRegistry
    from guardforge.settings import MemorySettings, Settings

Mode = Literal["txt2img", "img2img", "inpaint"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A loaded checkpoint: the txt2img pipeline, placed on its device, and its mode variants.

    Hold `lock` while running one of its pipelines: a diffusers pipeline keeps per-call state (the
    scheduler's timesteps) and must not run in two threads at once. The cache takes the same lock
    before it re-places the weights for another memory setting. Other models are not blocked.
    """

    entry: ModelEntry
    pipeline: DiffusionPipeline
    memory: MemorySettings
    device: torch.device
    _modes: dict[str, DiffusionPipeline] = field(default_factory=dict, repr=False)
    placement: Placement | None = field(default=None, repr=False)
    vae: str | None = None
    # Which copy this is when several workers share a device: each needs its own, since a pipeline runs in
    # one thread at a time.
    replica: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def for_mode(self, mode: Mode) -> DiffusionPipeline:
        """The pipeline for a mode, built with from_pipe so that no weights are loaded or copied again."""
        if mode == "txt2img":
            return self.pipeline
        with self.lock:
            if mode not in self._modes:
                from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

                auto = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
                self._modes[mode] = auto.from_pipe(self.pipeline)
            return self._modes[mode]

    def place(self, memory: MemorySettings) -> None:
        """Re-place the weights for other memory settings (dtype, offload, slicing...)."""
        from guardforge.models.memory import apply_memory

        with self.lock:
            self.placement = apply_memory(self.pipeline, memory, self.device, previous=self.placement)
            self.memory = memory
            # Mode pipelines share the modules, but offload hooks and slicing flags are set per pipeline.
            self._modes.clear()


class PipelineCache:
    """Keeps up to settings.max_loaded_models pipelines per worker slot (device, replica), LRU evicted first.

    A model is loaded once per device (and per replica, when several workers share one device); each device's
    memory is its own, so the cap and the eviction apply per (device, replica): two workers on one device may
    hold twice the cap there between them. The default device is settings.device.

    Locking: `_lock` guards only the bookkeeping dicts and is never held while loading; a lock per model
    name makes two requests for the same model load it once, while requests for other models go on.
    """

    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {}
        # Reading weights is serialised across models: diffusers builds models inside accelerate's
        # init_empty_weights(), which patches torch.nn.Module process-wide, and two overlapping loads
        # can leave the patch in place (every later module is then created on the meta device).
        # Only loading waits on it; generation on loaded models does not.
        self._reading = threading.Lock()
        from guardforge.models.controlnet_cache import ControlNetCache

        # Beside the pipelines, reading weights under the same lock; cleared with them by unload_all.
        self.controlnets = ControlNetCache(registry, settings, self._reading)
        from guardforge.models.ipadapter_cache import EncoderCache

        self.ip_encoders = EncoderCache(settings, self._reading)
        self._devices: dict[str | None, torch.device] = {}

    @property
    def device(self) -> torch.device:
        """The default device (settings.device)."""
        return self._resolve(None)

    def _resolve(self, device: str | None) -> torch.device:
        with self._lock:
            resolved = self._devices.get(device)
        if resolved is None:
            import torch

            from guardforge.models.devices import device_name, pick_device

            resolved = torch.device(device_name(pick_device(self.settings.device if device is None else device)))
            with self._lock:
                self._devices[device] = resolved
        return resolved

    def _key(self, name: str, device: torch.device, replica: int) -> str:
        # The default device keeps plain keys, so a one-device setup reads as before in loaded() and logs.
        if device == self.device and replica == 0:
            return name
        return f"{name}@{device}" + (f"#{replica}" if replica else "")

    def _load_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._load_locks.setdefault(key, threading.Lock())

    def _effective(self, memory: MemorySettings | MemoryOptions | None) -> MemorySettings:
        from guardforge.models.memory import effective_memory
        from guardforge.settings import MemorySettings

        if memory is None:
            return self.settings.memory
        if isinstance(memory, MemorySettings):
            return memory
        return effective_memory(self.settings.memory, memory)  # a request's overrides

    def get(self, name: str, memory: MemorySettings | MemoryOptions | None = None,
            vae: str | None = None, device: str | None = None, replica: int = 0) -> LoadedModel:
        """The loaded model `name` (with VAE `vae` from the VAE folder, if given), placed as `memory` says.

        `memory` is either complete MemorySettings or a request's MemoryOptions laid over
        settings.memory; None means settings.memory. `device` (None: settings.device) and `replica` pick
        the copy: a worker asks for its own. A model whose file changed since it was loaded (saved again
        under the same name) is loaded again.
        """
        from guardforge.models.loading import load_pipeline
        from guardforge.models.memory import apply_memory, resolve_dtype

        entry = self.registry.resolve(name)
        vae_entry = self.registry.resolve(vae, kind="vae") if vae else None
        wanted = self._effective(memory)
        target = self._resolve(device)
        key = self._key(entry.name if vae_entry is None else f"{entry.name}+vae:{vae_entry.name}", target, replica)
        with self._load_lock(key):
            with self._lock:
                loaded = self._loaded.get(key)
                if loaded is not None:
                    self._loaded.move_to_end(key)
            if loaded is not None and loaded.entry._signature != entry._signature:
                log.info("%s changed on disk; loading it again", entry.name)
                self.unload(key)
                loaded = None
            if loaded is not None and resolve_dtype(loaded.memory, target) != resolve_dtype(wanted, target):
                # Another dtype is loaded again from disk, not cast: fp32 -> bf16 -> fp32 in place would keep the
                # rounding, and every later fp32 request (another user's too) would get the degraded weights.
                self.unload(key)
                loaded = None
            if loaded is not None:
                if loaded.memory != wanted:
                    loaded.place(wanted)
                return loaded
            # Make room before loading, so the old weights are gone before the new ones arrive.
            self._evict(keep=self.settings.max_loaded_models - 1, slot=(target, replica))
            with self._reading:
                pipe = load_pipeline(entry, self.settings, torch_dtype=resolve_dtype(wanted, target), vae=vae_entry)
            placement = apply_memory(pipe, wanted, target)
            loaded = LoadedModel(entry=entry, pipeline=pipe, memory=wanted, device=target, placement=placement,
                                 vae=vae_entry.name if vae_entry else None, replica=replica)
            with self._lock:
                self._loaded[key] = loaded
            # A pipeline's Python objects (modules, configs, the imports its loading pulled in) live as long
            # as it is cached; frozen, the collector's full passes skip them. Unfrozen, each full pass walked
            # them all while holding the GIL, 30-270 ms during which a server answered nothing (docs/serve.md,
            # "Under load"). _release thaws them, so an evicted model's reference cycles are collected too.
            gc.freeze()
            return loaded

    def _evict(self, keep: int, slot: tuple[torch.device, int] | None = None) -> None:
        """Keep the `keep` most recently used models of `slot` (device, replica); None: of every slot."""
        with self._lock:
            victims = []
            slots = {(v.device, v.replica) for v in self._loaded.values()} if slot is None else {slot}
            for each in slots:
                keys = [k for k, v in self._loaded.items() if (v.device, v.replica) == each]  # LRU first
                victims += [self._loaded.pop(k) for k in keys[:max(0, len(keys) - keep)]]
        self._release(victims)

    def _release(self, victims: list[LoadedModel]) -> None:
        if not victims:
            return
        from guardforge.models.devices import free_memory

        devices = {v.device for v in victims}
        for victim in victims:
            # Wait for a generation in progress on it; afterwards only the caller's reference (if any)
            # keeps it alive, and the memory comes back when that goes too.
            with victim.lock:
                victim._modes.clear()
        del victims
        gc.unfreeze()  # back into the collector, for free_memory's collection; the next load freezes again
        for device in devices:
            free_memory(device)

    def unload(self, name: str) -> bool:
        """Drop a loaded model (by cache key or model name); True if one was loaded."""
        with self._lock:
            keys = [k for k, v in self._loaded.items() if k == name or v.entry.name == name]
            victims = [self._loaded.pop(k) for k in keys]
        self._release(victims)
        return bool(keys)

    def unload_all(self) -> None:
        self._evict(keep=0)
        self.controlnets.clear()
        self.ip_encoders.clear()

    def loaded(self) -> list[str]:
        """Cache keys, least recently used first: the model name, plus `+vae:NAME` with a VAE override."""
        with self._lock:
            return list(self._loaded)
