"""The UI mounted in the FastAPI app: Gradio's cache in a folder of its own under the guardforge home, Gradio's
path checks on, and its file route serving that folder and nothing else."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

UI_PATH = "/ui"
UI_CACHE = "ui-cache"  # under the guardforge home

# Gradio's file routes: /gradio_api/file=<path> and its older spelling /gradio_api/file/<path>.
_FILE_ROUTE = re.compile(r"(?:gradio_api/+)?file(?:=|/)(.*)", re.S)


def ui_cache_dir(settings) -> Path:
    return Path(settings.home) / UI_CACHE


def clear_ui_cache(settings) -> None:
    """Remove every upload and every image the UI showed: done when the server starts and when it stops."""
    shutil.rmtree(ui_cache_dir(settings), ignore_errors=True)


def prepare_ui_cache(settings) -> Path:
    """The UI cache, emptied and readable by the server's user alone."""
    cache = ui_cache_dir(settings)
    clear_ui_cache(settings)  # a crash leaves uploads behind: the next start removes them
    # exist_ok: a removal that partly failed (a file another user owns, a mount point) must not stop the server;
    # and the mode is set again, since mkdir's applies only to a folder it creates.
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    cache.chmod(0o700)
    return cache


class CacheFilesOnly:
    """ASGI middleware: Gradio's file routes under `prefix` answer 403 for any path outside `cache`.

    Gradio would also serve its allowed and static paths and a cached-examples folder in the working directory;
    the UI needs none of them, and the cache holds everything it shows."""

    def __init__(self, app, prefix: str, cache: Path):
        self.app = app
        self.prefix = prefix.rstrip("/") + "/"
        self.cache = os.path.realpath(cache)

    def _refused(self, scope) -> bool:
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root + "/"):  # behind a proxy's prefix: the route is what follows it
            path = path[len(root):]
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
    cache = prepare_ui_cache(settings)
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
    return app
