"""The web UI takes uploads only: no input may name a file on the server, nothing outside Gradio's own cache is
served, and an uploaded image's size is checked from its header before any pixel is decoded."""

from __future__ import annotations

import json
import secrets
import struct
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from guardforge.ui.controlnet_panel import units_off
from tests.ui_inputs import BATCH_OFF, HIRES_OFF, INPAINT_OFF, REFINER_OFF, SEED_EXTRAS_OFF, img2img_off, txt2img_off
from tests.livesrv import LiveServer, make_home, server_env
from tests.test_server import wait_state

# The txt2img/img2img/inpaint handlers' inputs after the prompt: negative, model, sampler, schedule, steps, cfg,
# width, height, seed; then init image, strength, inpaint editor.
FIELDS = ("", "tiny-sd", "Automatic", "Euler a", "Automatic", 2, 7, 64, 64, 1)
# As the reviewer's call: strength 0.05 of 20 steps, one step, a near copy of the image it starts from.
COPY_FIELDS = ("", "tiny-sd", "Automatic", "Euler a", "Automatic", 20, 7, 64, 64, 1)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_model_dir):
    """A server that requires keys, with two keys; A has made one image through the API."""
    from guardforge.access.keys import KeyStore
    from guardforge.db import Database

    home = make_home(tmp_path_factory.mktemp("ui-security"), tiny_model_dir)
    env = server_env(home, GUARDFORGE_SERVER__REQUIRE_AUTH="true")
    store = KeyStore(Database(f"sqlite:///{home / 'guardforge.db'}"))
    keys = {name: store.create(name)[1] for name in ("a", "b")}
    live = LiveServer(home, env, ui=True).start()
    private = f"A's private prompt {secrets.token_hex(4)}"
    with httpx.Client(base_url=live.url, timeout=120, headers={"Authorization": f"Bearer {keys['a']}"}) as a:
        job_id = a.post("/v1/jobs", json={"prompt": private, "steps": 2, "width": 64, "height": 64}).json()["id"]
        assert wait_state(a, job_id, {"succeeded", "failed"})["state"] == "succeeded"
    [a_png] = [p for p in (home / "outputs").rglob("*.png")]
    yield live, keys, a_png, private
    live.stop()


def server_path(path: Path) -> dict:
    """What a client sends to name a file on the server instead of uploading one."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


@contextmanager
def browser(live, key: str):
    """An HTTP client logged into /ui as `key`."""
    with httpx.Client(base_url=live.url, timeout=120) as session:
        assert session.post("/ui/login", data={"username": key.split("_")[1], "password": key}).status_code == 200
        yield session


def call(live, key: str, api_name: str, *data) -> tuple[str, object]:
    """One call through Gradio's REST API (POST /call/<name>, then its event stream): ("complete", outputs)
    or ("error", message). Not gradio_client: it uploads any path it can read, which a remote caller can't."""
    with browser(live, key) as session:
        posted = session.post(f"/ui/gradio_api/call/{api_name}", json={"data": list(data)})
        assert posted.status_code == 200, posted.text
        stream = session.get(f"/ui/gradio_api/call/{api_name}/{posted.json()['event_id']}").text
    kind, payload = None, None
    for line in stream.splitlines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: ") and kind in ("complete", "error"):
            payload = json.loads(line[len("data: "):])
    return kind, payload


def b_jobs(live, keys) -> list:
    response = httpx.get(f"{live.url}/v1/jobs", headers={"Authorization": f"Bearer {keys['b']}"}, timeout=30)
    return response.json()["jobs"]


def test_png_info_refuses_a_server_path(keyed):
    live, keys, a_png, private = keyed
    kind, answer = call(live, keys["b"], "read_png", server_path(a_png))
    assert private not in json.dumps(answer)  # the reviewer's call got A's infotext back
    assert kind == "error" and "upload" in str(answer), (kind, answer)


def test_img2img_refuses_a_server_path(keyed):
    live, keys, a_png, _ = keyed
    kind, answer = call(live, keys["b"], "run_mode_1", "copy", *COPY_FIELDS, server_path(a_png), 0.05, None,
                        *img2img_off())
    assert kind == "error" and "upload" in str(answer), (kind, answer)
    editor = {"background": server_path(a_png), "layers": [server_path(a_png)], "composite": None}
    kind, answer = call(live, keys["b"], "run_mode_2", "copy", *COPY_FIELDS, None, 0.05, editor, *INPAINT_OFF)
    assert kind == "error" and "upload" in str(answer), (kind, answer)
    kind, answer = call(live, keys["b"], "upscale_image", server_path(a_png), "Lanczos", 2, "None", 0, "Scale by",
                        64, 64, True)
    assert kind == "error" and "upload" in str(answer), (kind, answer)
    # A ControlNet unit's image, in the generation and in its preview, is an upload too.
    units = units_off()
    units[1] = server_path(a_png)
    kind, answer = call(live, keys["b"], "run_mode", "copy", *COPY_FIELDS, None, 0.05, None, *SEED_EXTRAS_OFF,
                        *HIRES_OFF, *REFINER_OFF, *BATCH_OFF, *units)
    assert kind == "error" and "upload" in str(answer), (kind, answer)
    kind, answer = call(live, keys["b"], "run_preview", *units[:13])
    assert kind == "error" and "upload" in str(answer), (kind, answer)
    assert b_jobs(live, keys) == []  # nothing was made from A's image


def cache_candidates(live) -> list[Path]:
    """Where Gradio keeps its cache: its default under the system temp folder, or ours under the home."""
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder()), live.home / "ui-cache"]


def test_a_refused_path_leaves_no_copy_to_fetch(keyed, tmp_path):
    from gradio.processing_utils import hash_file

    live, keys, _, _ = keyed
    secret = tmp_path / "secret.txt"
    secret.write_text(f"not for the web {secrets.token_hex(8)}\n")
    assert call(live, keys["b"], "read_png", server_path(secret))[0] == "error"
    # The reviewer found the refused file copied into Gradio's cache, and served from there.
    copies = [folder / hash_file(secret) / secret.name for folder in cache_candidates(live)]
    with browser(live, keys["b"]) as session:
        served = {str(copy): session.get(f"/ui/gradio_api/file={copy}") for copy in copies}
    assert {path: r.text for path, r in served.items() if r.status_code == 200} == {}
    assert [copy for copy in copies if copy.exists()] == []


def test_file_route_serves_no_output_nor_server_file(keyed, tmp_path):
    live, keys, a_png, _ = keyed
    outside = tmp_path / "outside.png"
    outside.write_bytes(a_png.read_bytes())
    cache = live.home / "ui-cache"
    paths = [a_png, live.home / "guardforge.db", outside, Path("/etc/hostname"), cache / ".." / "guardforge.db"]
    with browser(live, keys["b"]) as session:
        for path in paths:
            for route in (f"/ui/gradio_api/file={path}", f"/ui/gradio_api/file/{path}"):
                response = session.get(route)
                assert response.status_code in (403, 404), (route, response.status_code)


def bomb_png(path: Path, side: int = 13000) -> Path:
    """A grey PNG side x side (169 M pixels at 13000) that compresses to ~164 KB: written row by row, so this
    test never holds its pixels either."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, body = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        body.append(packer.compress(row))
    body.append(packer.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_oversized_upload_is_refused_before_decoding(keyed, tmp_path):
    live, keys, _, _ = keyed
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 300_000
    with browser(live, keys["b"]) as session:  # a real upload, as the browser and handle_file make
        uploaded = session.post("/ui/gradio_api/upload", files={"files": ("bomb.png", bomb.read_bytes())}).json()[0]
    image = {"path": uploaded, "orig_name": "bomb.png", "meta": {"_type": "gradio.FileData"}}
    before = peak_rss_mb(live.process.pid)
    started = time.monotonic()
    calls = {
        "img2img": ("run_mode_1", "x", *FIELDS, image, 0.5, None, *img2img_off()),
        "inpaint": ("run_mode_2", "x", *FIELDS, None, 0.5, {"background": image, "layers": [], "composite": None},
                    *INPAINT_OFF),
        "PNG info": ("read_png", image),
        "Extras": ("upscale_image", image, "Lanczos", 2, "None", 0, "Scale by", 64, 64, True),
    }
    for name, (api_name, *data) in calls.items():
        kind, answer = call(live, keys["b"], api_name, *data)
        assert kind == "error" and "13000x13000" in str(answer) and "limit" in str(answer), (name, kind, answer)
    # Decoding it would take 169 MB as grey and 507 MB as RGB: the reviewer saw 1.79 -> 2.86 GB.
    grown = peak_rss_mb(live.process.pid) - before
    assert grown < 100, f"the server's peak memory grew by {grown:.0f} MB"
    assert time.monotonic() - started < 30
    assert b_jobs(live, keys) == []


def test_no_input_downloads_a_url(keyed):
    """Gradio looks for file values in every input and downloads an http(s) URL it finds there: a Dropdown's
    value made the server resolve the reviewer's host (this sandbox has no network, so the DNS error was the
    evidence). Refused before any lookup; nothing is written to the cache."""
    live, keys, _, _ = keyed
    cache = live.home / "ui-cache"
    before = set(cache.iterdir())
    url = {"path": "https://example.invalid/x.png", "meta": {"_type": "gradio.FileData"}}
    for api_name, data in (("sizes_for", [url]), ("reuse", [url]),
                           ("run_mode", ["x", url, *FIELDS[1:], None, 0.5, None, *txt2img_off()])):
        kind, answer = call(live, keys["b"], api_name, *data)
        assert kind == "error" and "upload" in str(answer), (api_name, kind, answer)
        assert "resolve" not in str(answer).lower(), answer
    assert set(cache.iterdir()) == before


def test_the_canvas_blob_route_takes_only_what_the_editor_paints(keyed):
    """Gradio's accept_blobs took any layer index (it grew a list to that length: index 10**9 asked for 8 GB),
    any blob type, and answered a call without a file with a 500."""
    live, keys, a_png, _ = keyed
    with browser(live, keys["b"]) as session:
        config = session.get("/ui/config").json()
        editor = next(c["id"] for c in config["components"] if c.get("type") == "imageeditor")

        def blob(files=True, **fields):
            form = {"component_id": str(editor), "session_hash": "canvas", "fn_name": "accept_blobs", "id": "edit-1",
                    **{k: str(v) for k, v in fields.items()}}
            # A multipart form either way: a field without a file name is not a file.
            attached = {"file": ("blob", a_png.read_bytes(), "image/png")} if files else {"note": (None, "no file")}
            return session.post("/ui/gradio_api/component_server", data=form, files=attached)

        assert blob(type="layer", index=0).status_code == 200
        for fields, needle in (({"type": "layer", "index": 10**9}, "out of range"),
                               ({"type": "layer", "index": -1}, "out of range"),
                               ({"type": "layer", "index": "x"}, "index"),
                               ({"type": "script", "index": 0}, "background, layer or composite")):
            answer = blob(**fields)
            assert answer.status_code == 422 and needle in answer.text, (fields, answer.status_code, answer.text)
        answer = blob(files=False, type="background", index="null")
        assert answer.status_code == 422, (answer.status_code, answer.text)


def test_pending_canvas_blobs_stay_within_their_budget():
    """Blobs wait in memory under ids the browser picks until the edit is submitted: an id never submitted
    stayed forever. The oldest edits go once the pending ones pass the budget."""
    from gradio.components.image_editor import AcceptBlobs

    from guardforge.ui.uploads import UploadedImageEditor

    editor = UploadedImageEditor(type="pil")
    editor.blob_budget_bytes = 2500
    for edit in range(5):
        editor.accept_blobs(AcceptBlobs(data={"type": "background", "index": None, "id": f"e{edit}", "file": b""},
                                        files=[("blob", bytes(1000))]))
    assert list(editor.blob_storage) == ["e3", "e4"]


def test_file_route_refuses_a_nul_byte_without_a_500(keyed):
    """os.path.realpath raises on a NUL byte: the reviewer's file=%00 got a 500, before any login."""
    live, keys, _, _ = keyed
    for route in ("/ui/gradio_api/file=%00", "/ui/gradio_api/file/x%00y", "/ui/gradio_api/file=/etc/%00hostname"):
        response = httpx.get(live.url + route, timeout=30)
        assert response.status_code == 403 and "Not served" in response.text, (route, response.status_code)


def test_a_cache_that_could_not_be_emptied_still_starts_private(tmp_path):
    """rmtree(ignore_errors=True) can leave the folder behind (here: the cache is a link rmtree refuses to
    follow); mkdir then raised FileExistsError and the server did not start."""
    from guardforge.ui.mount import UICache

    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    (tmp_path / "ui-cache").symlink_to(target)
    cache = UICache(tmp_path)
    assert cache.path.is_dir() and cache.path.stat().st_mode & 0o777 == 0o700
    cache.close()


def test_servers_sharing_a_home_keep_their_caches_and_a_dead_ones_is_removed(tmp_path):
    """One server's stop emptied the whole ui-cache, uploads of another server on the same home included."""
    import subprocess
    import sys

    from guardforge.ui.mount import UICache

    script = ("import sys, time; from pathlib import Path; from guardforge.ui.mount import UICache; "
              "c = UICache(Path(sys.argv[1])); (c.path / 'upload.png').write_bytes(b'x'); print(c.path, flush=True); "
              "time.sleep(600)")
    other = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    dead = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        other_path, dead_path = Path(other.stdout.readline().strip()), Path(dead.stdout.readline().strip())
        dead.kill()  # SIGKILL: no chance to clean up
        dead.wait()
        mine = UICache(tmp_path)
        (mine.path / "mine.png").write_bytes(b"y")
        assert (other_path / "upload.png").is_file()  # a running server's uploads stay
        assert not dead_path.exists()  # a dead one's go
        mine.close()
        assert not mine.path.exists() and (other_path / "upload.png").is_file()
    finally:
        other.kill()
        dead.kill()


def test_the_cache_is_the_homes_and_leaves_with_the_server(keyed, tmp_path):
    """Last in this module: it stops the server."""
    live, keys, a_png, _ = keyed
    with browser(live, keys["b"]) as session:
        uploaded = Path(session.post("/ui/gradio_api/upload",
                                     files={"files": ("mine.png", a_png.read_bytes())}).json()[0])
    cache = live.home / "ui-cache"
    # Not /tmp/gradio, which every Gradio app on the machine shares and nothing cleans.
    assert uploaded.resolve().is_relative_to(cache.resolve()) and uploaded.is_file()
    assert cache.stat().st_mode & 0o777 == 0o700
    live.stop()
    assert not uploaded.exists()  # uploads and shown images leave with the server
    assert [path.name for path in cache.iterdir()] == [".lock"]
