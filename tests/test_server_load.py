"""What keeps job status answering while a generation runs (docs/serve.md, "Under load"): CPU workers leave a core
to the HTTP server, and the server's keep-alive outlasts client pools. Latency itself is measured by
benchmarks/status_under_load.py, not asserted here."""

from __future__ import annotations

import os

import torch

from guardforge.jobs.events import ProgressHub
from guardforge.db import Database
from guardforge.jobs.queue import JobQueue
from guardforge.jobs.worker import WorkerPool, cpu_worker_threads
from guardforge.settings import Settings
from tests.test_jobs_worker import tiny_job, wait_state


def test_cpu_workers_leave_one_core_and_share_the_rest():
    cores = len(os.sched_getaffinity(0))
    assert cpu_worker_threads(["cpu"]) == max(1, cores - 1)
    assert cpu_worker_threads(["cpu", "cpu"]) == max(1, (cores - 1) // 2)
    assert cpu_worker_threads(["cuda:0", "cpu"]) == max(1, cores - 1)  # only CPU workers share the cores
    assert cpu_worker_threads(["cpu"], setting=3) == 3


def test_a_cpu_worker_runs_torch_on_its_own_thread_count_and_leaves_the_callers(tmp_path):
    queue = JobQueue(Database(f"sqlite:///{tmp_path / 'jobs.db'}"))
    seen = []

    def generate(*args, **kwargs):  # records what torch runs on inside the worker's thread
        seen.append(torch.get_num_threads())
        raise RuntimeError("not generating")

    before = torch.get_num_threads()
    pool = WorkerPool(queue, ProgressHub(), generate, ["cpu", "cuda:0"], cpu_threads=1)
    assert [w.threads for w in pool.workers] == [1, None]
    pool.workers[0].start()
    try:
        wait_state(queue, tiny_job(queue, "a red circle"), {"failed"})
    finally:
        pool.workers[0].stop()
    assert seen == [1]
    assert torch.get_num_threads() == before  # OpenMP's count is per thread: this one is untouched


def test_the_server_keeps_idle_connections_longer_than_client_pools():
    # httpx drops an idle pooled connection after 5 s, aiohttp after 15 s: the client must close first, or it
    # reuses a connection the server is closing and gets a reset (httpx.ReadError) for a request never seen.
    assert Settings().server.keep_alive_s > 15
