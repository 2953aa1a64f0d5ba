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
_FOLDER = {"txt2img": "txt2img-images", "img2img": "img2img-images", "inpaint": "img2img-images",
           "txt2img-grids": "txt2img-grids", "img2img-grids": "img2img-grids"}


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


def infotext_of(image: Image.Image) -> str:
    """The infotext an opened image carries: a PNG's `parameters` text chunk, else the EXIF UserComment (JPEG,
    WebP); "" if none. Only the header is read: an image opened without load() stays undecoded."""
    text = image.info.get("parameters")
    if text:
        return str(text)
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a malformed EXIF block (Pillow raises what it trips on): no readable infotext there
        return ""
    return decode_user_comment(raw) if raw else ""


def read_infotext(path: Path | str) -> str | None:
    """The infotext of an image file; None if it has none."""
    with Image.open(path) as image:
        return infotext_of(image) or None


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

    def _claim(self, folder: Path) -> int:
        """Reserve the next free number: an exclusive `.NNNNN.reserved` file while no `NNNNN-*` file exists.

        The seed is part of the file name, so creating the image exclusively could not stop two writers from
        taking the same number; the number itself is what is created exclusively. The caller holds the
        reservation until the image is in place, so a later holder of that number sees the image and moves on.
        """
        number = self._next_number(folder)
        while True:
            reservation = folder / f".{number:05d}.reserved"
            try:
                os.close(os.open(reservation, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                number += 1
                continue
            if any(folder.glob(f"{number:05d}-*")):
                reservation.unlink(missing_ok=True)
                number += 1
                continue
            return number

    def save(self, image: Image.Image, infotext: str, verdict: dict | None, mode: str, seed: int) -> Path:
        """Write the image and its verdict so that neither is ever seen half-written, and the image never
        without its verdict: both go to hidden temporary files first (a crash leaves only those), then the
        verdict and the image are renamed into place in that order; any failure removes what was written."""
        folder = self.folder(mode)
        folder.mkdir(parents=True, exist_ok=True)
        number = self._claim(folder)
        stem = f"{number:05d}-{seed}"
        path = folder / f"{stem}{self.suffix}"
        verdict_path = folder / f"{stem}.verdict.json"
        temporary = {path: folder / f".{stem}{self.suffix}.tmp", verdict_path: folder / f".{stem}.verdict.json.tmp"}
        placed: list[Path] = []
        try:
            self._write_new(temporary[path], lambda handle: self._write(image, infotext, handle))
            if verdict is not None:
                body = json.dumps(verdict, indent=2, default=str).encode("utf-8")
                self._write_new(temporary[verdict_path], lambda handle: handle.write(body))
                os.replace(temporary[verdict_path], verdict_path)
                placed.append(verdict_path)
            os.replace(temporary[path], path)
            placed.append(path)
        except BaseException:
            for leftover in [*temporary.values(), *placed]:
                leftover.unlink(missing_ok=True)
            raise
        finally:
            (folder / f".{number:05d}.reserved").unlink(missing_ok=True)
        return path

    def delete(self, path: Path | str) -> bool:
        """Remove an image this store wrote and the verdict beside it; False for a path outside the store's
        folder (the outputs folder was moved since: what is there now is not ours to remove) or already gone."""
        path = Path(os.path.realpath(path))
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, path]) != root or path.suffix not in _PIL_FORMAT:
            return False
        (path.parent / f"{path.stem}.verdict.json").unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _write_new(target: Path, write) -> None:
        # Flushed to the disk before the rename, so that after a power cut the name holds the whole file.
        with open(target, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())

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
