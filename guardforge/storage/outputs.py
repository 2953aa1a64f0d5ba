"""The output store: A1111-style dated folders of numbered images, infotext embedded, verdict beside each."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from pathlib import Path

from PIL import Image, PngImagePlugin

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE = b"UNICODE\0"
_ASCII = b"ASCII\0\0\0"
_SUFFIX = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}
_PIL_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}
_NUMBERED = re.compile(r"^\.?(\d+)[-.]")
# A1111 keeps inpainting with img2img: both come out of its img2img tab.
_FOLDER = {"txt2img": "txt2img-images", "img2img": "img2img-images", "inpaint": "img2img-images"}


def user_comment(text: str) -> bytes:
    """EXIF UserComment as A1111 writes it (piexif's "unicode" encoding: UNICODE prefix, UTF-16 big-endian)."""
    return _UNICODE + text.encode("utf-16-be")


def decode_user_comment(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    if raw.startswith(_UNICODE):
        body = raw[len(_UNICODE):]
        # Writers disagree on byte order; ASCII-range text shows it by where the zero bytes sit.
        big_endian = len(body) < 2 or body[0] == 0 or body[1] != 0
        return body.decode("utf-16-be" if big_endian else "utf-16-le", errors="replace")
    raw = raw.removeprefix(_ASCII)
    return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def read_infotext(path: Path | str) -> str | None:
    """The infotext of a PNG (`parameters` text chunk) or JPEG/WebP (EXIF UserComment); None if it has none."""
    with Image.open(path) as image:
        text = image.info.get("parameters")
        if text:
            return str(text)
        exif = image.getexif().get_ifd(_EXIF_IFD)
        raw = exif.get(_USER_COMMENT)
        if raw:
            return decode_user_comment(raw) or None
    return None


class OutputStore:
    """Writes `<root>/<mode>-images/YYYY-MM-DD/NNNNN-<seed>.<ext>` and `NNNNN-<seed>.verdict.json` beside it."""

    def __init__(self, root: Path, fmt: str = "png"):
        if fmt.lower() not in _SUFFIX:
            raise ValueError(f"output format {fmt!r} is not one of png, jpg, webp")
        self.root = Path(root)
        self.suffix = _SUFFIX[fmt.lower()]

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def folder(self, mode: str, day: dt.date | None = None) -> Path:
        day = day or dt.date.today()
        return self.root / _FOLDER.get(mode, f"{mode}-images") / day.isoformat()

    @staticmethod
    def _next_number(folder: Path) -> int:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1

    def _claim(self, folder: Path, seed: int) -> tuple[Path, int]:
        # The seed is part of the name, so creating the image exclusively does not stop two writers from
        # taking the same number. A writer first takes the number itself (an exclusive `.NNNNN.reserved`
        # file), checks that no image has it yet, creates the image, then drops the reservation. The image
        # exists before the reservation goes, so a later holder of that reservation sees it and moves on.
        number = self._next_number(folder)
        while True:
            reservation = folder / f".{number:05d}.reserved"
            try:
                os.close(os.open(reservation, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                number += 1
                continue
            try:
                if any(folder.glob(f"{number:05d}-*")):
                    number += 1
                    continue
                path = folder / f"{number:05d}-{seed}{self.suffix}"
                try:
                    return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    number += 1
            finally:
                reservation.unlink(missing_ok=True)

    def save(self, image: Image.Image, infotext: str, verdict: dict | None, mode: str, seed: int) -> Path:
        folder = self.folder(mode)
        folder.mkdir(parents=True, exist_ok=True)
        path, fd = self._claim(folder, seed)
        try:
            with os.fdopen(fd, "wb") as handle:
                self._write(image, infotext, handle)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if verdict is not None:
            verdict_path = path.with_name(path.name[: -len(self.suffix)] + ".verdict.json")
            verdict_path.write_text(json.dumps(verdict, indent=2, default=str), encoding="utf-8")
        return path

    def _write(self, image: Image.Image, infotext: str, handle) -> None:
        fmt = _PIL_FORMAT[self.suffix]
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", infotext)
            image.save(handle, format="PNG", pnginfo=info)
            return
        exif = Image.Exif()
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = user_comment(infotext)
        rgb = image.convert("RGB") if fmt == "JPEG" else image
        extra = {"quality": 95} if fmt == "JPEG" else {"quality": 95, "lossless": False}
        rgb.save(handle, format=fmt, exif=exif.tobytes(), **extra)
