"""The model registry: what is in the A1111-style models folder and the package, by name and by hash."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Literal

from guardforge.errors import ModelNotFound, PathEscape
from guardforge.models.families import Family, family_from_folder, family_of_file
from guardforge.models.hashing import HashCache, weight_files

if TYPE_CHECKING:
    from guardforge.settings import Settings

Kind = Literal["checkpoint", "lora", "vae", "controlnet", "embedding", "upscaler", "ipadapter", "clip_vision"]
Format = Literal["diffusers", "single_file"]
Source = Literal["user", "shipped"]

# A1111's folder names under models/, one per kind.
KIND_FOLDERS: dict[Kind, str] = {
    "checkpoint": "Stable-diffusion",
    "lora": "Lora",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "embedding": "embeddings",  # textual inversion (A1111 keeps it beside models/; sdnext inside, as here)
    "upscaler": "ESRGAN",
    # IP-Adapter weights (single files) and the CLIP vision encoders they read images with (transformers
    # folders): sd-webui-controlnet keeps the former in ControlNet/, where they would pass for ControlNets here.
    "ipadapter": "ipadapter",
    "clip_vision": "clip_vision",
}
# Kinds A1111 spreads over more than one folder: its ESRGAN and Real-ESRGAN models are one kind here (one loader
# reads both), so a name from either folder works wherever an upscaler is asked for.
# sd-webui-controlnet keeps IP-Adapters among the ControlNets: a single file there whose name says ip-adapter (as
# all of h94's do) is an IP-Adapter, not a ControlNet.
MORE_KIND_FOLDERS: dict[Kind, tuple[str, ...]] = {"upscaler": ("RealESRGAN",), "ipadapter": ("ControlNet",)}
_IP_ADAPTER_NAME = re.compile(r"ip[-_]?adapter", re.IGNORECASE)
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
MODEL_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES

# The file that makes a folder a diffusers model of each kind (rather than a folder that groups models).
_FOLDER_MARKERS: dict[Kind, tuple[str, ...]] = {
    "checkpoint": ("model_index.json",),
    "lora": ("pytorch_lora_weights.safetensors", "adapter_config.json"),
    "vae": ("config.json",),
    "controlnet": ("config.json",),
    "embedding": (),  # single files only: a folder groups them
    "upscaler": (),  # single files only: every subfolder groups models
    "ipadapter": (),  # single files only
    "clip_vision": ("config.json",),
}
_FORCED_RESCAN_INTERVAL_S = 1.0
# "name [abcdef0123]" is how A1111 clients spell a checkpoint (sd_model_checkpoint, infotext).
_A1111_TITLE = re.compile(r"^(?P<name>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,64})\]$")


def shipped_models_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "models"


def shipped_controlnet_dir() -> Path:
    """ControlNets the package ships (diffusers folders), e.g. tiny-shapes-canny for the shipped tiny-shapes."""
    return Path(__file__).resolve().parent.parent / "assets" / "controlnet"


@dataclass
class ModelEntry:
    """One model on disk. Its sha256 is computed on first request, then kept in memory and on disk."""

    name: str
    path: Path
    kind: Kind
    format: Format
    family: Family
    source: Source
    _hashes: HashCache | None = field(default=None, repr=False, compare=False)
    _sha256: str | None = field(default=None, repr=False, compare=False)
    _signature: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def is_pickle(self) -> bool:
        return self.format == "single_file" and self.path.suffix.lower() in PICKLE_SUFFIXES

    def sha256(self) -> str:
        if self._sha256 is None:
            if self._hashes is None:
                from guardforge.models.hashing import sha256_path

                self._sha256 = sha256_path(self.path)
            else:
                self._sha256 = self._hashes.compute(self.path)
        return self._sha256

    def short_hash(self) -> str:
        """A1111's short hash (its "sha256" model hash): the first 10 hex digits of the file's SHA-256."""
        return self.sha256()[:10]

    @property
    def short_hash_if_known(self) -> str | None:
        """The short hash without hashing anything: from memory or the on-disk cache, else None."""
        if self._sha256 is None and self._hashes is not None:
            self._sha256 = self._hashes.lookup(self.path)
        return self._sha256[:10] if self._sha256 else None

    @property
    def filename(self) -> str:
        return self.path.name


def check_name(name: str) -> None:
    """Refuse names that would leave the models folder: absolute paths, drive letters, `..` parts."""
    if not name or "\0" in name:
        raise PathEscape(f"invalid model name {name!r}")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.root or ".." in pure.parts:
            raise PathEscape(f"model name {name!r} leaves the models folder; use a name from `guardforge models list`")


def _signature(path: Path) -> tuple[int, ...]:
    # Size and mtime of the file (or of a folder's model_index.json / config and of every weight file in it):
    # a model saved again under the same name, even one component of it, gets a fresh entry, so no stale
    # family, in-memory hash or loaded pipeline survives the rewrite.
    probes = [path]
    if path.is_dir():
        probes = [next((path / m for m in ("model_index.json", "config.json") if (path / m).exists()), path),
                  *weight_files(path)]
    try:
        stats = [probe.stat() for probe in probes]
    except OSError:
        return ()
    return tuple(value for st in stats for value in (st.st_size, st.st_mtime_ns))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


class ModelRegistry:
    """Scans settings.resolved_models_dir (A1111 layout) and the shipped models; rescans when folders change.

    list() and resolve() only stat the folders seen at the last scan and rescan when one of their mtimes
    changed (a file added, removed or renamed in it), so a model saved while the server runs is found on
    the next request without a restart.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.resolved_models_dir
        self.shipped_root = shipped_models_dir()
        self.shipped_controlnet_root = shipped_controlnet_dir()
        self.hashes = HashCache(settings.home / "cache" / "hashes.json")
        self._lock = threading.Lock()
        self._entries: list[ModelEntry] = []
        self._by_path: dict[Path, ModelEntry] = {}
        self._seen: dict[Path, int | None] = {}
        self._last_forced = float("-inf")

    # -- scanning -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan now."""
        with self._lock:
            self._scan()

    def _stale(self) -> bool:
        if not self._seen:
            return True
        for folder, mtime in self._seen.items():
            try:
                current: int | None = folder.stat().st_mtime_ns
            except OSError:
                current = None
            if current != mtime:
                return True
        return False

    def _ensure_fresh(self) -> None:
        with self._lock:
            if self._stale():
                self._scan()

    def _watch(self, folder: Path, seen: dict[Path, int | None]) -> None:
        try:
            seen[folder] = folder.stat().st_mtime_ns
        except OSError:
            seen[folder] = None

    def _scan(self) -> None:
        seen: dict[Path, int | None] = {}
        found: list[ModelEntry] = []
        self._watch(self.root, seen)
        for kind, folder_name in KIND_FOLDERS.items():
            for name in (folder_name, *MORE_KIND_FOLDERS.get(kind, ())):
                folder = self.root / name
                self._watch(folder, seen)
                if folder.is_dir():
                    self._scan_folder(folder, folder, kind, found, seen)
        taken = {(e.kind, e.name) for e in found}
        self._watch(self.shipped_root, seen)
        if self.shipped_root.is_dir():
            for path in sorted(self.shipped_root.iterdir()):
                # A user model of the same name wins: the user can replace a shipped model.
                if (path / "model_index.json").is_file() and ("checkpoint", path.name) not in taken:
                    found.append(self._entry(path.name, path, "checkpoint", "diffusers", "shipped"))
        self._watch(self.shipped_controlnet_root, seen)
        if self.shipped_controlnet_root.is_dir():
            for path in sorted(self.shipped_controlnet_root.iterdir()):
                if (path / "config.json").is_file() and ("controlnet", path.name) not in taken:
                    found.append(self._entry(path.name, path, "controlnet", "diffusers", "shipped"))
        self._entries = found
        self._by_path = {e.path: e for e in found}
        self._seen = seen

    def _scan_folder(self, base: Path, folder: Path, kind: Kind, found: list[ModelEntry],
                     seen: dict[Path, int | None]) -> None:
        for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if path.name.startswith("."):
                continue  # partial downloads, temp files of a save in progress
            rel = path.relative_to(base).as_posix()
            if path.is_dir():
                if path.is_symlink() and path.resolve() in {f.resolve() for f in (folder, *folder.parents)}:
                    continue  # a link to a folder above it would make the walk endless
                if any((path / marker).exists() for marker in _FOLDER_MARKERS[kind]):
                    found.append(self._entry(rel, path, kind, "diffusers", "user"))
                else:
                    # A1111 lets users group models in subfolders; the name keeps the subfolder.
                    self._watch(path, seen)
                    self._scan_folder(base, path, kind, found, seen)
            elif path.suffix.lower() in MODEL_SUFFIXES and not (path.parent / "config.json").exists() and (
                    base.name != KIND_FOLDERS["controlnet"]
                    or bool(_IP_ADAPTER_NAME.search(path.name)) == (kind == "ipadapter")):
                # (A weights file beside a config.json is one component of a diffusers folder, e.g. one
                # still being written before its model_index.json: not a checkpoint of its own.)
                found.append(self._entry(rel[: -len(path.suffix)], path, kind, "single_file", "user"))

    def _entry(self, name: str, path: Path, kind: Kind, fmt: Format, source: Source) -> ModelEntry:
        previous = self._by_path.get(path)
        if previous is not None and previous.kind == kind and previous._signature == _signature(path):
            return previous  # unchanged: keeps its detected family and any hash already computed
        if not _inside(path, self._root(source, kind)):
            family: Family = "unknown"  # a link out of the folder: listed, refused at resolve, never read
        elif fmt == "diffusers":
            family = family_from_folder(path)
        else:
            family = family_of_file(path)
        return ModelEntry(name=name, path=path, kind=kind, format=fmt, family=family, source=source,
                          _hashes=self.hashes, _signature=_signature(path))

    # -- queries ----------------------------------------------------------------------------------

    def list(self, kind: Kind | None = None) -> list[ModelEntry]:
        self._ensure_fresh()
        return [e for e in self._entries if kind is None or e.kind == kind]

    def names(self, kind: Kind | None = None) -> list[str]:
        return [e.name for e in self.list(kind)]

    def resolve(self, name: str, kind: Kind = "checkpoint") -> ModelEntry:
        """By name, by name with its extension, by A1111 title `name [hash]`, or by short/full sha256."""
        name = name.strip().replace("\\", "/")
        check_name(name)
        entry = self._find(name, kind)
        if entry is None and time.monotonic() - self._last_forced > _FORCED_RESCAN_INTERVAL_S:
            # The folder mtime check misses a file replaced in place; one forced rescan is cheap, but a
            # client asking for missing names in a loop must not turn into a rescan per request.
            self._last_forced = time.monotonic()
            self.refresh()
            entry = self._find(name, kind)
        if entry is None:
            # The folder inside the models folder: API callers read this, and the server's paths are its own.
            known = ", ".join(self.names(kind)) or f"none (put them in the models folder's {KIND_FOLDERS[kind]}/)"
            raise ModelNotFound(f"no {kind} named {name!r}; known: {known}")
        self._check_inside(entry)
        return entry

    def _find(self, name: str, kind: Kind) -> ModelEntry | None:
        candidates = self.list(kind)
        title = _A1111_TITLE.match(name)
        wanted = [name] + ([title.group("name")] if title else [])
        for want in wanted:
            # `m` may be both m.safetensors and m.ckpt (a converted pickle left beside its conversion):
            # the safe file wins; the pickle stays reachable by its file name.
            same = sorted((e for e in candidates if want == e.name), key=lambda e: e.is_pickle)
            if same:
                return same[0]
            for e in candidates:
                with_suffix = e.name + (e.path.suffix if e.format == "single_file" else "")
                if want == with_suffix or want == e.path.name:
                    return e
        hashes = [name.lower()] + ([title.group("hash").lower()] if title else [])
        for digest in hashes:
            if re.fullmatch(r"[0-9a-f]{8,64}", digest):
                for e in candidates:
                    known = e.short_hash_if_known and e.sha256()
                    if known and known.startswith(digest):
                        return e
        return None

    def _root(self, source: Source, kind: Kind) -> Path:
        if source == "user":
            return self.root
        return self.shipped_controlnet_root if kind == "controlnet" else self.shipped_root

    def _check_inside(self, entry: ModelEntry) -> None:
        root = self._root(entry.source, entry.kind)
        if not _inside(entry.path, root):
            raise PathEscape(
                f"{entry.name!r} is a link to {os.path.realpath(entry.path)}, outside {root}; "
                "move or copy the model into the models folder instead of linking it"
            )
