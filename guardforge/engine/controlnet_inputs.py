"""A request's ControlNet units between the Studio and the engine: prepared once, guarded, then run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from guardforge.engine.controlnet import ControlRun, PreparedControl, prepare_controls, unit_infotext

if TYPE_CHECKING:
    from PIL import Image

    from guardforge.guard.verdict import Verdict

    from guardforge.engine.request import GenerationRequest
    from guardforge.models.cache import LoadedModel
    from guardforge.models.controlnet_cache import ControlNetCache
    from guardforge.models.registry import ModelEntry


@dataclass
class ControlInputs:
    """The units' images as sent, their preprocessed forms at the output size, and their ControlNets."""

    images: list[Image.Image | None]  # as decoded; None: the unit reads the init image (guarded as such)
    prepared: list[PreparedControl]
    entries: list[ModelEntry]

    @classmethod
    def prepare(cls, request: GenerationRequest, images: list[Image.Image | None], entries: list[ModelEntry],
                init_image: Image.Image | None, mask: Image.Image | None, size: tuple[int, int]) -> ControlInputs:
        prepared = prepare_controls(request, images, init_image, mask, size, seed=request.seed)
        return cls(images, prepared, entries)

    @property
    def guarded(self) -> list[Image.Image]:
        """Every control image the guard must pass: each one sent, and each preprocessed form, since a module
        can turn an image the guard passes into one it would not (an inverted photo, inverted back)."""
        sent = [image for image in self.images if image is not None]
        return sent + [c.image for c in self.prepared if c.unit.module != "none"]

    def run(self, cache: ControlNetCache, loaded: LoadedModel) -> ControlRun:
        """The ControlNets loaded (or taken from the cache) on the model's device and in its dtype."""
        dtype = loaded.pipeline.unet.dtype if getattr(loaded.pipeline, "unet", None) is not None else None
        nets = [cache.get(entry, loaded.device, dtype) for entry in self.entries]
        return ControlRun(self.prepared, nets, [entry.name for entry in self.entries])

    def infotext(self) -> list[str]:
        return [unit_infotext(control, f"{entry.name} [{entry.short_hash()}]")
                for control, entry in zip(self.prepared, self.entries, strict=True)]


@dataclass
class DetectedControl:
    """A preprocessor's map as it may leave the server: None when the guard blocked its input or itself."""

    image: Image.Image | None
    verdict: Verdict
