"""A deterministic reader of tiny-shapes images: background, object colour, shape, position and size."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from guardforge.train.shapes.data import PALETTE, POSITIONS, RESERVED_SHAPES, SHAPES, SIZE, shape_polygon

_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    background: str
    colour: str | None  # None: nothing stands out from the background
    shape: str | None  # None also when no candidate shape fits (MIN_SHAPE_SCORE)
    position: str | None
    size: str | None
    shape_score: float = 0.0  # soft IoU of the best-fitting rendering of the shape


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_RGB - rgb) ** 2).sum(axis=1)))]


# Below this soft IoU no candidate fits and no shape is claimed: the generator's own images, sharp or
# blurred, score at least 0.84; a ragged ring a base model draws for an unknown word scores 0.3-0.5.
MIN_SHAPE_SCORE = 0.6
_SUPERSAMPLE = 8  # candidate shapes are drawn this many times finer, then averaged to pixel coverage
# A decoded image is softer than the generator's: each candidate is also compared after these blurs.
_BLURS = (0.0, 0.5, 0.8, 1.1, 1.5)
_PIXEL_CENTRES = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # (y, x) of every pixel centre


def coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """The share of each pixel a shape covers, drawn at sub-pixel precision like the generator draws it."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (SIZE * s, SIZE * s), 0)
    draw = ImageDraw.Draw(canvas)
    polygon = shape_polygon(shape, cx * s, cy * s, r * s)
    if polygon is None:
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    # Summed as integers, then scaled: the same values as a float mean, at a third of the time (the reader's
    # hot spot, run for every candidate shape of every image an evaluation reads). Rows first, along contiguous
    # memory, then columns: a quarter of the time of one sum over both axes; a block sums to at most 255 * 64,
    # which uint16 holds exactly.
    rows = np.asarray(canvas).reshape(SIZE, s, SIZE * s).sum(axis=1, dtype=np.uint16)
    block_sums = rows.reshape(SIZE, SIZE, s).sum(axis=2, dtype=np.uint16)
    return block_sums.astype(np.float32) / (255 * s * s)


@lru_cache(maxsize=None)  # pure function of the shape: its area and centroid per unit half-extent
def _unit_geometry(shape: str) -> tuple[float, float, float]:
    r = 20.0
    covered = coverage(shape, SIZE / 2, SIZE / 2, r)
    area = covered.sum()
    ys, xs = _PIXEL_CENTRES
    return (area / r ** 2, ((covered * xs).sum() / area - SIZE / 2) / r,
            ((covered * ys).sum() / area - SIZE / 2) / r)


def classify_shape(presence: np.ndarray, shapes: list[str]) -> tuple[str | None, float]:
    """The shape that, drawn with the object's area and centroid and blurred as much as fits best,
    reproduces the presence map (0 = background, 1 = object) with the least squared error.

    Matching area and centroid rather than the bounding box keeps a blurred small star a star:
    blur rounds its points off, which moves a thresholded outline towards a circle but leaves the
    mass where it was. Returns the shape and the soft IoU of its best rendering (None, 0 for an empty map).
    Shapes are drawn upright, as the generator draws them: a rotated star is not read as a star."""
    mass = float(presence.sum())
    if mass <= 0:
        return None, 0.0
    ys, xs = _PIXEL_CENTRES
    mx, my = (presence * xs).sum() / mass, (presence * ys).sum() / mass
    best_shape, best_error, best_iou = shapes[0], float("inf"), 0.0
    for shape in shapes:
        area, ox, oy = _unit_geometry(shape)
        r = (mass / area) ** 0.5
        drawn = coverage(shape, mx - ox * r, my - oy * r, r)
        for sigma in _BLURS:
            candidate = ndimage.gaussian_filter(drawn, sigma) if sigma else drawn
            error = float(((presence - candidate) ** 2).sum())
            if error < best_error:
                best_shape, best_error = shape, error
                best_iou = float(np.minimum(presence, candidate).sum() / np.maximum(presence, candidate).sum())
    return best_shape, best_iou


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
    # How far each pixel sits along the line from the background colour to this blob's own core colour
    # (not obj_rgb, which a second, larger-cored object can pull away from it), near the blob: the window
    # reaches past the softest blur tried (3 sigma of 1.5).
    blob_core = core & mask
    direction = np.median(pixels[blob_core] if blob_core.any() else pixels[mask], axis=0) - bg_rgb
    presence = np.clip((pixels - bg_rgb) @ direction / max(1e-6, float(direction @ direction)), 0, 1)
    window = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=5)
    shape, score = classify_shape(presence * window, shapes)
    if not score >= MIN_SHAPE_SCORE:
        shape = None
    return Detection(background, colour, shape, position, size, score)


def detect_objects(image: Image.Image | np.ndarray, shapes: list[str] | None = None, max_objects: int = 2,
                   min_pixels: int = 12) -> tuple[str, list[Detection]]:
    """Read a scene of up to `max_objects` objects of different colours: the background, then one Detection per
    object, largest first. An object is the largest connected region of pixels nearest one palette colour
    (not the background's), so touching objects stay apart and an object's colour is never a blend; regions
    with no core left after a one-pixel erosion (the blend-coloured rims of blurred edges) are not objects.
    Its shape is read as `detect` reads one, towards the region's own core colour."""
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE)) if isinstance(image, Image.Image)
                        else image, dtype=np.float32)
    shapes = shapes or SHAPES + RESERVED_SHAPES
    background = detect(pixels, shapes=shapes).background
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    near_bg = np.argmin(((border[:, None, :] - _RGB[None]) ** 2).sum(axis=2), axis=1) == _NAMES.index(background)
    bg_rgb = np.median(border[near_bg], axis=0)
    nearest = np.argmin(((pixels[:, :, None, :] - _RGB[None, None]) ** 2).sum(axis=3), axis=2)
    eight = np.ones((3, 3), dtype=bool)
    regions = []
    for index, name in enumerate(_NAMES):
        if name == background or not (nearest == index).any():
            continue
        labels, count = ndimage.label(nearest == index, structure=eight)
        sizes = ndimage.sum(np.ones_like(nearest), labels, range(1, count + 1))
        region = labels == int(np.argmax(sizes)) + 1
        core = ndimage.binary_erosion(region, structure=eight).sum()
        if region.sum() >= min_pixels and core > 0:
            regions.append((core, name, region))
    found = []
    for _, name, region in sorted(regions, key=lambda r: -r[0])[:max_objects]:
        distance = np.sqrt(((pixels[region] - bg_rgb) ** 2).sum(axis=1))
        direction = np.median(pixels[region][distance >= 0.7 * distance.max()], axis=0) - bg_rgb
        presence = np.clip((pixels - bg_rgb) @ direction / max(1e-6, float(direction @ direction)), 0, 1)
        window = ndimage.binary_dilation(region, structure=eight, iterations=5)
        shape, score = classify_shape(presence * window, shapes)
        ys, xs = np.nonzero(region)
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
        extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        found.append(Detection(background, name, shape if score >= MIN_SHAPE_SCORE else None,
                               position, "large" if extent >= 20 else "small", score))
    return background, found
