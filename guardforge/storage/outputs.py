"""The output store: A1111-style dated folders of numbered images, infotext embedded, verdict beside each."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import threading
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
    """Writes `<root>/<mode>-images/YYYY-MM-DD/NNNNN-<seed>.<ext>` and `NNNNN-<seed>.verdict.json` beside it.

    The root is a local folder or any fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`) with its
    storage options; every name goes through the folder's name check, so nothing lands outside the root."""

    def __init__(self, root: Path | str, fmt: str = "png", options: dict | None = None):
        from guardforge.storage.folders import open_folder

        if fmt.lower() not in _SUFFIX:
            raise ValueError(f"output format {fmt!r} is not one of png, jpg, webp")
        self.files = open_folder(root, options)
        self.root = self.files.root
        # What users configured, as they wrote it: the folder, or the URL with its scheme.
        self.location = str(getattr(self.files, "url", self.files.root))
        self.suffix = _SUFFIX[fmt.lower()]
        # One claim at a time within this server on a remote store: where its exclusive create is only a check
        # before the write (fsspec's fallback), two workers could otherwise take one number; between servers it
        # is the store's conditional write that keeps numbers apart. On a disk O_EXCL does it alone.
        self._claiming = threading.Lock() if self.files.remote else contextlib.nullcontext()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def folder(self, mode: str, day: dt.date | None = None) -> str:
        """The name of the folder a mode's images of that day go to, relative to the root."""
        day = day or dt.date.today()
        return f"{_FOLDER.get(mode, f'{mode}-images')}/{day.isoformat()}"

    def _next_number(self, folder: str) -> int:
        numbers = [int(m.group(1)) for name in self.files.list(folder) if (m := _NUMBERED.match(name))]
        return max(numbers, default=-1) + 1

    def _claim(self, folder: str) -> int:
        """Reserve the next free number: an exclusive `.NNNNN.reserved` file while no `NNNNN-*` file exists.

        The seed is part of the file name, so creating the image exclusively could not stop two writers from
        taking the same number; the number itself is what is created exclusively (O_EXCL on a disk, a
        conditional put on an object store, so servers sharing a bucket do not collide either). The caller
        holds the reservation until the image is in place, so a later holder of that number sees the image and
        moves on.
        """
        with self._claiming:
            return self._claim_unlocked(folder)

    def _claim_unlocked(self, folder: str) -> int:
        number = self._next_number(folder)
        while True:
            reservation = f"{folder}/.{number:05d}.reserved"
            if not self.files.create(reservation):
                number += 1
                continue
            if any(name.startswith(f"{number:05d}-") for name in self.files.list(folder)):
                self.files.remove(reservation)
                number += 1
                continue
            return number

    def save(self, image: Image.Image, infotext: str, verdict: dict | None, mode: str, seed: int) -> Path | str:
        """Write the image and its verdict so that neither is ever seen half-written, and the image never
        without its verdict: both are staged first (hidden temporary files on a disk, so a crash leaves only
        those; bytes in memory for an object store), then the verdict and the image are put in place in that
        order; any failure removes what was written. Returns the image's address: a Path on a local disk, the
        full URL on a remote store."""
        folder = self.folder(mode)
        self.files.ensure(folder)
        number = self._claim(folder)
        stem = f"{folder}/{number:05d}-{int(seed)}"
        name, verdict_name = f"{stem}{self.suffix}", f"{stem}.verdict.json"
        staged, placed = [], []
        try:
            image_file = self.files.stage(name, lambda handle: self._write(image, infotext, handle))
            staged.append(image_file)
            if verdict is not None:
                body = json.dumps(verdict, indent=2, default=str).encode("utf-8")
                verdict_file = self.files.stage(verdict_name, lambda handle: handle.write(body))
                staged.append(verdict_file)
                self.files.commit(verdict_file)
                placed.append(verdict_name)
            self.files.commit(image_file)
            placed.append(name)
        except BaseException:
            for file in staged:
                self.files.discard(file)
            for leftover in placed:
                self.files.remove(leftover)
            raise
        finally:
            self.files.remove(f"{folder}/.{number:05d}.reserved")
        return self.files.address(name)

    def read(self, address: Path | str) -> bytes:
        """The bytes of an image this store wrote, by the address save returned. A local path from before the
        outputs moved to another store is read from this machine's disk as before; a URL outside this store's
        root is not read at all (FileNotFoundError)."""
        name = self.files.name_of(address)
        if name is not None:
            return self.files.read(name)
        if "://" in str(address):
            raise FileNotFoundError(f"{address} is not in the outputs store {self.location}")
        return Path(address).read_bytes()

    def delete(self, path: Path | str) -> bool:
        """Remove an image this store wrote and the verdict beside it; False for a path outside the store's
        folder (the outputs folder was moved since: what is there now is not ours to remove) or already gone."""
        name = self.files.name_of(path)
        if name is None or Path(name).suffix not in _PIL_FORMAT:
            return False
        stem = name[: -len(Path(name).suffix)]
        self.files.remove(f"{stem}.verdict.json")
        return self.files.remove(name)

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
