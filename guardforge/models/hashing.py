"""SHA-256 of model files and folders, cached on disk by path, size and mtime so it is computed once."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

# Files that hold weights. A diffusers folder's hash covers these and nothing else (configs, tokenizers
# and READMEs are left out), so two folders with the same weights share a hash as two copies of a
# single file do.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")

_CHUNK = 1 << 20


def weight_files(folder: Path) -> list[Path]:
    """The weight files under a diffusers folder, sorted by their relative POSIX path (a stable order)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def legacy_hash(path: Path) -> str:
    """A1111's old model hash (8 hex digits): SHA-256 of the 64 KiB at 1 MiB into the file. Collision-prone, and
    still what A1111's merge recipes record beside the sha256, as `legacy_hash`."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def sha256_folder(folder: Path) -> str:
    """One digest over a diffusers folder's weights.

    For each weight file in sorted relative-path order, the digest is fed the relative POSIX path in
    UTF-8, one NUL byte, then the file's bytes. Renaming, adding, removing or changing a weight file
    changes the hash; moving the whole folder does not.
    """
    digest = hashlib.sha256()
    for path in weight_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    return sha256_folder(path) if path.is_dir() else sha256_file(path)


def stamp(path: Path) -> str:
    """What must not change for a cached hash to stay valid: size and mtime of the file(s) hashed."""
    if path.is_dir():
        parts = []
        for p in weight_files(path):
            st = p.stat()
            parts.append(f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class HashCache:
    """A JSON file mapping absolute paths to {stamp, sha256}; shared by processes, written atomically."""

    def __init__(self, file: Path):
        self.file = file
        self._lock = threading.Lock()
        self._memory: dict[str, dict[str, str]] = {}
        self._read_mtime: int | None = None

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _sync(self) -> None:
        # Re-read only when the file changed: another process (a CLI `models hash`, say) may have added to it.
        try:
            mtime = self.file.stat().st_mtime_ns
        except OSError:
            return
        if mtime != self._read_mtime:
            self._memory = self._read()
            self._read_mtime = mtime

    def lookup(self, path: Path) -> str | None:
        """The cached hash if the file is unchanged since it was hashed; never computes one."""
        key = str(path.resolve())
        with self._lock:
            self._sync()
            record = self._memory.get(key)
        if record and record.get("stamp") == stamp(path):
            return record.get("sha256")
        return None

    def compute(self, path: Path) -> str:
        """The hash, from the cache if still valid, else computed and stored."""
        known = self.lookup(path)
        if known:
            return known
        current = stamp(path)
        value = sha256_path(path)
        key = str(path.resolve())
        with self._lock:
            # Merge with what other processes wrote, then replace the file in one step.
            data = self._read()
            data[key] = {"stamp": current, "sha256": value}
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.file)
            self._memory = data
            self._read_mtime = self.file.stat().st_mtime_ns
        return value
