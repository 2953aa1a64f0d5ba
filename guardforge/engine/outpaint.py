"""Outpainting: the canvas extended left, right, up and/or down, inpainted over the new area.

What A1111 does with its "Poor man's outpainting" script, in one pass: the image is placed on a larger canvas, a
mask covers the new area and reaches `2 x mask_blur` pixels into the old image (so that, once blurred by
mask_blur, the seam is repainted and the new area is fully so), and the masked area is filled before denoising
(engine/masked_content.py). The engine then inpaints the canvas as any inpaint request: a 9-channel inpainting
UNet, diffusers' inpaint pipeline for a plain SD UNet, or the latent blend of engine/latent_inpaint.py for other
plain UNets; the overlay puts the old image's pixels back, exactly, wherever the mask is black.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from guardforge.engine.request import GenerationRequest

SIDES = ("left", "right", "up", "down")
# A1111's script name, as /sdapi/v1/scripts lists it and clients send it.
POOR_MANS_OUTPAINTING = "poor man's outpainting"


class Outpaint(BaseModel):
    """Pixels to add on each side of the init image (multiples of 8, at least one side)."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0)
    right: int = Field(0, ge=0)
    up: int = Field(0, ge=0)
    down: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value):
        # "left=64,right=64": the CLI's and the infotext's spelling, accepted by the API too.
        return cls._sides(value) if isinstance(value, str) else value

    @field_validator(*SIDES)
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value} (try {value // 8 * 8 or 8})")
        return value

    @model_validator(mode="after")
    def _some_side(self) -> Outpaint:
        if not any(getattr(self, side) for side in SIDES):
            raise ValueError("outpaint adds nothing: give pixels for at least one of left, right, up, down")
        return self

    @staticmethod
    def _sides(text: str) -> dict[str, int]:
        """`left=64,right=64` as {"left": 64, "right": 64}; ValueError says what is wrong."""
        sides: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            side, eq, pixels = part.partition("=")
            side = side.strip().lower()
            if not eq or side not in SIDES or not pixels.strip().isdigit():
                raise ValueError(f"{part!r}: write SIDE=PIXELS, SIDE one of {', '.join(SIDES)} (e.g. left=64,up=128)")
            if side in sides:
                raise ValueError(f"{side} is given twice")
            sides[side] = int(pixels)
        return sides

    def __str__(self) -> str:
        return ",".join(f"{side}={getattr(self, side)}" for side in SIDES if getattr(self, side))


def base_size(request: GenerationRequest, image_size: tuple[int, int]) -> tuple[int, int]:
    """The old image's size on the canvas: the request's width and height when given (the image is resized to
    them, as img2img does), else the image's own size, cut down to multiples of 8."""
    return (request.width or max(image_size[0] // 8 * 8, 8), request.height or max(image_size[1] // 8 * 8, 8))


def canvas_size(request: GenerationRequest, image_size: tuple[int, int]) -> tuple[int, int]:
    """The output's size for an init image of `image_size`."""
    spec = request.outpaint
    width, height = base_size(request, image_size)
    return width + spec.left + spec.right, height + spec.up + spec.down


def check_canvas(request: GenerationRequest, image_size: tuple[int, int], limits) -> None:
    """InvalidRequest when the outpainted canvas for an init image of `image_size` breaks the size limits."""
    from guardforge.errors import InvalidRequest

    width, height = canvas_size(request, image_size)
    for name, value, cap in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value > cap:
            raise InvalidRequest(f"outpainted {name}={value} is over this server's limit of {cap} (the image is "
                                 f"{image_size[0]}x{image_size[1]} before {request.outpaint})")


def extend(image: Image.Image, request: GenerationRequest) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image on the larger canvas, its edge pixels carried outward over the new area (what
    inpainting_fill "original" denoises from), and the mask, white over the new area and `2 x mask_blur` into
    the old image on each extended side."""
    spec = request.outpaint
    size = base_size(request, image.size)
    old = image.convert("RGB")
    if old.size != size:
        old = old.resize(size, Image.LANCZOS)
    pixels = np.pad(np.asarray(old), ((spec.up, spec.down), (spec.left, spec.right), (0, 0)), mode="edge")
    canvas = Image.fromarray(pixels)
    overlap = 2 * request.mask_blur
    mask = Image.new("L", canvas.size, 255)
    # PIL's rectangle includes its second corner: -1 keeps the black area exactly the old image (less the overlap).
    x0, y0 = spec.left + (overlap if spec.left else 0), spec.up + (overlap if spec.up else 0)
    x1 = spec.left + size[0] - (overlap if spec.right else 0) - 1
    y1 = spec.up + size[1] - (overlap if spec.down else 0) - 1
    if x1 >= x0 and y1 >= y0:  # an overlap wider than the old image leaves nothing of it: all is repainted
        ImageDraw.Draw(mask).rectangle((x0, y0, x1, y1), fill=0)
    return canvas, mask
