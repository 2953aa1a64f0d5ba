"""Does a tiny-shapes ControlNet control? Prompts that leave the position out, a control image that puts the
object somewhere, and the detector's reading of where (and what) the object came out.

The generation is a caller's function, so that one scoring serves the product path (Studio.generate with a
ControlNet unit, `guardforge eval control`) and diffusers' pipeline at build time (to follow training).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from guardforge.train.shapes import data
from guardforge.train.shapes.adherence import save_grid
from guardforge.train.shapes.detector import detect

# What is read back: position and size should follow the control image, colour, shape and background the prompt.
CONTROL_ATTRIBUTES = ("position", "shape", "colour", "size", "background")

# (prompts, control scenes or None for no control, first seed) -> one image per prompt, prompt i seeded seed + i.
Generate = Callable[[list[str], list[Image.Image] | None, int], list[Image.Image]]


@dataclass(frozen=True)
class ControlCase:
    prompt: str  # names colour, shape and background, never a position (nor the size)
    scene: data.Scene  # the scene the control image is made from: the same object at a random place

    @property
    def target(self) -> data.ShapeObject:
        return self.scene.objects[0]


def control_cases(n: int, seed: int = 2024) -> list[ControlCase]:
    """n single-object cases of seen colour/shape pairs, each place equally likely, so that a generator that
    ignores the control image hits the place by chance about one time in five (or always picks one place)."""
    rng = random.Random(seed)
    pairs = [(c, s) for c in data.COLOURS for s in data.SHAPES if (c, s) not in data.HELD_OUT]
    cases = []
    for _ in range(n):
        colour, shape = rng.choice(pairs)
        background = rng.choice([b for b in data.COLOURS if b != colour])
        obj = data.ShapeObject(colour, shape, rng.choice(list(data.SIZES)), rng.choice(list(data.POSITIONS)))
        prompt = f"{data.article(colour)} {colour} {shape}, on {data.article(background)} {background} background"
        cases.append(ControlCase(prompt, data.Scene(background, [obj])))
    return cases


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial rate."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class ControlReport:
    label: str  # "with control" or "without control"
    n: int
    correct: Counter = field(default_factory=Counter)
    readings: list[str] = field(default_factory=list)
    placed: list[bool] = field(default_factory=list)  # per case: the object came out at the control's place
    images: list[Image.Image] = field(default_factory=list)
    seconds: float = 0.0

    def rate(self, attribute: str) -> float:
        return self.correct[attribute] / self.n

    def interval(self, attribute: str) -> tuple[float, float]:
        return wilson_interval(self.correct[attribute], self.n)


def score(label: str, cases: list[ControlCase], images: list[Image.Image]) -> ControlReport:
    """Read each image and count what matches: position and size against the control scene, colour, shape and
    background against the prompt (the control scene has the same ones)."""
    report = ControlReport(label, len(cases))
    for case, image in zip(cases, images, strict=True):
        found = detect(image, shapes=data.SHAPES)
        truth = {"position": case.target.position, "shape": case.target.shape, "colour": case.target.colour,
                 "size": case.target.size, "background": case.scene.background}
        report.correct.update(a for a in CONTROL_ATTRIBUTES if getattr(found, a) == truth[a])
        report.placed.append(found.position == truth["position"])
        report.readings.append(f"{found.colour} {found.shape}, {found.size} {found.position}, on {found.background}")
        report.images.append(image)
    return report


def evaluate(generate: Generate, n: int, seed: int = 0, case_seed: int = 2024, warm_up: bool = False
             ) -> tuple[ControlReport, ControlReport]:
    """The same prompts and seeds with the control image and without it. `warm_up`: generate the first case once
    before timing, so that loading the models is not counted in the first report's seconds."""
    cases = control_cases(n, case_seed)
    prompts = [case.prompt for case in cases]
    if warm_up:
        generate(prompts[:1], [data.render(cases[0].scene)], seed)
    reports = []
    for label, controls in (("with control", [data.render(case.scene) for case in cases]),
                            ("without control", None)):
        started = time.perf_counter()
        images = generate(prompts, controls, seed)
        report = score(label, cases, images)
        report.seconds = time.perf_counter() - started
        reports.append(report)
    return reports[0], reports[1]


def save_control_grid(cases: list[ControlCase], controls: list[Image.Image], with_control: ControlReport,
                      without: ControlReport, path: Path, limit: int = 16) -> Path:
    """Rows of (control image | with control | without), two cases a row, the detector's reading under each
    generated image, misses of the control's place in red. `controls`: what to show for the control (the
    edge map the ControlNet was given)."""
    samples = []
    for i, case in enumerate(cases[:limit]):
        target = case.target
        samples.append((controls[i], f"control: {target.size} {target.shape} {target.position} // {case.prompt}"))
        for report in (with_control, without):
            samples.append((report.images[i], f"{report.label} // {'read' if report.placed[i] else 'MISSED place'}: "
                                              f"{report.readings[i]}"))
    return save_grid(samples, path, columns=6)


def control_map(scene_image: Image.Image, module: str = "canny", processor_res: int = 64) -> Image.Image:
    """What the ControlNet reads for a unit with this image and module, at tiny-shapes' size: the product's own
    unit preparation (for the grid, so that it shows what the network was given)."""
    from guardforge.engine.controlnet import prepare_unit
    from guardforge.engine.controlnet_unit import ControlNetUnit

    unit = ControlNetUnit(module=module, model="preview", processor_res=processor_res)
    return prepare_unit(unit, scene_image, (data.SIZE, data.SIZE), seed=0).image


def studio_generator(studio, controlnet: str, model: str = "tiny-shapes", steps: int = 20, cfg: float = 7.5,
                     sampler: str = "Euler", module: str = "canny", processor_res: int = 64) -> Generate:
    """A `Generate` through the product path: one Studio.generate per prompt (guard, engine, output guard),
    the control scene sent as a ControlNet unit's image for the product's preprocessor (`module`) to read."""
    from guardforge.engine.request import ControlNetUnit, GenerationRequest
    from guardforge.errors import InvalidRequest
    from guardforge.imaging import encode_image

    def generate(prompts: list[str], controls: list[Image.Image] | None, seed: int) -> list[Image.Image]:
        images = []
        for i, prompt in enumerate(prompts):
            units = [] if controls is None else [ControlNetUnit(
                image=encode_image(controls[i]), module=module, model=controlnet, processor_res=processor_res)]
            request = GenerationRequest(prompt=prompt, model=model, sampler=sampler, steps=steps, cfg_scale=cfg,
                                        seed=seed + i, width=data.SIZE, height=data.SIZE, controlnet=units)
            result = studio.generate(request, save=False)
            delivered = result.images[0].pil if result.images else None
            if delivered is None:  # a withheld image would be scored as a miss it is not
                raise InvalidRequest(f"the guard withheld the image for {prompt!r}: the measure needs every image")
            images.append(delivered)
        return images

    return generate
