"""The IP-Adapter image encoder last used, kept beside the pipeline cache: a ViT-H is 2.5 GB, read once, not per
request."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guardforge.models.registry import ModelEntry
    from guardforge.settings import Settings


class EncoderCache:
    """One encoder (with its image processor) per device and dtype at a time: requests mostly use one, and a
    second would double the memory a CLIP vision model takes. A folder saved again is read again (its signature
    is in the key)."""

    def __init__(self, settings: Settings, reading: threading.Lock | None = None):
        self.settings = settings
        self._reading = reading or threading.Lock()  # the pipeline cache's: see PipelineCache
        self._lock = threading.Lock()
        self._loaded: dict[tuple, tuple] = {}

    def get(self, entry: ModelEntry, device, dtype):
        from guardforge.models.ipadapter_loading import load_encoder

        key = (str(entry.path), entry._signature, str(device), str(dtype))
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                return found
            with self._reading:
                model, processor = load_encoder(entry, self.settings, torch_dtype=dtype)
            found = (model.to(device=device), processor)
            # Others of this device and dtype make way: see the class docstring.
            for other in [k for k in self._loaded if k[2:] == key[2:]]:
                del self._loaded[other]
            self._loaded[key] = found
            return found

    def loaded(self) -> list[str]:
        with self._lock:
            return [f"{key[0]}@{key[2]}" for key in self._loaded]

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
