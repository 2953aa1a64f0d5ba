"""DreamBooth as a queued job on a live server with API keys: events, export, generation with the result,
cancel and resume, 422s, confined paths, per-key isolation, guard-blocked data, a crash mid-training."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from guardforge.jobs.queue import RESTART_REASON
from tests.livesrv import LiveServer, make_home, read_events, server_env
from tests.test_dreambooth_train import make_images
from tests.test_server import LONG, TINY, wait_running_step, wait_state

# Guard off on the main server (the guard-blocked case has its own server below); limits small enough
# that a fuzzed or mistaken body cannot occupy the worker for long.
ENV = {"GUARDFORGE_SERVER__REQUIRE_AUTH": "true", "GUARDFORGE_SERVER__RATE_BURST": "1000",
       "GUARDFORGE_LIMITS__MAX_STEPS": "150", "GUARDFORGE_TRAINING__MAX_STEPS": "5000"}


def config(**overrides) -> dict:
    """A tiny full fine-tune: 16 px, 3 steps, two class images made by the base model at 2 steps."""
    values = {"base_model": "tiny-sd", "instance_data_dir": "dog", "instance_prompt": "a photo of sks dog",
              "class_prompt": "a photo of dog", "num_class_images": 2, "class_images": {"steps": 2},
              "resolution": 16, "max_steps": 3, "learning_rate": 1e-3, "logger": "csv",
              "checkpoint_interval": 100, "output_dir": "sks-api", "export_formats": ["diffusers"]}
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    from guardforge.access.keys import KeyStore
    from guardforge.db import Database

    root = tmp_path_factory.mktemp("train")
    home = make_home(root, tiny_model_dir)
    make_images(home / "training-data" / "dog", (40, 200, 40), count=2)
    make_images(root / "outside", (40, 200, 40), count=2)
    (home / "training-data" / "escape").symlink_to(root / "outside", target_is_directory=True)
    store = KeyStore(Database(f"sqlite:///{home / 'guardforge.db'}"))
    keys = {name: store.create(name)[1] for name in ("alice", "bob")}
    env = server_env(home, **ENV)
    live = LiveServer(home, env).start()
    yield live, keys, home, env
    live.stop()


def client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"})


def key_id(key: str) -> str:
    return key.split("_")[1]


def test_train_follow_events_then_generate_with_the_export(setup):
    server, keys, home, _ = setup
    with client(server.url, keys["alice"]) as alice:
        # A generation holds the worker, so the training job waits and its stream sees every event.
        blocker = alice.post("/v1/jobs", json=LONG).json()["id"]
        wait_running_step(alice, blocker)
        created = alice.post("/v1/train/dreambooth", json=config())
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert created.json()["state"] == "queued"
        with alice.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            # The first event arrives while the job waits: then the job ahead of it goes.
            events = read_events(stream, on_event=lambda seen: len(seen) == 1 and alice.delete(f"/v1/jobs/{blocker}"))

    assert events[0] == ("state", {"state": "queued", "position": 0})
    progress = [data for name, data in events if name == "progress" and data.get("phase")]
    assert list(dict.fromkeys(p["phase"] for p in progress)) == [
        "screening", "class_images", "training", "exporting", "done"]
    training = [p for p in progress if p["phase"] == "training"]
    assert [p["step"] for p in training] == [1, 2, 3] and {p["total"] for p in training} == {3}
    assert all(p["loss"] is not None and p["eta"] is not None and p["it_per_s"] for p in training)
    assert [p["step"] for p in progress if p["phase"] == "class_images"] == [1, 2]
    name, done = events[-1]
    assert name == "done" and done["state"] == "succeeded", done
    assert done["result"]["models"] == {"diffusers": "sks-api"}
    assert done["result"]["exports"] == {"diffusers": "sks-api"} and done["result"]["steps"] == 3
    assert done["result"]["class_images_generated"] == 2
    assert (done["result"]["device"], done["result"]["worker"]) == ("cpu", 0)  # the worker that took it

    with client(server.url, keys["alice"]) as alice:
        job = alice.get(f"/v1/jobs/{job_id}").json()
        assert job["kind"] == "dreambooth" and job["state"] == "succeeded" and job["progress"] is None
        assert job["request"]["instance_data_dir"] == "dog"  # the caller's spelling, not the server's folders
        assert job["result"] == done["result"]
        assert "sks-api" in [m["name"] for m in alice.get("/v1/models").json()["models"]]  # no restart
        generated = alice.post("/v1/jobs", json={"prompt": "a photo of sks dog", "model": "sks-api", **TINY})
        image_job = wait_state(alice, generated.json()["id"], {"succeeded", "failed"})
        assert image_job["state"] == "succeeded" and image_job["result"]["model"] == "sks-api"
        assert alice.get(image_job["images"][0]["url"]).status_code == 200
        # The run's files are in alice's runs folder; the export in the models folder; names are not reused.
        run = home / "training-runs" / key_id(keys["alice"]) / "sks-api"
        assert sorted(p.name for p in (run / "class_images").glob("class-*.png")) == [
            "class-00000.png", "class-00001.png"]
        assert (home / "models" / "Stable-diffusion" / "sks-api" / "model_index.json").is_file()
        again = alice.post("/v1/train/dreambooth", json=config(output_dir="other", export_name="sks-api"))
        assert again.status_code == 422 and "export_name 'sks-api' is taken" in again.json()["detail"]


def test_cancel_a_running_training_job_then_resume(setup):
    server, keys, home, _ = setup
    body = config(with_prior_preservation=False, max_steps=5000, output_dir="long", export_name="long")
    with client(server.url, keys["alice"]) as alice, client(server.url, keys["bob"]) as bob:
        job_id = alice.post("/v1/train/dreambooth", json=body).json()["id"]
        while True:
            job = alice.get(f"/v1/jobs/{job_id}").json()
            assert job["state"] in ("queued", "running"), job
            progress = job["progress"] or {}
            if progress.get("phase") == "training" and progress["step"] >= 1:
                break
            time.sleep(0.05)
        assert progress["total"] == 5000 and progress["loss"] is not None and progress["eta"] is not None
        # Another key neither sees nor cancels it.
        assert bob.get(f"/v1/jobs/{job_id}").status_code == 404
        assert bob.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert bob.get(f"/v1/jobs/{job_id}/events").status_code == 404
        assert job_id not in [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]]
        assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
        # While it runs, its export name and its run folder are not handed to another job.
        same_name = alice.post("/v1/train/dreambooth", json={**body, "output_dir": "long-2"})
        assert same_name.status_code == 422 and "taken by a training job" in same_name.json()["detail"]
        same_dir = alice.post("/v1/train/dreambooth", json={**body, "export_name": "long-2"})
        assert same_dir.status_code == 422 and "is in use by a training job" in same_dir.json()["detail"]

        assert alice.delete(f"/v1/jobs/{job_id}").status_code == 200
        job = wait_state(alice, job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
        assert job["state"] == "cancelled", job
        step = int(re.search(r"stopped after step (\d+)/5000; a checkpoint was saved", job["error"]).group(1))
        run = home / "training-runs" / key_id(keys["alice"]) / "long"
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert not (home / "models" / "Stable-diffusion" / "long").exists()  # nothing exported

        resumed = alice.post("/v1/train/dreambooth?resume=true", json={**body, "max_steps": step + 2})
        assert resumed.status_code == 202, resumed.text
        job = wait_state(alice, resumed.json()["id"], {"succeeded", "failed", "cancelled"})
        assert job["state"] == "succeeded", job
        assert job["result"]["steps"] == step + 2 and job["result"]["models"] == {"diffusers": "long"}


@pytest.mark.parametrize("overrides,status,needle", [
    ({"unknown_field": 1}, 422, "unknown_field"),
    ({"resolution": 30}, 422, "multiple of 8"),
    ({"instance_prompt": ""}, 422, "instance_prompt"),
    ({"class_prompt": None}, 422, "needs a class_prompt"),
    ({"learning_rate": -1}, 422, "learning_rate"),
    ({"max_steps": 6000}, 422, "max_steps=6000 is over this server's limit of 5000"),
    ({"strategy": "ddp"}, 422, "one device"),
    ({"devices": 2}, 422, "one device"),
    ({"precision": "16-mixed"}, 422, "16-mixed needs a GPU"),  # the server runs with GUARDFORGE_DEVICE=cpu
    ({"class_images": {"sampler": "Nope"}}, 422, "unknown sampler"),
    ({"class_images": {"steps": 151}}, 422, "class_images: steps=151"),
    ({"base_model": "no-such-model"}, 404, "no-such-model"),
    ({"base_model": "../../etc"}, 422, "not a path"),
    ({"export_name": "../x"}, 422, "plain file name"),
    ({"export_name": "tiny-shapes"}, 422, "the registry lists tiny-shapes"),  # shipped, outside the models folder
    ({"output_dir": "never-ran"}, 422, "holds no checkpoint"),  # with ?resume=true below
])
def test_bad_configs_are_refused_with_a_reason(setup, overrides, status, needle):
    server, keys, _, _ = setup
    body = config(**{"output_dir": "bad", **overrides})
    with client(server.url, keys["alice"]) as alice:
        query = "?resume=true" if "holds no checkpoint" in needle else ""
        response = alice.post(f"/v1/train/dreambooth{query}", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text


@pytest.mark.parametrize("overrides,needle", [
    ({"instance_data_dir": "../models/Stable-diffusion"}, "leaves the training-data folder"),
    ({"instance_data_dir": "/etc"}, "leaves the training-data folder"),
    ({"instance_data_dir": "escape"}, "leaves the training-data folder"),  # a symlink to a folder outside
    ({"instance_data_dir": "dog\u0000"}, "instance_data_dir"),
    ({"instance_data_dir": "missing"}, "is not a folder of images"),
    ({"class_data_dir": "/tmp"}, "leaves the training-data folder and your runs folder"),
    ({"output_dir": "/tmp/run"}, "leaves your runs folder"),
    ({"output_dir": "../someone-else/run"}, "leaves your runs folder"),
    ({"output_dir": "."}, "leaves your runs folder"),
])
def test_paths_outside_the_allowed_folders_are_refused(setup, overrides, needle):
    server, keys, home, _ = setup
    with client(server.url, keys["bob"]) as bob:
        response = bob.post("/v1/train/dreambooth", json=config(**overrides))
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]
    assert str(home) not in response.text  # the server's folders are not echoed


def test_keys_are_required_for_training(setup):
    server, _, _, _ = setup
    assert httpx.post(f"{server.url}/v1/train/dreambooth", json=config(), timeout=30).status_code == 401


def test_a_training_job_running_when_the_server_dies_fails_with_the_reason(setup):
    """Last in this module: it kills the shared server and starts another on the same home."""
    server, keys, home, env = setup
    body = config(with_prior_preservation=False, max_steps=5000, output_dir="crash", export_name="crash")
    with client(server.url, keys["bob"]) as bob:
        job_id = bob.post("/v1/train/dreambooth", json=body).json()["id"]
        while (bob.get(f"/v1/jobs/{job_id}").json()["progress"] or {}).get("phase") != "training":
            time.sleep(0.05)
    server.kill()
    again = LiveServer(home, env).start()
    try:
        with client(again.url, keys["bob"]) as bob:
            job = bob.get(f"/v1/jobs/{job_id}").json()
            assert job["state"] == "failed" and job["error"] == RESTART_REASON
    finally:
        again.stop()


# -- the guard screens the training data before any step --------------------------------------------------
BLOCK_TRAINING_IMAGES = """
name: block-training-images
default: {threshold: 0.5, action: allow}
categories:
  S12: {threshold: 0.000001, action: block}
checkpoints: {prompt: false, input_image: false, output_image: false, training_data: true}
"""


def test_guard_blocked_training_data_fails_the_job_naming_files_and_categories(tmp_path, tiny_model_dir):
    from guardforge.settings import GuardSettings, Settings
    from guardforge.studio import Studio
    from tests.test_server_hardening import InProcessServer

    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_TRAINING_IMAGES)  # Open-NSFW gives every image an S12 score above 1e-6
    home = make_home(tmp_path, tiny_model_dir)
    make_images(home / "training-data" / "dog", (40, 200, 40), count=2)
    # uvicorn in this process: the guard's reading of the data is under test, not the server's process (the
    # module's keyed server is a real `guardforge serve`), and a second one costs an interpreter and torch.
    studio = Studio(Settings(home=home, device="cpu", default_model="tiny-sd", guard=GuardSettings(policy=str(policy))))
    with (InProcessServer(studio, start_workers=True) as live,
          httpx.Client(base_url=live.url, timeout=120) as local):  # open on loopback: owner "local"
        job_id = local.post("/v1/train/dreambooth", json=config(with_prior_preservation=False)).json()["id"]
        job = wait_state(local, job_id, {"succeeded", "failed", "cancelled"})
        assert job["state"] == "failed"
        # The embedded text guard scores the prompts above 1e-6 too; the images come first, each named.
        assert job["error"].startswith("the guard blocked the training data, nothing was trained: "
                                       "img-0.png (S12); img-1.png (S12); prompt 'a photo of sks dog' (S12)")
        assert not (home / "training-runs" / "local" / "sks-api" / "checkpoints").exists()
        assert not (home / "models" / "Stable-diffusion" / "sks-api").exists()
