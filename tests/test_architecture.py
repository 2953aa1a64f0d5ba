"""The layering rules of ../shared/DESIGN.md that code review keeps missing, checked on the code and on a live server.

- Interfaces are one Studio call deep: no route or UI handler reaches into the Studio's parts (its job queue,
  progress events, workers or model registry).
- No database call on the event loop: a route that reads or writes the database runs in the thread pool (a plain
  `def` route, or `run_in_threadpool`), or one stalled write (SQLite's busy timeout is 30 s) freezes every request.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import threading
from pathlib import Path

import httpx
import pytest

from tests.livesrv import make_home
from tests.test_server_hardening import InProcessServer

PACKAGE = Path(__file__).resolve().parent.parent / "guardforge"
STUDIO_PARTS = {"jobs", "events", "workers", "registry"}


def reaches_into_studio(node: ast.AST) -> bool:
    """`studio.jobs`, `self.studio.events`, `request.app.state.studio.workers`, ...: a part of a Studio."""
    if not (isinstance(node, ast.Attribute) and node.attr in STUDIO_PARTS):
        return False
    owner = node.value
    return (isinstance(owner, ast.Name) and owner.id == "studio") or (
        isinstance(owner, ast.Attribute) and owner.attr == "studio")


def test_interfaces_are_one_studio_call_deep():
    found = []
    for folder in ("server", "ui"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if reaches_into_studio(node):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} studio.{node.attr}")
    assert not found, "routes and UI handlers call Studio methods, not its parts:\n" + "\n".join(found)


def test_the_check_sees_what_it_forbids():
    tree = ast.parse("request.app.state.studio.jobs.get(x)\nstudio.events.latest(x)\nstudio.job(x)\n")
    assert sum(reaches_into_studio(node) for node in ast.walk(tree)) == 2


def png_b64() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def watched(tmp_path_factory, tiny_model_dir):
    """An open server with a worker, and every SQL statement it runs that ran on the event loop's thread."""
    from sqlalchemy import event

    from guardforge.settings import Settings
    from guardforge.studio import Studio

    home = make_home(tmp_path_factory.mktemp("loop"), tiny_model_dir)
    studio = Studio(Settings(home=home, default_model="tiny-sd", device="cpu", guard={"policy": "off"}))
    on_loop: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        try:
            asyncio.get_running_loop()  # raises in any thread that is not running an event loop
        except RuntimeError:
            return
        on_loop.append(f"{threading.current_thread().name}: {statement.split()[0]} ... {statement[-60:]}")

    event.listen(studio.jobs.engine, "before_cursor_execute", record)
    with InProcessServer(studio, start_workers=True) as server:
        yield server, on_loop


def test_no_route_calls_the_database_on_the_event_loop(watched):
    server, on_loop = watched
    small = {"steps": 1, "width": 16, "height": 16, "seed": 1}
    with httpx.Client(base_url=server.url, timeout=300) as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **small, "save_images": True})
        assert answer.status_code == 200, answer.text
        client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png_b64()], **small})
        job = client.post("/v1/jobs", json={"prompt": "a blue square", **small}).json()["id"]
        with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
            for _ in stream.iter_lines():
                pass
        done = client.get(f"/v1/jobs/{job}").json()
        assert done["state"] == "succeeded", done
        assert client.get(done["images"][0]["url"]).status_code == 200
        client.get("/v1/jobs")
        queued = client.post("/v1/jobs", json={"prompt": "to cancel", **small}).json()["id"]
        client.delete(f"/v1/jobs/{queued}")
        for path in ("/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/sd-models", "/sdapi/v1/loras",
                     "/sdapi/v1/sd-vae", "/v1/models", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path
        for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/refresh-checkpoints"):
            assert client.post(path).status_code == 200, path
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd"}).status_code == 200
        assert client.post("/v1/moderations", json={"input": "hello"}).status_code == 200
    assert not on_loop, "database calls on the event loop:\n" + "\n".join(on_loop)
