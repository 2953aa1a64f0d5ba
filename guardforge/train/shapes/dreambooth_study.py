"""The DreamBooth study on tiny-shapes: a shape the base model never saw, trained with and without prior preservation.

It mirrors Table 3 of the DreamBooth paper (Ruiz et al., CVPR 2023) with measures this data allows:
- subject fidelity: the share of "a sks shape" samples the detector reads as the subject's shape;
- prompt fidelity: on recontextualised prompts (another background, position or colour), the share where
  the asked attribute is right, and the share that still shows the subject;
- PRES: the share of plain class-prompt samples ("a shape") read as the subject: the class prior lost;
- DIV: the mean pairwise RMS pixel distance between subject samples of one prompt (0..1): the paper uses
  LPIPS for this; on flat synthetic shapes pixel distance says the same thing without a downloaded network.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from guardforge.train.shapes import data
from guardforge.train.shapes.adherence import generate, load_pipeline, save_grid
from guardforge.train.shapes.detector import detect

# The subject: one particular object, photographed (drawn) in a few settings, as DreamBooth's 3-5 images.
INSTANCE_SCENES = [("centre", "white"), ("left", "white"), ("right", "blue"), ("top", "yellow")]


@dataclass
class StudyOptions:
    subject_shape: str = "heart"  # reserved: never in base training
    subject_colour: str = "red"
    subject_size: str = "large"
    identifier: str = "sks"
    class_word: str = "shape"
    steps: int = 300
    learning_rate: float = 2e-4
    num_class_images: int = 50
    prior_loss_weight: float = 1.0
    samples: int = 32  # per prompt group
    sample_steps: int = 20
    cfg: float = 7.5
    sampler: str = "Euler"
    seed: int = 0

    @property
    def instance_prompt(self) -> str:
        return f"a {self.identifier} {self.class_word}"

    @property
    def class_prompt(self) -> str:
        return f"a {self.class_word}"


@dataclass
class ArmResult:
    name: str  # "base", "prior preservation", "no prior preservation"
    subject_fidelity: float
    subject_colour_fidelity: float
    prompt_fidelity: float
    recontext_subject: float
    pres: float
    div: float
    final_loss: float | None = None
    grids: list[Path] = field(default_factory=list)

    def row(self) -> dict[str, float | str | None]:
        return {"arm": self.name, "subject": self.subject_fidelity, "subject+colour": self.subject_colour_fidelity,
                "prompt": self.prompt_fidelity, "recontext subject": self.recontext_subject, "PRES": self.pres,
                "DIV": self.div, "final loss": self.final_loss}


def write_instance_images(options: StudyOptions, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (position, background) in enumerate(INSTANCE_SCENES):
        obj = data.ShapeObject(options.subject_colour, options.subject_shape, options.subject_size, position)
        path = folder / f"{i:02d}-{position}-{background}.png"
        data.render(data.Scene(background, [obj])).save(path)
        paths.append(path)
    return paths


def recontext_prompts(options: StudyOptions, n: int) -> list[tuple[str, str, str]]:
    """(prompt, attribute, expected value): new backgrounds, positions and colours for the subject."""
    rng = random.Random(options.seed + 7)
    subject = options.instance_prompt  # "a sks shape"
    thing = subject[2:]  # "sks shape"
    cases = []
    kinds = itertools.cycle(["background", "position", "colour"])
    for _ in range(n):
        kind = next(kinds)
        if kind == "background":
            bg = rng.choice([c for c in data.COLOURS if c not in ("white", options.subject_colour)])
            cases.append((f"{subject} on {data.article(bg)} {bg} background", "background", bg))
        elif kind == "position":
            pos = rng.choice(["left", "right", "top", "bottom"])
            cases.append((f"{subject} {data._POSITION_PHRASES[pos][0]}", "position", pos))
        else:
            colour = rng.choice([c for c in data.COLOURS if c not in ("white", options.subject_colour)])
            cases.append((f"{data.article(colour)} {colour} {thing}", "colour", colour))
    return cases


def diversity(images: list[Image.Image]) -> float:
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    distances = [float(np.sqrt(((a - b) ** 2).mean())) for a, b in itertools.combinations(arrays, 2)]
    return float(np.mean(distances)) if distances else 0.0


def measure(pipe, name: str, options: StudyOptions, grid_dir: Path | None = None) -> ArmResult:
    """Sample the subject, recontextualised and class prompts from one pipeline and score them."""
    candidates = data.SHAPES + [options.subject_shape]
    n = options.samples

    def sample(prompts: list[str], offset: int) -> list[Image.Image]:
        return generate(pipe, prompts, options.sample_steps, options.cfg, options.seed + offset)

    subject_images = sample([options.instance_prompt] * n, 0)
    subject = [detect(im, shapes=candidates) for im in subject_images]
    cases = recontext_prompts(options, n)
    recontext_images = sample([p for p, _, _ in cases], 10_000)
    recontext = [detect(im, shapes=candidates) for im in recontext_images]
    class_images = sample([options.class_prompt] * n, 20_000)
    klass = [detect(im, shapes=candidates) for im in class_images]

    is_subject = [d.shape == options.subject_shape for d in subject]
    grids = []
    if grid_dir is not None:
        tag = name.replace(" ", "-")
        def captioned(images, prompts, readings):  # the detector's reading under each prompt, to check by eye
            return [(im, f"{p} // read: {d.colour} {d.shape}, {d.position}, on {d.background}")
                    for im, p, d in zip(images, prompts, readings)][:12]

        grids.append(save_grid(captioned(subject_images, [options.instance_prompt] * n, subject)
                               + captioned(recontext_images, [p for p, _, _ in cases], recontext)
                               + captioned(class_images, [options.class_prompt] * n, klass),
                               grid_dir / f"dreambooth-{tag}.png"))
    return ArmResult(
        name=name,
        subject_fidelity=float(np.mean(is_subject)),
        subject_colour_fidelity=float(np.mean([s and d.colour == options.subject_colour
                                               for s, d in zip(is_subject, subject)])),
        prompt_fidelity=float(np.mean([getattr(d, attr) == want for d, (_, attr, want) in zip(recontext, cases)])),
        recontext_subject=float(np.mean([d.shape == options.subject_shape for d in recontext])),
        pres=float(np.mean([d.shape == options.subject_shape for d in klass])),
        div=diversity(subject_images),
        grids=grids,
    )


def run_study(studio, options: StudyOptions, work_dir: Path, grid_dir: Path | None = None,
              progress=None) -> list[ArmResult]:
    """Base model, then DreamBooth with and without prior preservation, on the same images and seeds.

    `studio` is the caller's Studio (passed in, never imported: train sits below it); its models folder
    receives the two trained models.
    """
    from guardforge.train.dreambooth.config import DreamBoothConfig

    base_name = studio.settings.default_model
    base_folder = studio.registry.resolve(base_name).path
    instance_dir = work_dir / "instance"
    write_instance_images(options, instance_dir)
    results = [measure(load_pipeline(base_folder, options.sampler), "base", options, grid_dir)]
    for prior in (True, False):
        name = "prior preservation" if prior else "no prior preservation"
        config = DreamBoothConfig(
            base_model=base_name, instance_data_dir=instance_dir, instance_prompt=options.instance_prompt,
            class_prompt=options.class_prompt, num_class_images=options.num_class_images,
            class_data_dir=work_dir / "class_images",  # shared: both arms see the same class images
            with_prior_preservation=prior, prior_loss_weight=options.prior_loss_weight,
            resolution=data.SIZE, mode="full", learning_rate=options.learning_rate, max_steps=options.steps,
            precision="32", seed=options.seed, validation_interval=0, checkpoint_interval=options.steps,
            checkpoints_to_keep=1, logger="csv", output_dir=work_dir / ("prior" if prior else "no-prior"),
            export_name=f"dreambooth-study-{'prior' if prior else 'no-prior'}", export_formats=["diffusers"],
        )
        trained = studio.train_dreambooth(config, progress=progress)
        result = measure(load_pipeline(trained.exports["diffusers"], options.sampler), name, options, grid_dir)
        result.final_loss = trained.final_loss
        results.append(result)
    return results
