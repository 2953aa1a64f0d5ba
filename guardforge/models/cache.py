"""The pipeline cache: load once, keep up to N, switch per request; modes share one set of weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from guardforge.models.registry import ModelEntry
    from guardforge.settings import MemorySettings

Mode = Literal["txt2img", "img2img", "inpaint"]


@dataclass
class LoadedModel:
    """A loaded checkpoint: the txt2img pipeline, placed on its device, and its mode variants."""

    entry: ModelEntry
    pipeline: DiffusionPipeline
    memory: MemorySettings
    device: torch.device
    _modes: dict[str, DiffusionPipeline] = field(default_factory=dict, repr=False)

    def for_mode(self, mode: Mode) -> DiffusionPipeline:
        """The pipeline for a mode, built with from_pipe so that no weights are loaded or copied again."""
        if mode == "txt2img":
            return self.pipeline
        if mode not in self._modes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            self._modes[mode] = auto.from_pipe(self.pipeline)
        return self._modes[mode]
