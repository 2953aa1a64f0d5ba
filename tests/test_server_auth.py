"""A live server that requires API keys: keys CLI, Bearer and Basic, per-key isolation, caps, rate limit."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.livesrv import LiveServer, make_home, run_cli, server_env
from tests.test_server import LONG, TINY, wait_running_step, wait_state


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    from guardforge.access.keys import KeyStore
    from guardforge.db import Database

    home = make_home(tmp_path_factory.mktemp("auth"), tiny_model_dir)
    env = server_env(home, GUARDFORGE_SERVER__REQUIRE_AUTH="true", GUARDFORGE_SERVER__MAX_ACTIVE_JOBS_PER_KEY="1",
                     GUARDFORGE_SERVER__RATE_BURST="5", GUARDFORGE_SERVER__RATE_PER_MINUTE="2",
                     GUARDFORGE_JOBS__MAX_QUEUE="2")
    # The CLI makes one key (so `keys create` is exercised end to end); the others are made directly.
    alice = run_cli(["keys", "create", "alice"], env).strip()
    store = KeyStore(Database(f"sqlite:///{home / 'guardforge.db'}"))
    keys = {"alice": alice, **{name: store.create(name)[1] for name in ("bob", "carol", "dave", "erin")}}
    live = LiveServer(home, env, ui=True).start()
    yield live, keys, env
    live.stop()


def client(url: str, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"} if key else {})


def test_keys_required_off_loopback_setting(setup):
    server, keys, _ = setup
    with client(server.url) as anonymous:
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/sdapi/v1/sd-models"),
                             ("POST", "/sdapi/v1/txt2img"), ("POST", "/v1/moderations")):
            response = anonymous.request(method, path, json={"prompt": "x"})
            assert response.status_code == 401, (path, response.text)
            assert "Bearer" in response.headers["www-authenticate"]
        assert anonymous.get("/healthz").status_code == 200  # probes stay open
    with client(server.url, keys["alice"] + "x") as wrong:
        assert wrong.get("/v1/jobs").status_code == 401
    with client(server.url, "gf_nope_secret") as wrong:
        assert wrong.get("/v1/jobs").status_code == 401


def test_basic_auth_on_sdapi_with_webuiapi(setup):
    import webuiapi

    server, keys, _ = setup
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, steps=2, username="anyone",
                            password=keys["erin"])
    result = api.txt2img(prompt="with basic auth", width=64, height=64, seed=5)
    assert result.images[0].size == (64, 64) and result.info["seed"] == 5
    # The same key as Bearer sees that job in the native API: one owner for both APIs.
    with client(server.url, keys["erin"]) as erin:
        assert result.info["guardforge"]["job_id"] in [j["id"] for j in erin.get("/v1/jobs").json()["jobs"]]


def test_each_key_sees_and_cancels_only_its_own(setup):
    server, keys, _ = setup
    with client(server.url, keys["alice"]) as alice, client(server.url, keys["bob"]) as bob:
        job_id = alice.post("/v1/jobs", json={"prompt": "alice's", **TINY}).json()["id"]
        job = wait_state(alice, job_id, {"succeeded"})
        image_url = job["images"][0]["url"]
        assert alice.get(image_url).status_code == 200
        assert bob.get(f"/v1/jobs/{job_id}").status_code == 404
        assert bob.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert bob.get(image_url).status_code == 404
        assert job_id not in [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]]


def test_per_key_job_cap_and_queue_full(setup):
    server, keys, _ = setup
    with client(server.url, keys["alice"]) as alice, client(server.url, keys["bob"]) as bob, \
            client(server.url, keys["dave"]) as dave, client(server.url, keys["carol"]) as carol:
        running = alice.post("/v1/jobs", json=LONG).json()["id"]
        wait_running_step(alice, running)
        capped = alice.post("/v1/jobs", json={"prompt": "second", **TINY})
        assert capped.status_code == 429 and "limit 1" in capped.json()["detail"]
        queued = [bob.post("/v1/jobs", json={"prompt": "b", **TINY}).json()["id"],
                  dave.post("/v1/jobs", json={"prompt": "d", **TINY}).json()["id"]]
        full = carol.post("/v1/jobs", json={"prompt": "c", **TINY})
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]
        assert alice.delete(f"/v1/jobs/{running}").status_code == 200
        wait_state(alice, running, {"cancelled"})
        wait_state(bob, queued[0], {"succeeded"})
        wait_state(dave, queued[1], {"succeeded"})


def test_rate_limit_is_per_key(setup):
    server, keys, _ = setup
    with client(server.url, keys["carol"]) as carol, client(server.url, keys["dave"]) as dave:
        # Refused by the checks that need no work (schema, limits): free, however many.
        assert {carol.post("/v1/jobs", json={"prompt": "x", "steps": 10_000}).status_code for _ in range(8)} == {422}
        # An image to decode is work the bucket guards, so a bad one spends a token.
        statuses = [carol.post("/v1/jobs", json={"prompt": "x", "init_image": "%%%"}).status_code for _ in range(8)]
        assert statuses.count(429) >= 2 and set(statuses) <= {422, 429}
        limited = carol.post("/v1/jobs", json={"prompt": "x"})
        assert "rate limit" in limited.json()["detail"] and int(limited.headers["retry-after"]) >= 1
        assert dave.post("/v1/jobs", json={"prompt": "x", "init_image": "%%%"}).status_code == 422


def test_revoked_key_is_refused(setup):
    server, keys, env = setup
    with client(server.url, keys["alice"]) as alice:
        assert alice.get("/v1/jobs").status_code == 200
        listing = run_cli(["keys", "list"], env)
        assert "alice" in listing and keys["alice"] not in listing
        key_id = keys["alice"].split("_")[1]
        assert f"revoked {key_id}" in run_cli(["keys", "revoke", key_id], env)
        # The server had this key in its cache of verified keys; the revocation holds on the very next request.
        assert alice.get("/v1/jobs").status_code == 401


def test_ui_login_is_the_key_and_its_own_id(setup):
    # The UI files jobs under the logged-in user name, so that name must be the key's own id: a valid key
    # under another key's id must not get in (it would see and cancel that key's jobs).
    server, keys, _ = setup
    bob, carol = keys["bob"], keys["carol"]
    bob_id, carol_id = bob.split("_")[1], carol.split("_")[1]
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        assert browser.post("/ui/login", data={"username": carol_id, "password": bob}).status_code in (400, 401)
        assert browser.post("/ui/login", data={"username": "anyone", "password": bob}).status_code in (400, 401)
        response = browser.post("/ui/login", data={"username": bob_id, "password": bob})
        assert response.status_code == 200, response.text
        assert browser.get("/ui/config").status_code == 200  # the session cookie now opens the UI
    with httpx.Client(base_url=server.url, timeout=60) as stranger:
        assert stranger.get("/ui/config").status_code == 401


def test_sdapi_options_are_per_key(setup):
    import shutil

    from guardforge.access.keys import KeyStore
    from guardforge.db import Database

    server, _, _ = setup
    models = server.home / "models" / "Stable-diffusion"
    shutil.copytree(models / "tiny-sd", models / "tiny-b", dirs_exist_ok=True)
    store = KeyStore(Database(f"sqlite:///{server.home / 'guardforge.db'}"))
    frank, grace = store.create("frank")[1], store.create("grace")[1]
    body = {"prompt": "whose model", "steps": 2, "width": 64, "height": 64, "seed": 1}
    with client(server.url, frank) as f, client(server.url, grace) as g:
        assert f.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert f.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"}).json()["updated"] == [
            "sd_model_checkpoint"]
        assert f.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-b")
        assert g.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd")
        assert json.loads(g.post("/sdapi/v1/txt2img", json=body).json()["info"])["sd_model_name"] == "tiny-sd"
        assert json.loads(f.post("/sdapi/v1/txt2img", json=body).json()["info"])["sd_model_name"] == "tiny-b"


def test_priority_above_the_keys_max_is_forbidden(setup, monkeypatch, capsys):
    from tests.inprocess_cli import cli_caller

    server, _, env = setup
    # In this process: both commands have their subprocess run above (setup, test_revoked_key_is_refused).
    cli = cli_caller(monkeypatch, capsys, {k: v for k, v in env.items() if k.startswith("GUARDFORGE_")})
    code, urgent, err = cli("keys", "create", "heidi", "--max-priority", "5")
    assert code == 0, err
    urgent = urgent.strip()
    code, listing, err = cli("keys", "list")
    assert code == 0 and "heidi" in listing, err
    from guardforge.access.keys import KeyStore
    from guardforge.db import Database

    plain = KeyStore(Database(f"sqlite:///{server.home / 'guardforge.db'}")).create("ivan")[1]
    with client(server.url, urgent) as heidi, client(server.url, plain) as ivan:
        refused = heidi.post("/v1/jobs", params={"priority": 6}, json={"prompt": "me first", **TINY})
        assert refused.status_code == 403 and "max_priority of 5" in refused.json()["detail"], refused.text
        assert heidi.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
        allowed = heidi.post("/v1/jobs", params={"priority": 5}, json={"prompt": "me first", **TINY})
        assert allowed.status_code == 202, allowed.text
        assert wait_state(heidi, allowed.json()["id"], {"succeeded"})["priority"] == 5
        # A key made without --max-priority may not jump the queue at all, but may step back.
        assert ivan.post("/v1/jobs", params={"priority": 1}, json={"prompt": "x", **TINY}).status_code == 403
        behind = ivan.post("/v1/jobs", params={"priority": -3}, json={"prompt": "x", **TINY})
        assert behind.status_code == 202, behind.text
        wait_state(ivan, behind.json()["id"], {"succeeded"})


def test_key_checks_run_off_the_event_loop(tmp_path, tiny_model_dir, monkeypatch):
    """A key check held inside scrypt must not hold the server: /healthz is answered meanwhile.

    In-process uvicorn on loopback, so the test can hold the stdlib's hashlib.scrypt at a gate it opens
    only once /healthz has answered. On the event loop, the held check would keep /healthz from ever
    answering: the probe's time-out is the failure, and no clock is compared.
    """
    import hashlib
    import threading

    import uvicorn

    from guardforge.server.app import create_app
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.livesrv import free_port

    home = make_home(tmp_path, tiny_model_dir)
    studio = Studio(Settings(home=home, server={"require_auth": True}))
    key = studio.keys.create("frank")[1]
    wrong = key[:-3] + ("xyz" if not key.endswith("xyz") else "abc")  # a real key id: its row is read, then scrypt
    entered, gate = threading.Event(), threading.Event()
    real_scrypt = hashlib.scrypt

    def gated_scrypt(*args, **kwargs):
        entered.set()
        gate.wait(timeout=60)
        return real_scrypt(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", gated_scrypt)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(studio, start_workers=False, mount_ui=False),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        while not server.started:
            thread.join(0.05)
        answers: list[int] = []
        checker = threading.Thread(target=lambda: answers.append(
            httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}, timeout=90)
            .status_code))
        checker.start()
        assert entered.wait(timeout=60)  # the key check is inside scrypt now, and stays there
        try:
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            gate.set()
        checker.join(timeout=90)
        assert answers == [401]
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=30)
