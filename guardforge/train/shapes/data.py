"""Procedural, seeded shape scenes (64x64 RGB) with plain-English captions for tiny-shapes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

# Well separated in RGB so that a blurry sample still lands nearest the right name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross"]
# Drawable but never in base training: the DreamBooth study teaches it as a new concept.
RESERVED_SHAPES = ["heart"]
SIZES = {"large": 14, "small": 8}  # half-extent in pixels
POSITIONS: dict[str, tuple[int, int]] = {
    "centre": (32, 32), "left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48),
}
# (colour, shape) pairs that never appear in a training caption or image: they measure generalisation.
HELD_OUT: list[tuple[str, str]] = [
    ("blue", "triangle"), ("green", "star"), ("yellow", "square"), ("purple", "circle"),
    ("orange", "diamond"), ("white", "cross"), ("black", "triangle"), ("red", "star"),
]

_POSITION_PHRASES = {
    "centre": ["in the centre", "in the middle", "in the center"],
    "left": ["on the left", "at the left", "to the left"],
    "right": ["on the right", "at the right", "to the right"],
    "top": ["at the top", "on top", "near the top"],
    "bottom": ["at the bottom", "near the bottom", "on the bottom"],
}
_BACKGROUND_PHRASES = ["on {a} {bg} background", "over {a} {bg} background", "against {a} {bg} background",
                       "on {bg}"]
# Two objects sit on opposite sides so they never overlap.
_PAIRS = [("left", "right"), ("top", "bottom")]


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str
    position: str


@dataclass
class Scene:
    background: str
    objects: list[ShapeObject] = field(default_factory=list)


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred at (cx, cy) with half-extent r; None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        a, w = r, r * 0.36
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    if shape == "heart":
        points = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((cx + x * r / 17, cy - y * r / 17 + r * 0.1))
        return points
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES + RESERVED_SHAPES}")


def render(scene: Scene) -> Image.Image:
    """Draw a scene: flat background, flat objects, no anti-aliasing (the detector reads exact colours)."""
    image = Image.new("RGB", (SIZE, SIZE), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = POSITIONS[obj.position]
        r = SIZES[obj.size]
        fill = PALETTE[obj.colour]
        polygon = shape_polygon(obj.shape, cx, cy, r)
        if polygon is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(polygon, fill=fill)
    return image


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(scene: Scene, rng: random.Random, say_size: bool = True, say_position: bool = True) -> str:
    """A varied plain-English caption for a scene."""
    parts = []
    for obj in scene.objects:
        words = []
        if say_size:
            words.append(obj.size)
        words += [obj.colour, obj.shape]
        words.insert(0, article(words[0]))
        if say_position:
            words.append(rng.choice(_POSITION_PHRASES[obj.position]))
        parts.append(" ".join(words))
    things = " and ".join(parts)
    background = rng.choice(_BACKGROUND_PHRASES).format(a=article(scene.background), bg=scene.background)
    if rng.random() < 0.2:
        return f"{article(scene.background)} {scene.background} background with {things}"
    return f"{things}, {background}" if rng.random() < 0.5 else f"{things} {background}"


def caption_for(colour: str, shape: str, position: str, background: str, size: str | None = None) -> str:
    """The canonical single-object prompt the evaluator uses."""
    first = size or colour
    size_word = f"{size} " if size else ""
    phrase = _POSITION_PHRASES[position][0]
    return (f"{article(first)} {size_word}{colour} {shape} {phrase}, "
            f"on {article(background)} {background} background")


def _allowed(colour: str, shape: str, held_out: bool) -> bool:
    return ((colour, shape) in HELD_OUT) == held_out


def random_object(rng: random.Random, background: str, position: str, held_out: bool = False,
                  exclude_colour: str | None = None) -> ShapeObject:
    while True:
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        if colour != background and colour != exclude_colour and _allowed(colour, shape, held_out):
            return ShapeObject(colour, shape, rng.choice(list(SIZES)), position)


def random_example(rng: random.Random, two_object_rate: float = 0.25) -> tuple[Image.Image, str]:
    """One training image and caption; never a held-out pair, never a reserved shape."""
    background = rng.choice(COLOURS)
    if rng.random() < two_object_rate:
        first_pos, second_pos = rng.choice(_PAIRS)
        if rng.random() < 0.5:
            first_pos, second_pos = second_pos, first_pos
        first = random_object(rng, background, first_pos)
        second = random_object(rng, background, second_pos, exclude_colour=first.colour)
        scene = Scene(background, [first, second])
        caption = describe(scene, rng, say_size=rng.random() < 0.7)
    else:
        say_position = rng.random() < 0.85
        # An unstated position means the centre, so "a red circle on a blue background" is well defined.
        position = rng.choice(list(POSITIONS)) if say_position else "centre"
        scene = Scene(background, [random_object(rng, background, position)])
        caption = describe(scene, rng, say_size=rng.random() < 0.7, say_position=say_position)
    return render(scene), caption


def make_dataset(n: int, seed: int = 0, two_object_rate: float = 0.25) -> tuple[np.ndarray, list[str]]:
    """n images as uint8 (n, 64, 64, 3) and their captions, reproducible from the seed."""
    rng = random.Random(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        image, caption = random_example(rng, two_object_rate)
        images[i] = np.asarray(image)
        captions.append(caption)
    return images, captions


def eval_cases(held_out: bool, n: int, seed: int = 1234) -> list[tuple[ShapeObject, str, str]]:
    """n single-object (object, background, caption) cases; held-out pairs or seen ones."""
    rng = random.Random(seed)
    cases = []
    pairs = [(c, s) for c in COLOURS for s in SHAPES if _allowed(c, s, held_out)]
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        background = rng.choice([b for b in COLOURS if b != colour])
        position = list(POSITIONS)[i % len(POSITIONS)]
        size = rng.choice(list(SIZES))
        obj = ShapeObject(colour, shape, size, position)
        cases.append((obj, background, caption_for(colour, shape, position, background, size)))
    return cases


def eval_scenes_two(n: int, seed: int = 4321) -> list[tuple[Scene, str]]:
    """n two-object (scene, caption) cases of seen pairs, every attribute stated, positions opposite."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        background = rng.choice(COLOURS)
        first_pos, second_pos = rng.choice(_PAIRS)
        if rng.random() < 0.5:  # as in training: the object named first is not always the left or top one
            first_pos, second_pos = second_pos, first_pos
        first = random_object(rng, background, first_pos)
        second = random_object(rng, background, second_pos, exclude_colour=first.colour)
        scene = Scene(background, [first, second])
        cases.append((scene, describe(scene, rng, say_size=True)))
    return cases


def vocabulary_words() -> list[str]:
    """Every word a caption can contain (the tokenizer makes each one a single token)."""
    words = {"a", "an", "and", "with", "background", "the", "on", "at", "to", "in", "over", "against", "near",
             "middle", "centre", "center", "top", "bottom", "left", "right"}
    words |= set(COLOURS) | set(SHAPES) | set(RESERVED_SHAPES) | set(SIZES)
    for phrases in _POSITION_PHRASES.values():
        for phrase in phrases:
            words |= set(phrase.split())
    return sorted(words)
