"""A deterministic reader of tiny-shapes images: background, object colour, shape, position and size."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from guardforge.train.shapes.data import PALETTE, POSITIONS, RESERVED_SHAPES, SHAPES, SIZE, shape_polygon

_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)
_GRID = 24  # shape masks are compared after scaling their bounding box to this many pixels a side


@dataclass(frozen=True)
class Detection:
    background: str
    colour: str | None  # None: nothing stands out from the background
    shape: str | None
    position: str | None
    size: str | None
    shape_score: float = 0.0  # IoU of the best shape template

    def as_dict(self) -> dict:
        return asdict(self)


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_RGB - rgb) ** 2).sum(axis=1)))]


def _normalised(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its bounding box and resampled to _GRID x _GRID (bilinear, then thresholded)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255
    return np.asarray(Image.fromarray(crop).resize((_GRID, _GRID), Image.BILINEAR)) >= 128


@lru_cache(maxsize=None)  # pure function of its arguments: the templates never change
def _template(shape: str) -> np.ndarray:
    canvas = Image.new("L", (256, 256), 0)
    draw = ImageDraw.Draw(canvas)
    polygon = shape_polygon(shape, 128, 128, 100)
    if polygon is None:
        draw.ellipse([28, 28, 228, 228], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return _normalised(np.asarray(canvas) > 0)


def classify_shape(mask: np.ndarray, shapes: list[str]) -> tuple[str, float]:
    """The shape whose bounding-box-normalised template overlaps the mask best (IoU)."""
    observed = _normalised(mask)
    scores = {}
    for shape in shapes:
        template = _template(shape)
        scores[shape] = (observed & template).sum() / max(1, (observed | template).sum())
    best = max(scores, key=scores.get)
    return best, float(scores[best])


def detect(image: Image.Image | np.ndarray, shapes: list[str] | None = None,
           min_pixels: int = 12) -> Detection:
    """Read a single-object image. Colours are the nearest palette entries to medians, so blur is tolerated."""
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE)) if isinstance(image, Image.Image)
                        else image, dtype=np.float32)
    shapes = shapes or SHAPES + RESERVED_SHAPES
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    border_index = np.argmin(((border[:, None, :] - _RGB[None]) ** 2).sum(axis=2), axis=1)
    most_common = int(np.bincount(border_index, minlength=len(_NAMES)).argmax())
    background = _NAMES[most_common]
    chosen = border[border_index == most_common]
    bg_rgb = np.median(chosen, axis=0)

    distance = np.sqrt(((pixels - bg_rgb) ** 2).sum(axis=2))
    far = distance > 40
    if far.sum() < min_pixels:
        return Detection(background, None, None, None, None)
    # The object's colour from its clearly-off-background core, then every pixel nearer it than the
    # background belongs to it: the midpoint threshold keeps a blurred edge at its true place.
    core = distance > 0.7 * distance.max()
    obj_rgb = np.median(pixels[core], axis=0)
    to_obj = ((pixels - obj_rgb) ** 2).sum(axis=2)
    to_bg = ((pixels - bg_rgb) ** 2).sum(axis=2)
    mask = to_obj < to_bg
    labels, count = ndimage.label(mask)
    if count > 1:  # keep the largest blob; specks elsewhere are noise
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    if mask.sum() < min_pixels:
        return Detection(background, None, None, None, None)
    colour = nearest_colour(np.median(pixels[mask], axis=0))
    ys, xs = np.nonzero(mask)
    # The bounding-box centre, not the centroid: a triangle's centroid sits low of its position.
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    size = "large" if extent >= 20 else "small"
    shape, score = classify_shape(mask, shapes)
    return Detection(background, colour, shape, position, size, score)
