"""Prompt adherence of a tiny-shapes pipeline: generate from single-object captions, read them back, score."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect, detect_objects

ATTRIBUTES = ("background", "colour", "shape", "position", "size")
PAIR_ATTRIBUTES = ("background", "colour", "shape", "position", "both")


@dataclass
class AdherenceReport:
    split: str  # "held-out" or "seen"
    n: int
    correct: Counter = field(default_factory=Counter)
    samples: list[tuple[Image.Image, str]] = field(default_factory=list)
    latent_error: float | None = None  # generated vs true-image latents; see evaluate
    seconds: float = 0.0  # generating and decoding the samples, nothing else

    def accuracy(self) -> dict[str, float]:
        return {a: self.correct[a] / self.n for a in ATTRIBUTES} | {"all": self.correct["all"] / self.n}


@dataclass
class PairReport:
    """Two-object captions: colour, shape and position count per object (2n), background and "both" (both
    objects of the stated colour and shape at their stated places; size is not scored) per image."""

    n: int
    correct: Counter = field(default_factory=Counter)
    samples: list[tuple[Image.Image, str]] = field(default_factory=list)
    seconds: float = 0.0

    def accuracy(self) -> dict[str, float]:
        per_object = {"colour", "shape", "position"}
        return {a: self.correct[a] / (2 * self.n if a in per_object else self.n) for a in PAIR_ATTRIBUTES}


def load_pipeline(folder: Path, sampler: str = "Euler"):
    """The shipped folder with the engine's A1111-named sampler built from its own scheduler config."""
    from diffusers import StableDiffusionPipeline

    from guardforge.engine.samplers import build_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.scheduler = build_scheduler(dict(pipe.scheduler.config), sampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_latents(pipe, prompts: list[str], steps: int, cfg: float, seed: int, batch_size: int = 20,
                     guidance_rescale: float = 0.0) -> torch.Tensor:
    """Final latents (scaled, as the UNet sees them), prompt i seeded seed + i."""
    latents = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        latents.append(pipe(chunk, num_inference_steps=steps, guidance_scale=cfg, guidance_rescale=guidance_rescale,
                            generator=generators, output_type="latent").images)
    return torch.cat(latents)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """What the pipeline's own output_type="pil" path does with its final latents."""
    pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")


def generate(pipe, prompts: list[str], steps: int, cfg: float, seed: int, batch_size: int = 20,
             guidance_rescale: float = 0.0) -> list[Image.Image]:
    return decode(pipe, generate_latents(pipe, prompts, steps, cfg, seed, batch_size, guidance_rescale))


def true_pixels(cases: list) -> torch.Tensor:
    """The generator's own images of the single-object cases, in [-1, 1], (n, 3, 64, 64)."""
    return scene_pixels([data.Scene(background, [obj]) for obj, background, _ in cases])


def scene_pixels(scenes: list[data.Scene]) -> torch.Tensor:
    """The generator's own images of the scenes, in [-1, 1], (n, 3, 64, 64)."""
    import numpy as np

    images = np.stack([np.asarray(data.render(scene)) for scene in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def true_latents(pipe, cases: list) -> torch.Tensor:
    return encode(pipe, true_pixels(cases))


@torch.no_grad()
def encode(pipe, pixels: torch.Tensor) -> torch.Tensor:
    pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


def evaluate(pipe, held_out: bool, n: int, steps: int = 20, cfg: float = 7.5, seed: int = 0,
             guidance_rescale: float = 0.0) -> AdherenceReport:
    """Score n single-object captions (held-out colour/shape pairs or seen ones) attribute by attribute.

    `latent_error` compares the final latents with those of the captions' true images (mean squared error over
    their variance): the captions fix every attribute, so a perfect model lands on them.
    """
    cases = _cases(held_out, n)
    started = time.perf_counter()
    latents = generate_latents(pipe, [caption for _, _, caption in cases], steps, cfg, seed,
                               guidance_rescale=guidance_rescale)
    images = decode(pipe, latents)
    seconds = time.perf_counter() - started
    report = score("held-out" if held_out else "seen", cases, images)
    report.seconds = seconds
    truth = true_latents(pipe, cases).to(latents.dtype)
    report.latent_error = float(((latents - truth) ** 2).mean() / truth.var())
    return report


def evaluate_pairs(pipe, n: int, steps: int = 20, cfg: float = 7.5, seed: int = 0,
                   guidance_rescale: float = 0.0) -> PairReport:
    """Score n two-object captions of seen pairs ("a small red circle on the left and a large blue square on
    the right, on a white background"): which object goes with which colour, shape and place is what a
    caption here leaves for the model to bind, and where guidance can help."""
    cases = data.eval_scenes_two(n)
    started = time.perf_counter()
    images = generate(pipe, [caption for _, caption in cases], steps, cfg, seed, guidance_rescale=guidance_rescale)
    return score_pairs(cases, images, seconds=time.perf_counter() - started)


@torch.no_grad()
def vae_round_trip_pairs(pipe, n: int) -> PairReport:
    """The two-object captions' true images through the VAE and back, read as the generated ones are: the
    ceiling of the two-object row, as vae_round_trip is of the single-object ones."""
    cases = data.eval_scenes_two(n)
    return score_pairs(cases, decode(pipe, encode(pipe, scene_pixels([scene for scene, _ in cases]))))


def score_pairs(cases: list, images: list[Image.Image], seconds: float = 0.0) -> PairReport:
    report = PairReport(len(cases), seconds=seconds)
    for (scene, caption), image in zip(cases, images, strict=True):
        hits, reading = score_pair(scene, image)
        report.correct.update(hits)
        report.samples.append((image, f"{caption} // {'read' if hits['both'] else 'MISSED'}: {reading}"))
    return report


def score_pair(scene: data.Scene, image: Image.Image) -> tuple[Counter, str]:
    """Hits for one two-object image (each object is looked for at its own place among the read objects), and
    what was read."""
    background, found = detect_objects(image, shapes=data.SHAPES)
    reading = "; ".join(f"{d.colour} {d.shape} {d.position}" for d in found) + f"; on {background}"
    hits = Counter(background=int(background == scene.background))
    right = 0
    for obj in scene.objects:
        there = next((d for d in found if d.position == obj.position), None)
        # Position: the object of this colour stands at its place (swapped objects miss it, and colour too).
        hits["position"] += any(d.colour == obj.colour and d.position == obj.position for d in found)
        hits["colour"] += there is not None and there.colour == obj.colour
        hits["shape"] += there is not None and there.shape == obj.shape
        right += there is not None and (there.colour, there.shape) == (obj.colour, obj.shape)
    hits["both"] = int(right == len(scene.objects))
    return hits, reading


@torch.no_grad()
def vae_round_trip(pipe, held_out: bool, n: int) -> AdherenceReport:
    """The same cases' true images through the pipeline's VAE and back, read by the same detector.

    The reference for the generated row: what a sample scores when its latents are exactly the true image's
    encoding (a sample can beat it by luck, not by design). The gap between this row and the generated one is
    the UNet's; the gap between this row and 100% is the VAE's (or the detector's).
    """
    cases = _cases(held_out, n)
    images = decode(pipe, true_latents(pipe, cases))
    return score(f"{'held-out' if held_out else 'seen'} VAE", cases, images)


def _cases(held_out: bool, n: int) -> list:
    """The evaluation's fixed captions: the generated and the VAE-only rows read the same ones."""
    return data.eval_cases(held_out, n, seed=1234 + int(held_out))


def score(split: str, cases: list, images: list[Image.Image]) -> AdherenceReport:
    """Read each image with the detector and count the attributes that match its case."""
    report = AdherenceReport(split, len(cases))
    for (obj, background, caption), image in zip(cases, images, strict=True):
        # Only the base shapes are candidates: the model was never taught the reserved ones.
        found = detect(image, shapes=data.SHAPES)
        truth = {"background": background, "colour": obj.colour, "shape": obj.shape,
                 "position": obj.position, "size": obj.size}
        hits = {a: getattr(found, a) == truth[a] for a in ATTRIBUTES}
        report.correct.update(a for a, hit in hits.items() if hit)
        report.correct["all"] += all(hits[a] for a in ("background", "colour", "shape", "position"))
        # The reading goes under the prompt in the grid, so a reader can check the detector by eye.
        missed = [a for a in ("colour", "shape", "position", "background") if not hits[a]]
        reading = f"{found.colour} {found.shape}, {found.position}, on {found.background}"
        report.samples.append((image, f"{caption} // {'MISSED ' + '+'.join(missed) if missed else 'read'}: "
                                      f"{reading}"))
    return report


def save_grid(samples: list[tuple[Image.Image, str]], path: Path, columns: int = 6, scale: int = 2) -> Path:
    """Samples in a grid with each caption written under its image ("//" starts a new line)."""
    tile, text_h = data.SIZE * scale, 58
    rows = (len(samples) + columns - 1) // columns
    width = 210
    grid = Image.new("RGB", (columns * width, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(samples):
        x, y = (i % columns) * width, (i // columns) * (tile + text_h)
        grid.paste(image.resize((tile, tile), Image.NEAREST), (x + (width - tile) // 2, y))
        lines = []
        for part in caption.split("//"):
            lines.append("")
            for word in part.split():  # wrap to the tile's width
                if lines[-1] and len(lines[-1]) + len(word) + 1 > 34:
                    lines.append("")
                lines[-1] = f"{lines[-1]} {word}".strip()
        colour = "firebrick" if "MISSED" in caption else "black"
        draw.multiline_text((x + 3, y + tile + 1), "\n".join(lines[:5]), fill=colour, spacing=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
