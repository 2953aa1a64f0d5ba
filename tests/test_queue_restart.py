"""SIGKILL a real server mid-generation: queued jobs run after restart, the running one fails or is re-queued."""

from __future__ import annotations

import httpx

from guardforge.jobs.queue import RESTART_REASON
from tests.livesrv import LiveServer, make_home, server_env
from tests.test_server import LONG, TINY, wait_running_step, wait_state


def test_no_job_vanishes_across_sigkill(tmp_path, tiny_model_dir):
    home = make_home(tmp_path, tiny_model_dir)
    first = LiveServer(home, server_env(home)).start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as client:
            running = client.post("/v1/jobs", json=LONG).json()["id"]
            queued = [client.post("/v1/jobs", json={"prompt": f"queued {i}", **TINY}).json()["id"]
                      for i in range(2)]
            wait_running_step(client, running)
    finally:
        first.kill()

    # Default: the interrupted job fails with a reason; the queued ones run on the next server.
    second = LiveServer(home, server_env(home)).start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as client:
            job = client.get(f"/v1/jobs/{running}").json()
            assert job["state"] == "failed" and job["error"] == RESTART_REASON
            for job_id in queued:
                assert wait_state(client, job_id, {"succeeded", "failed"})["state"] == "succeeded"
            again = client.post("/v1/jobs", json=LONG).json()["id"]
            wait_running_step(client, again)
    finally:
        second.kill()

    # With requeue_running_on_restart the interrupted job starts over instead.
    third = LiveServer(home, server_env(home, GUARDFORGE_JOBS__REQUEUE_RUNNING_ON_RESTART="true")).start()
    try:
        with httpx.Client(base_url=third.url, timeout=60) as client:
            job = wait_running_step(client, again)
            assert job["error"] is None
    finally:
        third.stop()  # SIGTERM: a graceful stop keeps the running job as a restart would, re-queued here

    fourth = LiveServer(home, server_env(home, GUARDFORGE_JOBS__REQUEUE_RUNNING_ON_RESTART="true")).start()
    try:
        with httpx.Client(base_url=fourth.url, timeout=60) as client:
            wait_running_step(client, again)
            assert client.delete(f"/v1/jobs/{again}").status_code == 200
            assert wait_state(client, again, {"cancelled"})["state"] == "cancelled"
    finally:
        fourth.stop()
