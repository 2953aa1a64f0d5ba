"""Where outputs live: a local folder or any fsspec URL (s3://, gs://, memory://), behind one set of primitives."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from guardforge.errors import InvalidRequest

# Names are ours (mode folders, dates, numbers, seeds), so a strict alphabet costs nothing and shuts out
# everything that could leave the root on some backend: "..", separators of another OS, URL schemes, NUL.
_PART = re.compile(r"^[A-Za-z0-9._-]+$")


class UnsafeName(InvalidRequest):
    """A name that would leave the storage root (or is not a plain relative name)."""


def check_name(name: str) -> str:
    """`name` if it is a plain relative name inside the root (parts of letters, digits, '.', '_', '-'; no '.' or
    '..' part); UnsafeName otherwise."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or any(part in (".", "..") or not _PART.match(part) for part in parts):
        raise UnsafeName(f"{name!r} is not a plain relative name inside the outputs store")
    return name


@dataclass
class Staged:
    """A file written out of sight, to be put in place by commit: a local temporary file or an object's bytes."""

    name: str
    temporary: Path | None = None
    data: bytes | None = None


class LocalFolder:
    """A folder on this machine: each file is written to a hidden temporary file, flushed to the disk, then
    renamed into place, so a crash never leaves a half-written file under its own name."""

    remote = False

    def __init__(self, root: Path):
        self.root = Path(root)

    def address(self, name: str) -> Path:
        return self.root / check_name(name)

    def name_of(self, address: Path | str) -> str | None:
        """The name an address has in this folder, symlinks followed; None outside it."""
        path = os.path.realpath(address)
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, path]) != root or path == root:
            return None
        return Path(path).relative_to(root).as_posix()

    def ensure(self, folder: str) -> None:
        self.address(folder).mkdir(parents=True, exist_ok=True)

    def list(self, folder: str) -> list[str]:
        try:
            return [entry.name for entry in self.address(folder).iterdir()]
        except FileNotFoundError:
            return []

    def create(self, name: str) -> bool:
        """Create an empty file only if none of that name exists; False if one does (exclusive on every disk)."""
        try:
            os.close(os.open(self.address(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        return True

    def stage(self, name: str, write) -> Staged:
        target = self.address(name)
        temporary = target.with_name(f".{target.name}.tmp")
        staged = Staged(name, temporary=temporary)
        try:
            # Flushed to the disk before the rename, so that after a power cut the name holds the whole file.
            with open(temporary, "xb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def commit(self, staged: Staged) -> None:
        os.replace(staged.temporary, self.address(staged.name))

    def discard(self, staged: Staged) -> None:
        staged.temporary.unlink(missing_ok=True)

    def read(self, name: str) -> bytes:
        return self.address(name).read_bytes()

    def remove(self, name: str) -> bool:
        try:
            self.address(name).unlink()
        except FileNotFoundError:
            return False
        return True


class FsspecFolder:
    """A prefix of any fsspec filesystem (an S3 or GCS bucket, a memory filesystem in tests). Object stores put
    a whole object or nothing, so an object is written in one call from bytes rendered in memory."""

    remote = True

    def __init__(self, fs, root: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = fs.unstrip_protocol(self.root).rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{check_name(name)}"

    def address(self, name: str) -> str:
        return f"{self.url}/{check_name(name)}"

    def name_of(self, address: Path | str) -> str | None:
        """The name a full URL has under this prefix; None for any other URL (another bucket, a sibling prefix
        that merely starts alike, a name with '..') or a local path."""
        address = str(address)
        if not address.startswith(self.url + "/"):
            return None
        try:
            return check_name(address[len(self.url) + 1:])
        except UnsafeName:
            return None

    def ensure(self, folder: str) -> None:
        """Nothing to make: object stores have no folders, a key's prefix exists once an object has it."""
        check_name(folder)

    def list(self, folder: str) -> list[str]:
        path = self._path(folder)
        # Another server may have written since: s3fs and gcsfs would answer from their listing cache.
        self.fs.invalidate_cache(path)
        try:
            return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    def create(self, name: str) -> bool:
        """Create an empty object only if none of that name exists (S3's If-None-Match: *, exclusive across
        servers); False if one does."""
        try:
            self.fs.pipe_file(self._path(name), b"", mode="create")
        except FileExistsError:
            return False
        return True

    def stage(self, name: str, write) -> Staged:
        buffer = io.BytesIO()
        write(buffer)
        return Staged(check_name(name), data=buffer.getvalue())

    def commit(self, staged: Staged) -> None:
        self.fs.pipe_file(self._path(staged.name), staged.data)

    def discard(self, staged: Staged) -> None:
        staged.data = None

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(self._path(name))

    def remove(self, name: str) -> bool:
        path = self._path(name)
        # S3 answers a delete of a missing key with success: only an existing object counts as removed.
        if not self.fs.exists(path):
            return False
        self.fs.rm_file(path)
        return True


def open_folder(location: Path | str, options: dict | None = None) -> LocalFolder | FsspecFolder:
    """A local path (or file:// URL) as a LocalFolder; any other fsspec URL as an FsspecFolder. The backend's
    package (s3fs for s3://, gcsfs for gs://) is imported by fsspec only when its URL is opened."""
    text = str(location)
    if "://" not in text:
        return LocalFolder(Path(location))
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(text, **(options or {}))
    except ImportError as error:
        raise InvalidRequest(f"outputs URL {text!r} needs a package that is not installed ({error}); for s3:// "
                             "install guardforge's s3 extra: pip install -e \".[s3]\"") from None
    except ValueError as error:  # an unknown protocol
        raise InvalidRequest(f"outputs URL {text!r}: {error}") from None
    if isinstance(fs, LocalFileSystem):
        return LocalFolder(Path(root))
    return FsspecFolder(fs, root)
