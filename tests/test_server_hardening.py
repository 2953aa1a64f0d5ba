"""What an outside review of the running server found, checked on real uvicorn servers on loopback.

Two servers, built in this process so that they share its imports and start in a second: `open_server` is
the default loopback set-up (no keys, workers running the tiny model), `keyed` requires API keys and runs no
workers, so jobs stay queued and the per-key job cap, the queue and the rate limit can be reached without
generating anything. The keyed server's text guard is a test backend that reads only a text's first words
(tests/test_studio_guard.py), the stand-in for a model with a short context.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time

import httpx
import pytest

from tests.livesrv import free_port, make_home

PNG_SIZE = {"steps": 1, "width": 64, "height": 64, "seed": 3}


class InProcessServer:
    """uvicorn serving create_app(studio) on a free loopback port, in a thread of this process."""

    def __init__(self, studio, start_workers: bool):
        import uvicorn

        from guardforge.server.app import create_app

        self.studio = studio
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(studio, start_workers=start_workers, mount_ui=False)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped before it started"
            self.thread.join(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def pickle_and_lora_files(home) -> None:
    """A pickle checkpoint and a LoRA in the models folder (only their names and suffixes matter here)."""
    import torch
    from safetensors.torch import save_file

    torch.save({"state_dict": {}}, home / "models" / "Stable-diffusion" / "evil.ckpt")
    save_file({"lora_unet_down.lora_down.weight": torch.zeros(1, 1)}, str(home / "models" / "Lora" / "style.safetensors"))


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, tiny_model_dir):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    home = make_home(tmp_path_factory.mktemp("open"), tiny_model_dir)
    pickle_and_lora_files(home)
    studio = Studio(Settings(home=home, default_model="tiny-sd", device="cpu", guard={"policy": "off"}))
    with InProcessServer(studio, start_workers=True) as server:
        yield server


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_model_dir):
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.test_dreambooth_train import make_images
    from tests.test_studio_guard import NothingIsUnsafe, ReadsTheFirstWords

    home = make_home(tmp_path_factory.mktemp("keyed"), tiny_model_dir)
    pickle_and_lora_files(home)
    make_images(home / "training-data" / "dog", (40, 200, 40), count=2)
    settings = Settings(home=home, default_model="tiny-sd", device="cpu",
                        server={"require_auth": True, "rate_burst": 5, "rate_per_minute": 6,
                                "max_active_jobs_per_key": 1},
                        jobs={"max_queue": 3})
    studio = Studio(settings, guard=Guard(load_policy("default"), text_backend=ReadsTheFirstWords(),
                                          image_backend=NothingIsUnsafe()))
    with InProcessServer(studio, start_workers=False) as server:
        yield server


def key_for(server, name: str) -> dict[str, str]:
    """Headers with a new API key: each test spends from its own keys' buckets."""
    return {"Authorization": f"Bearer {server.studio.keys.create(name)[1]}"}


def cancel_all(client: httpx.Client) -> None:
    for job in client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]:
        client.delete(f"/v1/jobs/{job['id']}")


def png_b64(size=(64, 64)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 120, 220)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def dreambooth(**overrides) -> dict:
    values = {"base_model": "tiny-sd", "instance_data_dir": "dog", "instance_prompt": "a photo of sks dog",
              "class_prompt": "a photo of dog", "num_class_images": 1, "class_images": {"steps": 1},
              "resolution": 16, "max_steps": 1, "output_dir": "run", "export_formats": ["diffusers"]}
    values.update(overrides)
    return values


def assert_error(response: httpx.Response, status: int, *needles: str) -> str:
    """The error's kind, once the answer is the documented {error, detail} naming each needle (on the OpenAI
    route `error` is OpenAI's {message, type, ...}, its type the kind)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    for needle in needles:
        assert needle in str(body["detail"]), (needle, body)
    if response.request.url.path == "/v1/moderations":
        assert body["error"]["message"] == body["detail"] or isinstance(body["detail"], list), body
        return body["error"]["type"]
    return body["error"]


# -- 3. malformed input: 4xx at the door, never a 500 ----------------------------------------------------------
def test_empty_images_are_refused_at_validation(open_server):
    with httpx.Client(base_url=open_server.url, timeout=120) as client:
        assert_error(client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [""]}), 422,
                     "init_images")
        assert_error(client.post("/v1/jobs", json={"prompt": "x", "init_image": ""}), 422, "init_image", "empty")
        assert_error(client.post("/v1/jobs", json={"prompt": "x", "init_image": png_b64(), "mask": ""}), 422,
                     "mask", "empty")
        # A1111 reads an empty mask as none (`if mask:`); its clients may send one.
        answer = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png_b64()], "mask": "",
                                                        "denoising_strength": 1.0, **PNG_SIZE})
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.json()["info"])["guardforge"]["state"] == "succeeded"


SURROGATE_BODIES = [  # (path, raw JSON text); "\\ud800" is JSON's escape for a lone surrogate
    ("/v1/moderations", '{"input": "\\ud800"}'),
    ("/v1/moderations", '{"input": ["fine", "\\udfff"]}'),
    ("/v1/moderations", '{"input": [{"type": "text", "text": "a \\ud83d"}]}'),
    ("/v1/jobs", '{"prompt": "a cat \\ud800"}'),
    ("/v1/jobs", '{"prompt": "a cat", "negative_prompt": "\\uDC00"}'),
    ("/v1/train/dreambooth", json.dumps(dreambooth(output_dir="s1"))[:-1] + ', "instance_prompt": "sks \\ud800"}'),
    ("/v1/train/dreambooth", json.dumps(dreambooth(output_dir="s2"))[:-1] + ', "validation_prompts": ["\\ud800"]}'),
    ("/sdapi/v1/options", '{"sd_model_checkpoint": "tiny-sd", "\\ud800": 1}'),
    ("/sdapi/v1/png-info", '{"image": "\\ud800"}'),
]


@pytest.mark.parametrize("path,raw", SURROGATE_BODIES)
def test_lone_surrogates_are_422_wherever_they_are(keyed, path, raw):
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "surrogates")) as client:
        try:
            response = client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
            assert_error(response, 422, "surrogate")
            assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
        finally:
            cancel_all(client)


def test_surrogates_in_utf8_bytes_and_a1111_fields_are_refused_before_any_work(open_server):
    """The raw UTF-8 form of a surrogate (ED A0 80) reaches the app too: Python's JSON reader lets it through.
    The A1111 calls would have generated first and failed echoing `parameters`."""
    with httpx.Client(base_url=open_server.url, timeout=120) as client:
        before = len(client.get("/v1/jobs", params={"limit": 500}).json()["jobs"])
        for raw in (b'{"prompt": "x", "alwayson_scripts": {"a": "\\ud800"}}',
                    b'{"prompt": "x", "alwayson_scripts": {"\\ud800": 1}}',
                    b'{"prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny-sd", "k": ["\\ud800"]}}',
                    b'{"prompt": "x \xed\xa0\x80"}'):
            body = raw[:-1] + b', "steps": 1, "width": 64, "height": 64}'
            response = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
            assert_error(response, 422, "surrogate")
        assert len(client.get("/v1/jobs", params={"limit": 500}).json()["jobs"]) == before


@pytest.mark.parametrize("raw,needle", [
    (b'{"prompt": "caf\xe9"}', "UTF-8"),  # Latin-1, not UTF-8
    (b'{"prompt": ', "JSON"),
    (b'{"prompt": "x", "cfg_scale": NaN}', "NaN"),
    (b'{"prompt": "x", "cfg_scale": 1e999}', "finite"),
    (b"[" * 5_000, "JSON"),  # nested deeper than the parser goes
])
def test_unparsable_bodies_are_400_in_the_documented_shape(keyed, raw, needle):
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "parse")) as client:
        for path in ("/v1/jobs", "/sdapi/v1/txt2img", "/v1/moderations"):
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert assert_error(response, 400, needle) == "MalformedBody"


# -- 4. moderation caps, cost and windows -----------------------------------------------------------------------
class CountsConcurrentCalls:
    """Text backend that takes 0.3 s a call and records how many calls ran at once."""

    name = "test-concurrency"
    categories = frozenset({"S1"})

    def __init__(self):
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def score_texts(self, texts):
        from guardforge.guard.backends.base import Scores

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.3)
        with self.lock:
            self.running -= 1
        return [Scores({"S1": 0.0}) for _ in texts]


def test_moderation_calls_run_at_most_the_configured_number_at_once(tmp_path, tiny_model_dir):
    """Uncapped, each call took a thread of the pool that status and auth reads share, and ran the guard's torch
    threads on the same cores as every other call."""
    from concurrent.futures import ThreadPoolExecutor

    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    backend = CountsConcurrentCalls()
    studio = Studio(Settings(home=make_home(tmp_path, tiny_model_dir), server={"max_concurrent_moderations": 2}),
                    guard=Guard(load_policy("default"), text_backend=backend))
    with InProcessServer(studio, start_workers=False) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: c.post("/v1/moderations", json={"input": f"text {i}"}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert backend.most == 2


def test_moderation_caps_inputs_per_call_and_characters_per_input(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "caps")) as client:
        many = client.post("/v1/moderations", json={"input": [f"text {i}" for i in range(2000)]})
        assert_error(many, 422, "2000", "32", "limits.max_moderation_inputs")
        huge = client.post("/v1/moderations", json={"input": "a" * 1_000_000})
        assert_error(huge, 422, "1000000", "20000", "limits.max_moderation_chars")
        part = client.post("/v1/moderations", json={"input": [{"type": "text", "text": "b" * 20_001}]})
        assert_error(part, 422, "20000")
        # At the caps it is answered (the refusals above spent nothing, so the bucket is full).
        assert client.post("/v1/moderations", json={"input": ["x"] * 32}).status_code == 200


def test_a_moderation_call_costs_tokens_by_its_size(keyed):
    # Burst 5; one token per 2,000 characters or per 8 inputs, whichever is more.
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "cost")) as client:
        assert client.post("/v1/moderations", json={"input": "word " * 2000}).status_code == 200  # 10,000: 5 tokens
        limited = client.post("/v1/moderations", json={"input": "hi"})
        assert_error(limited, 429, "rate limit")
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "cost2")) as client:
        for _ in range(4):  # 16 short texts: 2 tokens each
            answer = client.post("/v1/moderations", json={"input": ["hi"] * 16})
            if answer.status_code == 429:
                break
        assert answer.status_code == 429  # the third call finds 1 token left
        # A call no bucket could ever pay for is refused as such, not left to retry forever.
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "cost3")) as client:
        assert_error(client.post("/v1/moderations", json={"input": "word " * 2001}), 422, "6 tokens",
                     "server.rate_burst")


def test_the_openai_client_shows_the_reason_of_a_refusal(keyed):
    import openai

    key = key_for(keyed, "openai")["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="limits.max_moderation_inputs"):
        client.moderations.create(input=["a"] * 33)
    with pytest.raises(openai.AuthenticationError, match="invalid or revoked API key"):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="gf_nope_nope", max_retries=0).moderations.create(input="a")
    client.moderations.create(input="a" * 8000)  # 4 tokens of the 5
    with pytest.raises(openai.RateLimitError, match="rate limit reached") as limited:
        client.moderations.create(input="a" * 4000)
    assert limited.value.response.headers["retry-after"].isdigit()


def test_long_moderation_texts_are_read_in_windows(keyed):
    filler = " ".join(["a quiet green meadow under a pale sky"] * 12)  # 96 words: past the test guard's 50
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "windows")) as client:
        hidden = client.post("/v1/moderations", json={"input": [f"{filler} and a forbidden thing",
                                                                 f"{filler} and a cat", "forbidden"]})
        assert hidden.status_code == 200, hidden.text
        found, clean, short = hidden.json()["results"]
        assert found["flagged"] and found["s_codes"] == ["S1"] and found["categories"]["violence"]
        assert len(found["actions"]) == 1  # one verdict per input, however many windows were read
        assert not clean["flagged"] and short["flagged"]


# -- 5. 429s say when to retry; validation before the token -----------------------------------------------------
def test_rate_limited_has_a_numeric_retry_after():
    from guardforge.server.limits import RateLimited, TokenBuckets

    buckets = TokenBuckets(rate_per_minute=30, burst=1)
    buckets.take("a")
    with pytest.raises(RateLimited) as refused:
        buckets.take("a")
    assert isinstance(refused.value.retry_after, float) and 1.5 < refused.value.retry_after <= 2.0


def test_every_429_carries_retry_after(keyed):
    job = {"prompt": "waits forever: this server runs no workers", **PNG_SIZE}
    a, b, c, d = (httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, f"r-{name}"))
                  for name in "abcd")
    with a, b, c, d:
        try:
            assert a.post("/v1/jobs", json=job).status_code == 202
            capped = a.post("/v1/jobs", json=job)
            assert_error(capped, 429, "limit 1")
            assert capped.headers["retry-after"] == "5"
            assert b.post("/v1/jobs", json=job).status_code == 202
            assert c.post("/v1/jobs", json=job).status_code == 202
            full = d.post("/v1/jobs", json=job)  # the queue holds 3
            assert_error(full, 429, "queue is full")
            assert full.headers["retry-after"] == "5"
            statuses = [a.post("/v1/jobs", json=job) for _ in range(5)]
            limited = statuses[-1]
            assert_error(limited, 429, "rate limit")
            # 6 a minute: a token every 10 s; RFC 9110 delay-seconds, rounded up.
            assert limited.headers["retry-after"].isdigit() and 1 <= int(limited.headers["retry-after"]) <= 10
        finally:
            for client in (a, b, c):
                cancel_all(client)


@pytest.mark.parametrize("path,payload", [
    ("/v1/jobs", {"prompt": "x", "steps": 10_000}),
    ("/v1/jobs", {"prompt": "x", "width": 63}),
    ("/v1/jobs", {"prompt": "x", "unknown": 1}),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 99}),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": []}),
    ("/v1/train/dreambooth", dreambooth(resolution=63)),
    ("/v1/moderations", {"input": []}),
    # Content parts were parsed only after the token was spent:
    ("/v1/moderations", {"input": [{"type": "video", "video": "x"}]}),
    ("/v1/moderations", {"input": [{"type": "image_url", "image_url": {"url": "https://example.invalid/x.png"}}]}),
    ("/v1/moderations", {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}),
    ("/v1/moderations", {"input": [{"type": "text", "text": "fine"}, {"type": "text", "text": 5}]}),
])
def test_requests_refused_by_validation_cost_no_token(keyed, path, payload):
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "free")) as client:
        statuses = {client.post(path, json=payload).status_code for _ in range(8)}  # burst is 5
        assert statuses == {422}, statuses
        assert client.post("/v1/moderations", json={"input": "still has tokens"}).status_code == 200
        if {"type": "text", "text": 5} in payload.get("input", []):  # was "unsupported content part type 'text'"
            assert "must be a string" in client.post(path, json=payload).json()["error"]["message"]


# -- 6. pickle checkpoints through side doors --------------------------------------------------------------------
def test_options_refuse_a_pickle_checkpoint(open_server):
    with httpx.Client(base_url=open_server.url, timeout=120) as client:
        try:
            refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "evil"})
            assert assert_error(refused, 422, "pickle", "GUARDFORGE_ALLOW_PICKLE") == "UnsafeModelFormat"
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd")
            answer = client.post("/sdapi/v1/txt2img", json={"prompt": "still works", **PNG_SIZE})
            assert answer.status_code == 200, answer.text
        finally:
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd"})


def test_dreambooth_refuses_a_pickle_base_model_at_submit(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "db")) as client:
        try:
            refused = client.post("/v1/train/dreambooth", json=dreambooth(base_model="evil", output_dir="evil-run"))
            assert assert_error(refused, 422, "pickle") == "UnsafeModelFormat"
            assert client.get("/v1/jobs").json()["jobs"] == []
        finally:
            cancel_all(client)


# -- 8. A1111 images carry their infotext ------------------------------------------------------------------------
def test_webuiapi_png_info_of_a_txt2img_result_without_save_images(open_server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=open_server.port, sampler="Euler a", steps=1)
    made = api.txt2img(prompt="infotext without saving", seed=11, width=64, height=64, batch_size=2)
    for image, infotext in zip(made.images, made.info["infotexts"], strict=True):
        assert image.info.get("parameters") == infotext  # in the PNG itself, as A1111 sends it
    read = api.png_info(made.image)
    assert read.info == made.info["infotexts"][0] and read.parameters["Seed"] == "11"


# -- 9. Allow headers, server paths, what is public --------------------------------------------------------------
def test_allow_lists_every_method_of_the_path(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as client:
        options = client.options("/v1/jobs")
        assert options.status_code == 204, options.text
        assert options.headers["allow"] == "GET, POST, OPTIONS"
        assert client.options("/v1/jobs/abc").headers["allow"] == "GET, DELETE, OPTIONS"
        assert client.options("/docs").headers["allow"] == "GET, HEAD, OPTIONS"  # Starlette's own routes take HEAD
        wrong = client.put("/v1/jobs")
        assert_error(wrong, 405, "PUT", "GET, POST, OPTIONS")
        assert wrong.headers["allow"] == "GET, POST, OPTIONS"
        assert_error(client.get("/v1/no-such-route"), 404)


def test_remote_callers_see_no_server_paths(keyed):
    from pathlib import Path

    import guardforge

    home, package = str(keyed.studio.settings.home), str(Path(guardforge.__file__).parent)
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "paths")) as client:
        models = {m["model_name"]: m["filename"] for m in client.get("/sdapi/v1/sd-models").json()}
        assert models == {"evil": "Stable-diffusion/evil.ckpt", "tiny-sd": "Stable-diffusion/tiny-sd",
                          "tiny-shapes": "tiny-shapes"}
        assert [lora["path"] for lora in client.get("/sdapi/v1/loras").json()] == ["Lora/style.safetensors"]
        pickle = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {
            "sd_model_checkpoint": "evil"}, **PNG_SIZE})
        for text in (json.dumps(models), client.get("/sdapi/v1/loras").text, pickle.text):
            assert home not in text and package not in text
        assert_error(pickle, 422, "pickle", "Stable-diffusion")


def test_local_callers_of_an_open_server_see_full_paths(open_server):
    home = open_server.studio.settings.home
    with httpx.Client(base_url=open_server.url, timeout=60) as client:
        models = {m["model_name"]: m["filename"] for m in client.get("/sdapi/v1/sd-models").json()}
    assert models["tiny-sd"] == str(home / "models" / "Stable-diffusion" / "tiny-sd")


def test_ops_routes_are_public_unless_protect_ops(keyed, tmp_path, tiny_model_dir):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    with httpx.Client(base_url=keyed.url, timeout=60) as anonymous:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert anonymous.get(path).status_code == 200, path  # probes and scrapers without keys, by default
    home = make_home(tmp_path, tiny_model_dir)
    studio = Studio(Settings(home=home, server={"require_auth": True, "protect_ops": True}))
    with InProcessServer(studio, start_workers=False) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz").status_code == 200  # liveness stays open: it says nothing
        for path in ("/readyz", "/metrics"):
            assert_error(client.get(path), 401, "API key")
            assert client.get(path, headers=key_for(server, "ops")).status_code == 200


def test_a_public_readyz_says_the_database_is_down_without_the_drivers_text(tmp_path, tiny_model_dir):
    """The driver's message names the database's host, port and user: the log gets it, a public probe does not."""
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.livesrv import ThrowawayPostgres

    database = ThrowawayPostgres()
    try:
        studio = Studio(Settings(home=make_home(tmp_path, tiny_model_dir), database_url=f"{database.url}/postgres",
                                 server={"require_auth": True}))
        with InProcessServer(studio, start_workers=False) as server:
            assert httpx.get(server.url + "/readyz", timeout=60).status_code == 200
            database.stop()
            probe = httpx.get(server.url + "/readyz", timeout=60)
    finally:
        database.remove()
    assert probe.status_code == 503, probe.text
    assert probe.json()["detail"]["database"].startswith("unreachable")
    assert "127.0.0.1" not in probe.text and str(database.port) not in probe.text and "postgres" not in probe.text


def test_a_body_without_content_type_is_read_as_json_and_another_type_is_415(keyed):
    """A1111 (on an older FastAPI) reads a body sent without a Content-Type as JSON, and scripts rely on it."""
    with httpx.Client(base_url=keyed.url, timeout=60, headers=key_for(keyed, "ctype")) as client:
        bare = client.build_request("POST", "/v1/moderations", content=b'{"input": "a red apple"}')
        assert "content-type" not in bare.headers  # raw bytes: httpx names no type
        answer = client.send(bare)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["flagged"] is False
        form = client.post("/v1/jobs", content=b"prompt=x", headers={"content-type": "application/x-www-form-urlencoded"})
        assert_error(form, 415, "application/x-www-form-urlencoded", "application/json")


def test_the_openai_error_shape_holds_behind_a_proxy_prefix(tmp_path, tiny_model_dir):
    """Behind `--root-path /gf` the request path is /gf/v1/moderations: the OpenAI shape was keyed on the path
    without the prefix, and errors there came back in the native shape that the openai client cannot read."""
    import uvicorn

    from guardforge.server.app import create_app
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=make_home(tmp_path, tiny_model_dir)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(studio, start_workers=False, mount_ui=False),
                                           host="127.0.0.1", port=port, log_level="warning", root_path="/gf"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        # The proxy strips /gf; uvicorn puts it back in front of the path and names it the root path.
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/moderations", json={"input": ["x"] * 100}, timeout=60)
        assert answer.status_code == 422, answer.text
        assert "at most 32" in answer.json()["error"]["message"], answer.json()
    finally:
        server.should_exit = True
        thread.join(60)


def test_retry_after_header_is_rounded_up_delay_seconds():
    from guardforge.server.app import retry_after_header

    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 1.01, 9.5)] == ["1", "1", "1", "2", "10"]
    assert math.isfinite(float(retry_after_header(3)))
