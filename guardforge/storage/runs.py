"""Training runs kept in a store: a run folder copied up when its run ends, its checkpoints fetched back to resume."""

from __future__ import annotations

from pathlib import Path

from guardforge.errors import InvalidRequest


class RunMirror:
    """Mirrors run folders under `runs_dir` to the same relative place under an fsspec URL.

    Lightning writes checkpoints and logs to the node's local run folder while it trains (a crash leaves them
    there as today); the folder is copied up when the run ends or is stopped, so that a resume on another node
    starts from the store. Runs outside `runs_dir` (a CLI run in a folder of its own) are not mirrored."""

    def __init__(self, url: str, options: dict | None, runs_dir: Path):
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except ImportError as error:
            raise InvalidRequest(f"training URL {url!r} needs a package that is not installed ({error}); for "
                                 "s3:// install guardforge's s3 extra: pip install -e \".[s3]\"") from None
        self.root = root.rstrip("/")
        self.runs_dir = Path(runs_dir)

    def remote_of(self, output_dir: Path) -> str | None:
        """The store path of a run folder, or None for a folder outside runs_dir. Both sides are resolved, so
        the relative path has no '..' and cannot climb out of the store's prefix."""
        try:
            relative = Path(output_dir).resolve().relative_to(self.runs_dir.resolve())
        except ValueError:
            return None
        return f"{self.root}/{relative.as_posix()}" if relative.parts else None

    def push(self, output_dir: Path) -> int:
        """Copy every file of the run folder up (whole objects, replacing older copies); how many went."""
        remote = self.remote_of(output_dir)
        if remote is None:
            return 0
        files = [path for path in Path(output_dir).rglob("*") if path.is_file()]
        for path in files:
            self.fs.put_file(str(path), f"{remote}/{path.relative_to(output_dir).as_posix()}")
        return len(files)

    def has_checkpoints(self, output_dir: Path) -> bool:
        return bool(self._checkpoints(output_dir))

    def pull_checkpoints(self, output_dir: Path) -> int:
        """Fetch the run's checkpoints into a local run folder that has none (a node that never ran it); how many
        came. A folder with checkpoints of its own keeps them: they are this node's newest."""
        local = Path(output_dir) / "checkpoints"
        if any(local.glob("*.ckpt")):
            return 0
        found = self._checkpoints(output_dir)
        local.mkdir(parents=True, exist_ok=True)
        for remote in found:
            self.fs.get_file(remote, str(local / remote.rsplit("/", 1)[1]))
        return len(found)

    def _checkpoints(self, output_dir: Path) -> list[str]:
        remote = self.remote_of(output_dir)
        if remote is None:
            return []
        self.fs.invalidate_cache(f"{remote}/checkpoints")
        try:
            names = self.fs.ls(f"{remote}/checkpoints", detail=False)
        except FileNotFoundError:
            return []
        return [name for name in names if name.endswith(".ckpt")]
