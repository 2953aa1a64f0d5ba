"""Workers in-process on a real SQLite file and the tiny model: a database that refuses to record a job's end
neither kills the worker nor loses the job, and /readyz tells when a worker's thread has ended."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest

from guardforge.engine.request import GenerationRequest
from guardforge.jobs.events import ProgressHub
from guardforge.db import Database
from guardforge.jobs.queue import JobQueue
from guardforge.jobs.worker import Worker
from guardforge.settings import Settings
from guardforge.studio import Studio
from tests.livesrv import free_port


@pytest.fixture
def studio(gf_home):
    return Studio(Settings(home=gf_home, default_model="tiny-sd", device="cpu", guard={"policy": "off"}))


def tiny_job(queue: JobQueue, prompt: str) -> str:
    request = GenerationRequest(prompt=prompt, steps=2, width=64, height=64, seed=1)
    return queue.submit("generate", {"request": request.model_dump(mode="json"), "save": False}, owner="a")


def wait_state(queue: JobQueue, job_id: str, states: set[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id, None)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_a_locked_database_at_finish_neither_kills_the_worker_nor_loses_the_job(studio, tmp_path):
    path = tmp_path / "jobs.db"
    # A short busy timeout gives the same refusal as production's 30 s ("database is locked"), sooner.
    queue = JobQueue(Database(f"sqlite:///{path}", busy_timeout_s=0.2))
    other_process = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locked = threading.Event()

    def generate_then_lock(*args, **kwargs):
        result = studio.generate(*args, **kwargs)
        if not locked.is_set():
            # Another process takes the write lock (an admin write, a migration) just as the result is recorded.
            other_process.execute("BEGIN IMMEDIATE")
            locked.set()
        return result

    worker = Worker(queue, ProgressHub(), generate_then_lock, "cpu", poll_s=0.05)
    worker.start()
    try:
        first = tiny_job(queue, "a red circle")
        assert locked.wait(120), "the job never ran"
        time.sleep(2)  # several refused attempts to record it
        assert worker.alive and queue.get(first, None).state == "running"
        other_process.execute("ROLLBACK")
        job = wait_state(queue, first, {"succeeded", "failed", "cancelled"}, timeout=60)
        # Recorded once the lock is gone, with its image: nothing made was dropped.
        assert job.state == "succeeded" and len(job.images) == 1, job
        assert queue.image(job.images[0].id, "a").data
        # The same worker goes on with the queue.
        second = tiny_job(queue, "a blue square")
        assert wait_state(queue, second, {"succeeded", "failed"}).state == "succeeded"
        assert worker.alive
    finally:
        worker.stop()
        other_process.close()


def test_readyz_reports_a_worker_whose_thread_ended(studio):
    import uvicorn

    from guardforge.server.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(studio, mount_ui=False), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}/readyz"
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url, timeout=30).status_code == 200
        studio.workers.workers[0].stop()  # its thread ends, as it would on an error nothing caught
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"]["dead_workers"] == [0]
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_callers_error_in_the_worker_reaches_an_a1111_caller_as_that_error_not_a_500(studio, gf_home):
    """The model left the folder between submit and run: the job records the caller's error by kind, and the A1111
    answer raises it (404 at the edge) instead of JobFailed (500)."""
    import shutil

    from guardforge.a1111.adapter import A1111
    from guardforge.a1111.schemas import Txt2ImgPayload
    from guardforge.errors import ModelNotFound

    adapter, caller = A1111(studio), studio.caller()
    payload = Txt2ImgPayload(prompt="a square", steps=2, width=64, height=64)
    pending = adapter.submit(payload, caller)
    shutil.rmtree(gf_home / "models" / "Stable-diffusion" / "tiny-sd")
    worker = Worker(studio.jobs, ProgressHub(), studio.generate, "cpu", poll_s=0.05)
    worker.start()
    try:
        job = wait_state(studio.jobs, pending.job.id, {"failed", "succeeded"})
    finally:
        worker.stop()
    assert job.state == "failed" and job.error_kind == "ModelNotFound", job
    with pytest.raises(ModelNotFound, match="tiny-sd"):
        adapter.answer(pending, payload, caller, job)
