"""decode_image on real files: malformed or foreign images are a 422 reason (InvalidRequest), never a crash."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from guardforge.errors import InvalidRequest
from guardforge.imaging import ACCEPTED_FORMATS, decode_image

MAX_PIXELS = 4096 * 4096


def encoded(image: Image.Image, fmt: str, **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def ztxt_bomb_png() -> bytes:
    """A valid 64x64 PNG plus a zTXt chunk of 2 MB of spaces (~2 KB compressed): past Pillow's MAX_TEXT_CHUNK,
    which Pillow reports with a ValueError while opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(buffer, "PNG")
    png = buffer.getvalue()
    after_ihdr = 8 + 25
    return png[:after_ihdr] + chunk(b"zTXt", b"comment\0\0" + zlib.compress(b" " * (2 << 20))) + png[after_ihdr:]


def test_a_text_chunk_bomb_is_refused_with_a_reason():
    with pytest.raises(InvalidRequest, match=r"init_image is not a readable .*ValueError"):
        decode_image(base64.b64encode(ztxt_bomb_png()).decode(), MAX_PIXELS, "init_image")


def test_a_truncated_file_is_refused_with_a_reason():
    whole = base64.b64decode(encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG"))
    with pytest.raises(InvalidRequest, match="mask is not a readable"):
        decode_image(base64.b64encode(whole[: len(whole) // 2]).decode(), MAX_PIXELS, "mask")


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_outside_the_common_raster_ones_are_refused(fmt):
    # Pillow decodes each of these: before the format list, every one was accepted.
    with pytest.raises(InvalidRequest, match="not a readable PNG, JPEG"):
        decode_image(encoded(Image.new("RGB", (32, 32), (1, 2, 3)), fmt), MAX_PIXELS)


def test_postscript_never_reaches_ghostscript():
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
           b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n")
    with pytest.raises(InvalidRequest) as refused:
        decode_image(base64.b64encode(eps).decode(), MAX_PIXELS)
    # Identified as EPS, Pillow would try to run Ghostscript (and say so when it is not installed).
    assert "not a readable" in str(refused.value) and "Ghostscript" not in str(refused.value)


@pytest.mark.parametrize("fmt,save", [("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("GIF", {}), ("BMP", {}),
                                      ("TIFF", {}), ("MPO", {})])
def test_the_common_raster_formats_decode(fmt, save):
    image = decode_image(encoded(Image.new("RGB", (48, 32), (200, 30, 30)), fmt, **save), MAX_PIXELS)
    assert image.size == (48, 32) and image.format in (*ACCEPTED_FORMATS, "MPO")


def test_base64_with_line_breaks_decodes_as_in_a1111():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, "PNG")
    wrapped = base64.encodebytes(buffer.getvalue()).decode()  # 76-column lines, as Python clients send
    assert "\n" in wrapped
    assert decode_image(wrapped, MAX_PIXELS).size == (64, 64)
    assert decode_image("data:image/png;base64,\r\n" + wrapped, MAX_PIXELS).size == (64, 64)
    with pytest.raises(InvalidRequest, match="not valid base64"):
        decode_image(wrapped.replace("\n", "!"), MAX_PIXELS)
