"""Prompt adherence of a tiny-shapes pipeline: generate from single-object captions, read them back, score."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect

ATTRIBUTES = ("background", "colour", "shape", "position", "size")


@dataclass
class AdherenceReport:
    split: str  # "held-out" or "seen"
    n: int
    correct: Counter = field(default_factory=Counter)
    samples: list[tuple[Image.Image, str]] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        return {a: self.correct[a] / self.n for a in ATTRIBUTES} | {"all": self.correct["all"] / self.n}


def load_pipeline(folder: Path, sampler: str = "Euler"):
    """The shipped folder with the engine's A1111-named sampler built from its own scheduler config."""
    from diffusers import StableDiffusionPipeline

    from guardforge.engine.samplers import build_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.scheduler = build_scheduler(dict(pipe.scheduler.config), sampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, cfg: float, seed: int, batch_size: int = 20,
             guidance_rescale: float = 0.0) -> list[Image.Image]:
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=cfg,
                       guidance_rescale=guidance_rescale, generator=generators).images
    return images


def evaluate(pipe, held_out: bool, n: int, steps: int = 20, cfg: float = 7.5, seed: int = 0,
             guidance_rescale: float = 0.0) -> AdherenceReport:
    """Score n single-object captions (held-out colour/shape pairs or seen ones) attribute by attribute."""
    cases = data.eval_cases(held_out, n, seed=1234 + int(held_out))
    images = generate(pipe, [caption for _, _, caption in cases], steps, cfg, seed,
                      guidance_rescale=guidance_rescale)
    report = AdherenceReport("held-out" if held_out else "seen", n)
    for (obj, background, caption), image in zip(cases, images, strict=True):
        # Only the base shapes are candidates: the model was never taught the reserved ones.
        found = detect(image, shapes=data.SHAPES)
        truth = {"background": background, "colour": obj.colour, "shape": obj.shape,
                 "position": obj.position, "size": obj.size}
        hits = {a: getattr(found, a) == truth[a] for a in ATTRIBUTES}
        report.correct.update(a for a, hit in hits.items() if hit)
        report.correct["all"] += all(hits[a] for a in ("background", "colour", "shape", "position"))
        report.samples.append((image, caption))
    return report


def save_grid(samples: list[tuple[Image.Image, str]], path: Path, columns: int = 6, scale: int = 2) -> Path:
    """Samples in a grid with each prompt written under its image."""
    tile, text_h = data.SIZE * scale, 34
    rows = (len(samples) + columns - 1) // columns
    width = 210
    grid = Image.new("RGB", (columns * width, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(samples):
        x, y = (i % columns) * width, (i // columns) * (tile + text_h)
        grid.paste(image.resize((tile, tile), Image.NEAREST), (x + (width - tile) // 2, y))
        words, lines = caption.split(), [""]
        for word in words:  # wrap to the tile's width
            if len(lines[-1]) + len(word) + 1 > 34:
                lines.append("")
            lines[-1] = f"{lines[-1]} {word}".strip()
        draw.multiline_text((x + 3, y + tile + 1), "\n".join(lines[:3]), fill="black", spacing=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
