"""Untrusted images in and out as base64: decoded with a pixel cap checked before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from guardforge.errors import InvalidRequest

# The raster formats clients send. Pillow would otherwise try every plugin it has, EPS among them, which
# hands the bytes to Ghostscript: an outside interpreter has no business reading untrusted uploads.
# No "MPO": Pillow opens MPO (phone cameras' multi-picture JPEG) through the JPEG plugin.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_ACCEPTED_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"


def decode_image(data: str, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode base64 (or a data: URL) into an image, refusing decompression bombs before decoding."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    # A1111's decoder skips line breaks, so clients send base64.encodebytes output (76-column lines).
    data = "".join(data.split())
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{what} is not valid base64: {exc}") from None
    return open_image(io.BytesIO(raw), max_pixels, what)


def open_image(source, max_pixels: int, what: str = "image", load: bool = True) -> Image.Image:
    """Open a file path or binary stream as decode_image does: size from the header checked against
    `max_pixels` first, then (with `load`) the pixels decoded; `load=False` leaves only header and text chunks
    read (PNG info)."""
    try:
        image = Image.open(source, formats=ACCEPTED_FORMATS)
        if image.width * image.height > max_pixels:
            raise InvalidRequest(
                f"{what} is {image.width}x{image.height}, over the limit of {max_pixels} pixels"
            )
        if load:
            image.load()
    except InvalidRequest:
        raise
    except Exception as exc:
        # Pillow's plugins report malformed files with whatever they trip on (ValueError for an oversized
        # text chunk, SyntaxError, struct.error, EOFError...); each is the caller's bad file, not our failure.
        raise InvalidRequest(f"{what} is not a readable {_ACCEPTED_NAMES} image: "
                             f"{type(exc).__name__}: {exc}") from None
    return image


def encode_image(image: Image.Image, fmt: str = "PNG", infotext: str | None = None) -> str:
    """Base64 of the image file; `infotext` goes in a PNG's `parameters` text chunk, as A1111 writes it."""
    from PIL import PngImagePlugin

    buffer = io.BytesIO()
    if infotext is not None and fmt.upper() == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
        image.save(buffer, format=fmt, pnginfo=info)
    else:
        image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
