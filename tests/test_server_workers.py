"""One worker per device in the server process: GUARDFORGE_DEVICES, concurrent jobs, the device on record."""

from __future__ import annotations

import time

import httpx
import pytest

from guardforge.models.devices import worker_devices
from guardforge.settings import Settings
from tests.livesrv import make_home
from tests.test_server import wait_state


def test_devices_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("GUARDFORGE_DEVICES", "cpu, cpu")
    settings = Settings()
    assert settings.devices == ["cpu", "cpu"]
    assert worker_devices(settings.devices, settings.device) == ["cpu", "cpu"]
    monkeypatch.delenv("GUARDFORGE_DEVICES")
    # Unset: the one device of `device` (auto is the CPU on a machine without accelerators).
    assert worker_devices(Settings(device="cpu").devices, "cpu") == ["cpu"]
    monkeypatch.setenv("GUARDFORGE_DEVICES", ",")
    with pytest.raises(ValueError, match="at least one device"):
        Settings()


def test_an_absent_device_is_refused_with_the_present_ones():
    from guardforge.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="not available here"):
        worker_devices(["cpu", "cuda:7" if not __import__("torch").cuda.is_available() else "mps:9"])


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, tiny_model_dir):
    from guardforge.studio import Studio
    from tests.test_server_hardening import InProcessServer

    home = make_home(tmp_path_factory.mktemp("workers"), tiny_model_dir)
    # uvicorn in this process (GUARDFORGE_DEVICES as `serve` reads it is tested above): the workers are the
    # Studio's, and a server process would cost an interpreter and torch.
    studio = Studio(Settings(home=home, device="cpu", devices=["cpu", "cpu"], default_model="tiny-sd",
                             guard={"policy": "off"}))
    with InProcessServer(studio, start_workers=True) as live:
        yield live


def test_two_workers_run_two_jobs_at_once(two_workers):
    # Long enough that the first is still stepping when the second would start after it on one worker.
    job = {"prompt": "a slow one", "steps": 40, "width": 64, "height": 64, "seed": 3}
    with httpx.Client(base_url=two_workers.url, timeout=120) as client:
        assert client.get("/readyz").json()["detail"]["devices"] == ["cpu", "cpu"]
        ids = [client.post("/v1/jobs", json=job).json()["id"] for _ in range(2)]
        # Both stepping at the same moment: with one worker the second would wait, queued.
        deadline, both = time.monotonic() + 120, False
        while time.monotonic() < deadline and not both:
            views = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
            assert all(v["state"] in ("queued", "running") for v in views), views
            both = all(v["state"] == "running" and (v["progress"] or {}).get("step", 0) >= 1 for v in views)
            time.sleep(0.05)
        assert both, f"the two jobs never ran at the same time: {views}"
        done = [wait_state(client, job_id, {"succeeded", "failed"}, timeout=300) for job_id in ids]
        assert [d["state"] for d in done] == ["succeeded", "succeeded"], done
        # Each job says where it ran: the same device, two workers (each with its own copy of the model).
        assert [d["result"]["device"] for d in done] == ["cpu", "cpu"]
        assert sorted(d["result"]["worker"] for d in done) == [0, 1]
