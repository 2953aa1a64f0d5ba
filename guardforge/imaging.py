"""Untrusted images in and out as base64: decoded with a pixel cap checked before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from guardforge.errors import InvalidRequest


def decode_image(data: str, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode base64 (or a data: URL) into an RGB image, refusing decompression bombs before decoding."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{what} is not valid base64: {exc}") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > max_pixels:
            raise InvalidRequest(
                f"{what} is {image.width}x{image.height}, over the limit of {max_pixels} pixels"
            )
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"{what} is not a readable PNG, JPEG or WebP image: {exc}") from None
    return image


def encode_image(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
