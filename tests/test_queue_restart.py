"""SIGKILL a real server mid-generation: queued jobs run after restart, the running one fails or is re-queued.
SIGTERM while connections drain: queued jobs stay queued."""

from __future__ import annotations

import threading

import httpx

from guardforge.db import Database
from guardforge.jobs.queue import RESTART_REASON, JobQueue
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


def test_a_graceful_stop_starts_no_queued_job_while_connections_drain(tmp_path, tiny_model_dir):
    home = make_home(tmp_path, tiny_model_dir)
    server = LiveServer(home, server_env(home, GUARDFORGE_SERVER__GRACEFUL_SHUTDOWN_S="10")).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            # ~2 s of steps: it ends while uvicorn waits for the open stream below, freeing the worker.
            running = client.post("/v1/jobs", json={"prompt": "ends during the drain", "steps": 30, "width": 64,
                                                    "height": 64}).json()["id"]
            waiting = client.post("/v1/jobs", json=LONG).json()["id"]
            streaming = threading.Event()

            def follow():  # an open event stream holds the stop up to graceful_shutdown_s (10 s here)
                try:
                    with httpx.stream("GET", f"{server.url}/v1/jobs/{waiting}/events", timeout=60) as stream:
                        for _ in stream.iter_lines():
                            streaming.set()
                except httpx.HTTPError:
                    pass  # the server cut it at the end of the drain

            threading.Thread(target=follow, daemon=True).start()
            assert streaming.wait(30)
            wait_running_step(client, running)
        server.process.terminate()
        server.process.wait(60)
    finally:
        server.kill()
    queue = JobQueue(Database(f"sqlite:///{home / 'guardforge.db'}"))
    assert queue.get(running, None).state == "succeeded"  # the job under way finished during the drain
    # Queued when the stop began, so it waits for the next start (not started, then failed by the stop).
    job = queue.get(waiting, None)
    assert job.state == "queued" and job.started_at is None and job.error is None, job
