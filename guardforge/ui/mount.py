"""The UI mounted in the FastAPI app: Gradio's cache in a folder of its own under the guardforge home, Gradio's
path checks on, and its file route serving that folder and nothing else."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from guardforge.server.schemas import route_path

UI_PATH = "/ui"
UI_CACHE = "ui-cache"  # under the guardforge home

# Gradio's file routes: /gradio_api/file=<path> and its older spelling /gradio_api/file/<path>.
_FILE_ROUTE = re.compile(r"(?:gradio_api/+)?file(?:=|/)(.*)", re.S)


class UICache:
    """This server's folder for Gradio's uploads and shown images, under <home>/ui-cache/: private to the server's
    user, held by a lock while the server runs, removed when it stops.

    Servers sharing one home (several behind a proxy, a test beside a running server) each keep their own
    folder; the next to start removes the folders of servers that died without cleaning up, known by their
    lock being free."""

    def __init__(self, home: Path):
        self.root = Path(home) / UI_CACHE
        # exist_ok and chmod: a removal that partly failed, or a link in its place, must not stop the server.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        with open(self.root / ".lock", "a") as guard:
            _lock(guard, wait=True)  # one server at a time cleans and creates
            self._remove_leftovers()
            token = secrets.token_hex(8)
            self._held = open(self.root / f"{token}.lock", "a")
            _lock(self._held, wait=False)
            self.path = self.root / token
            self.path.mkdir(mode=0o700)

    def _remove_leftovers(self) -> None:
        running = set()
        for lock in self.root.glob("*.lock"):
            if lock.name == ".lock" or fcntl is None:  # Windows: no locks, so every folder counts as running
                running.add(lock.stem)
                continue
            with open(lock, "a") as handle:
                try:
                    _lock(handle, wait=False)
                except BlockingIOError:
                    running.add(lock.stem)
        for entry in self.root.iterdir():
            if entry.name == ".lock" or entry.name.removesuffix(".lock") in running:
                continue
            # A dead server's folder and lock, or what an older guardforge kept directly in the cache.
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove every upload and every image the UI showed."""
        shutil.rmtree(self.path, ignore_errors=True)
        (self.root / f"{self.path.name}.lock").unlink(missing_ok=True)
        self._held.close()  # and with it the lock


def _lock(handle, wait: bool) -> None:
    """An exclusive lock on the open file; BlockingIOError if another process holds it and not `wait`."""
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


class CacheFilesOnly:
    """ASGI middleware: Gradio's file routes under `prefix` answer 403 for any path outside `cache`.

    Gradio would also serve its allowed and static paths and a cached-examples folder in the working directory;
    the UI needs none of them, and the cache holds everything it shows."""

    def __init__(self, app, prefix: str, cache: Path):
        self.app = app
        self.prefix = prefix.rstrip("/") + "/"
        self.cache = os.path.realpath(cache)

    def _refused(self, scope) -> bool:
        path = route_path(scope)
        if not path.startswith(self.prefix):
            return False
        match = _FILE_ROUTE.fullmatch(path[len(self.prefix):].lstrip("/"))
        if match is None:
            return False
        try:
            target = os.path.realpath(os.path.abspath(match.group(1)))  # as Gradio resolves it, symlinks followed
        except (ValueError, OSError):  # a NUL byte (file=%00) or a name the OS refuses: no file to serve
            return True
        return os.path.commonpath([self.cache, target]) != self.cache

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._refused(scope):
            from starlette.responses import PlainTextResponse

            response = PlainTextResponse("Not served: the UI serves only its own uploads and images", 403)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def mount_ui(app, studio, rate_limit: Callable[[str], None] | None,
             auth: Callable[[str, str], Awaitable[bool]] | None):
    """`app` with the UI at /ui. Call once per process: Gradio reads its cache folder from GRADIO_TEMP_DIR."""
    import gradio as gr

    from guardforge.ui.app import build_ui
    from guardforge.ui.uploads import uploads_only

    settings = studio.settings
    ui_cache = UICache(settings.home)
    cache = ui_cache.path
    # Gradio has no other setting for it: each component reads it when built, the upload route when mounted, and
    # the path check on every event. Without it, the cache is /tmp/gradio, shared with every Gradio app on the
    # machine and never cleaned.
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    ui = build_ui(studio, rate_limit=rate_limit)
    uploads_only(ui)
    app = gr.mount_gradio_app(
        # Nothing allowed beyond the cache, and no block list: CacheFilesOnly serves the cache alone (stricter than
        # any list), inputs must come from the upload folder, and Gradio's refusal of a blocked path would name
        # every blocked folder of this server to whoever tried one.
        app, ui, path=UI_PATH, auth=auth, allowed_paths=[], blocked_paths=[],
        max_file_size=settings.server.max_body_bytes,
        # Gradio's run history keeps prompts and images in the browser and offers to copy them to a Hugging Face
        # bucket: neither belongs in a self-hosted studio behind keys.
        run_history=False, footer_links=["api", "settings"],
    )
    # Gradio checks that an input file was uploaded (and not a path the client wrote) only in an app it
    # launched itself: `_check_allowed` returns at once while has_launched is false, as it stays when mounted.
    ui.has_launched = True
    app.add_middleware(CacheFilesOnly, prefix=UI_PATH, cache=cache)
    app.state.ui_cache = ui_cache  # closed when the server stops (server/app.py)
    return app
