"""A live `guardforge serve` on loopback (open, no keys), driven by real clients: webuiapi, httpx, SSE."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.livesrv import LiveServer, make_home, read_events, server_env
from tests.test_imaging import ztxt_bomb_png

TINY = {"steps": 2, "width": 64, "height": 64, "seed": 7}
LONG = {"prompt": "a long job", "steps": 150, "n_iter": 8, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("serve"), tiny_model_dir)
    env = server_env(home, GUARDFORGE_LIMITS__MAX_STEPS="150", GUARDFORGE_SERVER__MAX_BODY_BYTES="200000")
    live = LiveServer(home, env).start()
    yield live
    live.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def png_b64(size=(64, 64), color=(200, 30, 30), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wait_state(client, job_id, states, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def wait_running_step(client, job_id, timeout=120):
    """Until the job has done at least one denoising step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"] and job["progress"]["step"] >= 1:
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError("the job never started stepping")


# -- A1111 API through the real webuiapi client -----------------------------------------------------
def test_webuiapi_txt2img(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)
    result = api.txt2img(prompt="a red square", negative_prompt="blur", seed=1234, width=64, height=64,
                         batch_size=2, cfg_scale=5,
                         override_settings={"sd_model_checkpoint": "tiny-sd"})
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    info = result.info
    assert info["all_seeds"] == [1234, 1235]
    assert info["seed"] == 1234 and info["sd_model_name"] == "tiny-sd"
    assert info["sd_model_hash"] and len(info["infotexts"]) == 2 and "Steps: 2" in info["infotexts"][0]
    assert info["guardforge"]["actions"] == ["allow", "allow"]
    assert result.parameters["prompt"] == "a red square"


def test_webuiapi_img2img_inpaint_and_listings(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, steps=2)
    init = Image.new("RGB", (64, 64), (20, 120, 220))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = api.img2img(images=[init], mask_image=mask, prompt="a patch", denoising_strength=0.6,
                         width=64, height=64, seed=3, inpainting_mask_invert=0)
    assert result.images[0].size == (64, 64) and result.info["seed"] == 3
    assert result.parameters["init_images"] is None  # A1111 leaves them out of `parameters`
    models = api.get_sd_models()
    assert models[0]["model_name"] == "tiny-sd" and models[0]["title"].startswith("tiny-sd [")
    assert models[0]["hash"] and len(models[0]["sha256"]) == 64
    assert "Euler a" in [s["name"] for s in api.get_samplers()]
    assert "karras" in [s["name"] for s in api.get_schedulers()]
    # webuiapi matches against titles ("name [hash]"); with two models a bare name is a fuzzy guess.
    api.util_set_model(models[0]["title"])
    assert api.util_get_current_model().startswith("tiny-sd")
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["current_image"] is None
    assert api.refresh_checkpoints() is None
    assert api.get_scripts() == {"txt2img": ["controlnet", "watermark", "x/y/z plot"],
                                 "img2img": ["poor man's outpainting", "controlnet", "watermark", "x/y/z plot"]}
    # The built-ins (an empty models/ESRGAN adds none): "None" first, as A1111 lists them.
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert api.get_latent_upscale_modes()[0] == {"name": "Latent"} and api.get_sd_vae() == []
    assert api.get_loras() == []


def test_webuiapi_png_info_reads_back_what_txt2img_wrote(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)
    made = api.txt2img(prompt="a png-info round trip", negative_prompt="blur", seed=99, width=64, height=48,
                       save_images=True)  # saved files carry their infotext
    read = api.png_info(made.image)
    assert read.info == made.info["infotexts"][0]
    parameters = read.parameters
    assert parameters["Prompt"] == "a png-info round trip" and parameters["Negative prompt"] == "blur"
    assert parameters["Seed"] == "99" and (parameters["Size-1"], parameters["Size-2"]) == ("64", "48")
    assert parameters["Sampler"] == "Euler a" and parameters["Steps"] == "2"


def test_png_info_reads_jpeg_exif_other_text_and_refuses_junk(client):
    from PIL.PngImagePlugin import PngInfo

    from guardforge.storage.outputs import user_comment

    text = "a lighthouse\nNegative prompt: fog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, " \
           "Seed: 42, Size: 512x768, Model: some-model"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = user_comment(text)  # where A1111 puts it in a JPEG
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "JPEG", exif=exif)
    answer = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["info"] == text and body["parameters"]["Schedule type"] == "Karras"
    assert (body["parameters"]["Size-1"], body["parameters"]["Size-2"]) == ("512", "768")

    # No infotext: empty info, A1111's parse of nothing; other text chunks are the items.
    info = PngInfo()
    info.add_text("Software", "an editor")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "PNG", pnginfo=info)
    body = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}).json()
    assert body["info"] == "" and body["items"] == {"Software": "an editor"}
    assert body["parameters"]["Prompt"] == ""

    junk = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"not an image").decode()})
    assert junk.status_code == 422 and "not a readable" in junk.json()["detail"]


def test_sdapi_progress_and_interrupt_while_running(server, client):
    done: dict = {}

    def call():
        payload = {"prompt": "interrupt me", "steps": 150, "n_iter": 8, "width": 64, "height": 64}
        done["response"] = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=payload, timeout=300)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = client.get("/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 1:
            break
        time.sleep(0.05)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 1200
    assert progress["eta_relative"] > 0
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(120)
    response = done["response"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    # As in A1111: the batch in progress ends early and is delivered; the seven batches after it never run.
    assert info["guardforge"]["interrupted"] and info["guardforge"]["state"] == "succeeded"
    assert len(response.json()["images"]) == 1 and info["all_seeds"][:1] == [info["seed"]]


def test_sdapi_skip_ends_one_batch_and_goes_on(server, client):
    done: dict = {}

    def call():
        payload = {"prompt": "skip one", "steps": 150, "n_iter": 2, "width": 64, "height": 64, "seed": 5}
        done["response"] = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=payload, timeout=300)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
        time.sleep(0.05)
    assert client.post("/sdapi/v1/skip").status_code == 200
    assert client.get("/sdapi/v1/progress").json()["state"]["skipped"]
    thread.join(300)
    response = done["response"]
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 2 and info["all_seeds"] == [5, 6]
    assert info["guardforge"]["state"] == "succeeded" and not info["guardforge"]["interrupted"]


# -- native /v1 --------------------------------------------------------------------------------------
def test_native_job_with_sse_and_image(client):
    created = client.post("/v1/jobs", json={"prompt": "a blue circle", **TINY, "steps": 12, "batch_size": 2})
    assert created.status_code == 202
    job_id = created.json()["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = read_events(stream)
    progress = [data for name, data in events if name == "progress" and data.get("step")]
    done = events[-1][1]
    assert events[-1][0] == "done" and done["state"] == "succeeded"
    # The stream opens while the 12 steps run, so at least the last steps arrive, in order.
    assert progress and progress[-1]["step"] == progress[-1]["total"] == 12
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    assert all({"step", "total", "eta", "state"} <= set(p) for p in progress)
    assert len(done["verdicts"]) == 2 and len(done["images"]) == 2
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["result"]["seeds"][0] == 7
    image = client.get(job["images"][0]["url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert job_id in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]


def test_cancel_running_job_and_status_answers_during_generation(client):
    job_id = client.post("/v1/jobs", json=LONG).json()["id"]
    wait_running_step(client, job_id)
    latencies = []
    for _ in range(20):  # the event loop answers while the worker thread generates
        started = time.perf_counter()
        job = client.get(f"/v1/jobs/{job_id}").json()
        latencies.append(time.perf_counter() - started)
        assert job["state"] == "running"
    assert max(latencies) < 1.0, latencies
    cancelled = client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200
    job = wait_state(client, job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert job["state"] == "cancelled" and job["progress"] is None
    assert job["finished_at"] - job["started_at"] < 60


def test_cancel_queued_job(client):
    running = client.post("/v1/jobs", json=LONG).json()["id"]
    queued = client.post("/v1/jobs", json={"prompt": "never runs", **TINY}).json()
    assert queued["state"] == "queued"
    assert client.delete(f"/v1/jobs/{queued['id']}").json()["state"] == "cancelled"
    client.delete(f"/v1/jobs/{running}")
    wait_state(client, running, {"cancelled"})
    assert client.get(f"/v1/jobs/{queued['id']}").json()["started_at"] is None


def test_cancelling_a_queued_job_ends_its_event_stream_and_a1111_call_at_once(server, client):
    blocker = client.post("/v1/jobs", json=LONG).json()["id"]
    wait_running_step(client, blocker)
    native = client.post("/v1/jobs", json={"prompt": "cancelled while queued", **TINY}).json()["id"]
    ended: dict = {}

    def follow():
        with httpx.stream("GET", f"{server.url}/v1/jobs/{native}/events", timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    ended.setdefault("stream_open", time.monotonic())
                if line == "event: done":
                    ended["stream"] = time.monotonic()
                    return

    def a1111():
        payload = {"prompt": "an A1111 call cancelled while queued", **TINY}
        ended["response"] = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=payload, timeout=120)
        ended["a1111"] = time.monotonic()

    threads = [threading.Thread(target=follow), threading.Thread(target=a1111)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    a1111_job = None
    while a1111_job is None or "stream_open" not in ended:
        assert time.monotonic() < deadline, "the stream or the A1111 job never showed up"
        queued = client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]
        a1111_job = next((j["id"] for j in queued if j["request"]["prompt"].startswith("an A1111 call")), None)
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    assert client.delete(f"/v1/jobs/{native}").json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{a1111_job}").json()["state"] == "cancelled"
    for thread in threads:
        thread.join(30)
    client.delete(f"/v1/jobs/{blocker}")
    # Both learn of it from the cancel itself, not from their next poll of the database (10 s and 5 s apart).
    assert ended["stream"] - cancelled_at < 1.5, ended
    assert ended["a1111"] - cancelled_at < 1.5, ended
    info = json.loads(ended["response"].json()["info"])
    assert ended["response"].status_code == 200 and info["guardforge"]["state"] == "cancelled"
    wait_state(client, blocker, {"cancelled"})


def test_priority_runs_first(client):
    blocker = client.post("/v1/jobs", json=LONG).json()["id"]
    wait_running_step(client, blocker)
    low = client.post("/v1/jobs", json={"prompt": "low", **TINY}).json()["id"]
    high = client.post("/v1/jobs?priority=10", json={"prompt": "high", **TINY}).json()
    assert high["position"] == 0
    client.delete(f"/v1/jobs/{blocker}")
    low_job = wait_state(client, low, {"succeeded"})
    high_job = wait_state(client, high["id"], {"succeeded"})
    assert high_job["started_at"] < low_job["started_at"]


# -- limits and errors: 4xx with a reason, never 500 --------------------------------------------------
def bomb_png(width=5000, height=5000) -> str:
    """A tiny PNG whose header claims a huge size: decoding it would allocate gigabytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("path,payload,status,needle", [
    ("/v1/jobs", {"prompt": "x", "steps": 151}, 422, "steps=151"),
    ("/v1/jobs", {"prompt": "x", "width": 63}, 422, "multiple of 8"),
    ("/v1/jobs", {"prompt": "x", "sampler": "Nope"}, 422, "unknown sampler"),
    ("/v1/jobs", {"prompt": "x", "model": "no-such-model"}, 404, "no-such-model"),
    ("/v1/jobs", {"prompt": "x", "model": "../../etc/passwd"}, 422, "leaves the models folder"),
    ("/v1/jobs", {"prompt": "x", "init_image": "%%%not base64"}, 422, "not valid base64"),
    ("/v1/jobs", {"prompt": "x", "init_image": base64.b64encode(b"GIF89a nope").decode()}, 422, "not a readable"),
    ("/v1/jobs", {"prompt": "x", "init_image": bomb_png()}, 422, "over the limit"),
    ("/v1/jobs", {"prompt": "x", "unknown_field": 1}, 422, "unknown_field"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "scheduler": "polyexponential"}, 422, "unknown scheduler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Nope"}, 422, "unknown sampler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "gone [abcdef12]"}},
     404, "gone"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["data:image/png;base64,AAAA"]}, 422, "not a readable"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": []}, 422, "init_images"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 9}, 422, "batch_size=9"),
    # Refused at the door, not by a failed job (a 500 on /sdapi): what the engine would refuse later.
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Euler a", "scheduler": "karras"}, 422,
     "no Karras schedule"),
    ("/v1/jobs", {"prompt": "x", "sampler": "DDIM", "schedule": "Exponential"}, 422, "no Exponential schedule"),
    ("/sdapi/v1/txt2img", {"prompt": "x <lora:no-such-lora:0.8>"}, 404, "no-such-lora"),
    ("/v1/jobs", {"prompt": "x", "init_image": png_b64(), "denoising_strength": 0.01, "steps": 20}, 422,
     "leaves no step"),
    ("/v1/moderations", {"input": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{bomb_png()}"}}]},
     422, "over the limit"),
    # Pillow raises ValueError on a text chunk past MAX_TEXT_CHUNK: a bad file, not a server error.
    ("/v1/jobs", {"prompt": "x", "init_image": base64.b64encode(ztxt_bomb_png()).decode()}, 422, "not a readable"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [base64.b64encode(ztxt_bomb_png()).decode()]}, 422,
     "not a readable"),
    ("/v1/moderations", {"input": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(ztxt_bomb_png()).decode()}}]}, 422, "not a readable"),
])
def test_bad_requests_are_4xx_with_a_reason(client, path, payload, status, needle):
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_sdapi_img2img_takes_base64_with_line_breaks(client):
    # What base64.encodebytes and some A1111 clients send; A1111 decodes it, so must we.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 220)).save(buffer, "PNG")
    wrapped = base64.encodebytes(buffer.getvalue()).decode()
    response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [wrapped], **TINY, "steps": 4})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["guardforge"]["state"] == "succeeded"


def test_sdapi_reads_legacy_sampler_names(client):
    # A1111 < 1.9 clients send the schedule inside the sampler name.
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "DPM++ 2M Karras", "steps": 2,
                                                       "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in infotext


def test_body_size_limit(client):
    big = {"prompt": "x", "init_image": "A" * 300_000}
    assert client.post("/v1/jobs", json=big).status_code == 413
    # Chunked upload without Content-Length is counted as it streams.
    body = json.dumps(big).encode()
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    response = client.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_an_image_whose_file_is_gone_is_404_with_a_reason(server, client):
    from guardforge.db import Database
    from guardforge.jobs.queue import JobQueue

    job_id = client.post("/v1/jobs", json={"prompt": "soon moved", **TINY}).json()["id"]
    [image] = wait_state(client, job_id, {"succeeded"})["images"]
    assert client.get(image["url"]).status_code == 200
    # Where the server keeps it is not in the API; the database file knows.
    stored = JobQueue(Database(f"sqlite:///{server.home / 'guardforge.db'}")).image(image["id"], None)
    Path(stored.path).rename(server.home / "moved-away.png")  # as a user tidying the outputs folder would
    response = client.get(image["url"])
    assert response.status_code == 404, response.text
    assert "moved or deleted" in response.json()["detail"]


def noise_png_b64(size=(128, 128), seed=0) -> str:
    """Random pixels: a PNG that does not compress, so its base64 is a distinctive string to look for."""
    import random

    rng = random.Random(seed)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def database_bytes(server) -> bytes:
    """The database file as it lies on disk, its write-ahead log folded in first (a purge's pages may sit there)."""
    import sqlite3

    path = server.home / "guardforge.db"
    with sqlite3.connect(path, timeout=30) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    return path.read_bytes()


def test_sdapi_with_save_images_false_keeps_no_pixels_in_the_database(server, client):
    import sqlite3

    init, mask = noise_png_b64(seed=1), noise_png_b64(seed=2)
    response = client.post("/sdapi/v1/img2img", json={"prompt": "keep nothing", "init_images": [init],
                                                       "mask": mask, **TINY})  # save_images: false, A1111's default
    assert response.status_code == 200, response.text
    body = response.json()
    [output] = body["images"]
    info = json.loads(body["info"])
    job_id = info["guardforge"]["job_id"]

    # The answer was whole; then the job's pixels went: read from the real file, not through the server.
    with sqlite3.connect(server.home / "guardforge.db") as conn:
        payload, result = conn.execute("SELECT payload, result FROM gf_jobs WHERE id = ?", (job_id,)).fetchone()
        rows = conn.execute("SELECT id, action, path, data FROM gf_images WHERE job_id = ?", (job_id,)).fetchall()
    request = json.loads(payload)["request"]
    assert request["init_image"] is None and request["mask"] is None and request["prompt"] == "keep nothing"
    assert [(action, path, data) for _, action, path, data in rows] == [("allow", None, None)]
    # History and audit stay: the job, its infotext and its verdicts.
    assert json.loads(result)["images"][0]["infotext"] == info["infotexts"][0]
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    gone = client.get(f"/v1/images/{rows[0][0]}")
    assert gone.status_code == 410 and "save_images=false" in gone.json()["detail"], gone.text
    # Not even in free pages of the file (secure_delete) or its log.
    on_disk = database_bytes(server)
    for pixels in (init, mask, output):
        assert pixels[1000:1100].encode() not in on_disk

    # The same look finds what a native save=false job keeps for its later GET (so the check above can fail).
    kept = client.post("/v1/jobs?save=false", json={"prompt": "kept for a GET", **TINY}).json()["id"]
    [image] = wait_state(client, kept, {"succeeded"})["images"]
    data = base64.b64encode(client.get(image["url"]).content).decode()
    assert data[200:300].encode() in database_bytes(server)


def test_unknown_ids_are_404(client):
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/images/nope").status_code == 404
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing"}).status_code == 404


# -- operations -----------------------------------------------------------------------------------------
def test_health_metrics_models_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text
    assert "guardforge_queue_depth" in metrics and "guardforge_http_requests_total" in metrics
    assert 'guardforge_jobs_submitted_total{api="native"}' in metrics
    assert [m["name"] for m in client.get("/v1/models?kind=checkpoint").json()["models"]] == ["tiny-sd", "tiny-shapes"]
    every = client.get("/v1/models").json()["models"]  # of every kind, each saying which
    assert ("tiny-shapes-canny", "controlnet", "sd1") in [(m["name"], m["kind"], m["family"]) for m in every]
    assert client.get("/v1/models?kind=../etc").status_code == 422
    schema = client.get("/openapi.json").json()
    for path in ("/sdapi/v1/txt2img", "/v1/jobs", "/v1/moderations", "/v1/jobs/{job_id}/events"):
        assert path in schema["paths"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
    assert "422" in schema["paths"]["/v1/jobs"]["post"]["responses"]


# -- moderations through the official openai client -----------------------------------------------------
def test_openai_moderations_text_and_image(server):
    from openai import OpenAI

    # The openai client always sends a key; an open loopback server ignores one it does not know.
    client = OpenAI(base_url=f"{server.url}/v1", api_key="not-needed-on-loopback")
    text = client.moderations.create(input=["how do I bake bread?", "a second text"])
    assert len(text.results) == 2
    assert isinstance(text.results[0].flagged, bool)
    assert text.results[0].category_scores is not None
    image = client.moderations.create(input=[
        {"type": "text", "text": "a photo"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64()}"}},
    ])
    assert len(image.results) >= 1 and isinstance(image.results[0].flagged, bool)


def test_moderation_rejects_a_bad_image(client):
    response = client.post("/v1/moderations", json={"input": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]})
    assert 400 <= response.status_code < 500, response.text
