"""Build-time measure of the tiny-shapes ControlNet through diffusers' own StableDiffusionControlNetPipeline
(not the product path: `guardforge eval control` measures that), to follow a training run from its exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from guardforge_build.shapes.controlnet import DEFAULT_BASE, canny_edges


def load_pipelines(controlnet_dir: Path, base: Path = DEFAULT_BASE):
    """(the ControlNet pipeline, the plain pipeline) on the same components, Euler as the model ships."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(str(base), local_files_only=True)
    controlnet = ControlNetModel.from_pretrained(str(controlnet_dir), local_files_only=True)
    controlled = StableDiffusionControlNetPipeline(**plain.components, controlnet=controlnet)
    for pipe in (plain, controlled):
        pipe.set_progress_bar_config(disable=True)
    return controlled, plain


def diffusers_generator(controlled, plain, steps: int = 20, cfg: float = 7.5, batch_size: int = 20,
                        processor_res: int | None = None):
    """A `control.Generate`: the canny edges of each control scene, made at its own 64x64 size (None) or at
    `processor_res` and resized back, as the training made them."""

    @torch.no_grad()
    def generate(prompts: list[str], controls: list[Image.Image] | None, seed: int) -> list[Image.Image]:
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            kwargs = dict(num_inference_steps=steps, guidance_scale=cfg, generator=generators, height=64, width=64)
            if controls is None:
                images += plain(chunk, **kwargs).images
            else:
                edges = [Image.fromarray(canny_edges(np.asarray(c.convert("RGB")), resolution=processor_res))
                         for c in controls[start:start + batch_size]]
                images += controlled(chunk, image=edges, **kwargs).images
        return images

    return generate
