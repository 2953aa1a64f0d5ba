"""Several servers on one job store: claims with an owner and a lease, recovery of expired leases only, a table from
before leases upgraded in place, progress and cancellation across servers, and two real servers on one PostgreSQL
with one SIGKILLed mid-run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

import httpx
import pytest
from sqlalchemy import create_engine, update

from guardforge.db import Database
from guardforge.jobs.queue import RESTART_REASON, JobQueue, instance_id, owner_is_dead
from tests.livesrv import LiveServer, ThrowawayPostgres, make_home, server_env
from tests.test_queue import new_postgres_database


@pytest.fixture(scope="module")
def postgres():
    server = ThrowawayPostgres()
    yield server.url
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return new_postgres_database(request.getfixturevalue("postgres"))


def test_recovery_takes_only_expired_leases_and_a_lost_claim_records_nothing(db_url):
    live = JobQueue(Database(db_url))  # a server that goes on renewing
    stalled = JobQueue(Database(db_url), lease_s=0.3)  # one that stops renewing
    first, second, third = (live.submit("generate", {}, owner="a") for _ in range(3))
    assert live.claim_next().id == first and stalled.claim_next().id == second
    claimed = live.get(first, None)
    assert claimed.claimed_by == live.instance_id and claimed.attempts == 1
    assert claimed.lease_until > time.time() + 25

    newcomer = JobQueue(Database(db_url), requeue_running_on_restart=True)
    assert newcomer.recover() == []  # both claims live: nobody's running job is touched
    time.sleep(0.35)
    assert newcomer.recover() == [second]
    assert live.get(first, None).state == "running"
    retaken = newcomer.claim_next()
    assert retaken.id == second and retaken.attempts == 2 and retaken.claimed_by == newcomer.instance_id

    # The stalled server wakes up: it learns it lost the job, and cannot record an end for it.
    assert stalled.heartbeat({second: json.dumps({"step": 9})}, renew=True) == ({second}, set())
    assert stalled.finish(second, "succeeded") is False
    assert stalled.release(second) == "running"  # a graceful stop releases only its own jobs
    job = newcomer.get(second, None)
    assert job.state == "running" and job.claimed_by == newcomer.instance_id and job.progress is None

    # A cancel asked through any server reaches the heartbeat of the one running the job; progress is saved.
    newcomer.cancel(first, "a")
    assert live.heartbeat({first: json.dumps({"step": 3, "total": 8})}, renew=True) == (set(), {first})
    assert newcomer.get(first, None).progress == {"step": 3, "total": 8}
    assert newcomer.finish(second, "succeeded") and newcomer.get(second, None).state == "succeeded"
    assert live.claim_next().id == third


def test_a_dead_instance_on_this_host_is_recovered_without_waiting_for_its_lease(db_url):
    host, namespace, _, _ = instance_id().split(":")
    dead = f"{host}:{namespace}:{_pid_of_ended()}:0000"
    elsewhere = "another-host:4026531836:1:0000"
    assert owner_is_dead(dead) and not owner_is_dead(elsewhere) and not owner_is_dead(instance_id())
    crashed, remote = (JobQueue(Database(db_url), instance=name) for name in (dead, elsewhere))
    jobs = [crashed.submit("generate", {}, owner="a") for _ in range(2)]
    assert crashed.claim_next().id == jobs[0] and remote.claim_next().id == jobs[1]
    restarted = JobQueue(Database(db_url))
    assert restarted.recover() == [jobs[0]]  # at once, though its 30 s lease runs on
    failed = restarted.get(jobs[0], None)
    assert failed.state == "failed" and failed.error == RESTART_REASON and failed.claimed_by == dead
    assert restarted.get(jobs[1], None).state == "running"  # another host's live lease: left alone


def _pid_of_ended() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_jobs_table_from_before_leases_upgrades_in_place(db_url):
    database = Database(db_url)
    with database.engine.begin() as conn:  # gf_jobs as the release before leases made it
        conn.exec_driver_sql(
            "CREATE TABLE gf_jobs (id VARCHAR(32) PRIMARY KEY, owner VARCHAR(64) NOT NULL, kind VARCHAR(16) NOT NULL,"
            " priority INTEGER NOT NULL, state VARCHAR(16) NOT NULL, payload TEXT NOT NULL, result TEXT, error TEXT,"
            " cancel_requested BOOLEAN NOT NULL, created_at FLOAT NOT NULL, started_at FLOAT, finished_at FLOAT)")
        for job_id, state, created in (("old-running", "running", 1.0), ("old-queued", "queued", 2.0)):
            conn.exec_driver_sql(
                "INSERT INTO gf_jobs (id, owner, kind, priority, state, payload, cancel_requested, created_at) "
                f"VALUES ('{job_id}', 'a', 'generate', 0, '{state}', '{{}}', false, {created})")
    queue = JobQueue(database)
    assert JobQueue(Database(db_url)).recover() == ["old-running"]  # a claim without a lease holds nothing
    assert queue.get("old-running", None).error == RESTART_REASON
    job = queue.claim_next()
    assert (job.id, job.attempts, job.claimed_by) == ("old-queued", 1, queue.instance_id)
    assert queue.finish(job.id, "succeeded") and queue.get(job.id, None).state == "succeeded"


def test_a_job_another_server_runs_is_followed_and_cancelled_from_this_one(gf_home):
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    def studio() -> Studio:  # two servers on one database: the same home's SQLite file
        return Studio(Settings(home=gf_home, default_model="tiny-sd", device="cpu", guard={"policy": "off"},
                               jobs={"lease_s": 3}))

    running, front = studio(), studio()
    running.start_workers()
    try:
        # `front` has no workers: whatever is submitted through it runs on the other server.
        with TestClient(create_app(front, start_workers=False, mount_ui=False)) as client:
            long = client.post("/v1/jobs", json={"prompt": "a long job", "steps": 150, "n_iter": 8, "width": 32,
                                                 "height": 32}).json()["id"]
            steps, done = [], None
            for name, data in events(client, long):
                if name == "progress" and data.get("step"):
                    steps.append(data["step"])
                    if len(steps) == 2:
                        view = client.get(f"/v1/jobs/{long}").json()
                        assert view["state"] == "running" and view["progress"]["step"] >= steps[0], view
                        assert client.delete(f"/v1/jobs/{long}").status_code == 200
                done = data if name == "done" else done
            assert steps[1] > steps[0] >= 1  # progress read from the database, as the worker saved it
            assert done["state"] == "cancelled", done
            assert running.jobs.get(long, None).claimed_by == running.jobs.instance_id
            tiny = client.post("/v1/jobs", json={"prompt": "a red circle", "steps": 1, "width": 32, "height": 32,
                                                 "seed": 1}).json()["id"]
            assert [data["state"] for name, data in events(client, tiny) if name == "done"] == ["succeeded"]

            # Another server takes the next long job over (as its recovery would after this one's lease ran out):
            # this server's worker stops it within a heartbeat and records nothing, so the job after it runs.
            taken = client.post("/v1/jobs", json={"prompt": "taken over", "steps": 150, "n_iter": 8, "width": 32,
                                                  "height": 32}).json()["id"]
            wait_for(lambda: (running.jobs.get(taken, None).progress or {}).get("step"))
            with running.database.engine.begin() as conn:
                conn.execute(update(running.jobs.tables.jobs).where(running.jobs.tables.jobs.c.id == taken)
                             .values(claimed_by="elsewhere", lease_until=time.time() + 60))
            # Within a heartbeat or so; left to run, it would go on for tens of seconds.
            wait_for(lambda: not running.runs_here(taken), timeout=10)
            after = client.post("/v1/jobs", json={"prompt": "after", "steps": 1, "width": 32, "height": 32,
                                                  "seed": 2}).json()["id"]
            wait_for(lambda: running.jobs.get(after, None).state == "succeeded")
            job = running.jobs.get(taken, None)
            assert (job.state, job.claimed_by, job.images, job.attempts) == ("running", "elsewhere", [], 1)
    finally:
        running.stop_workers()


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def events(client, job_id: str):
    """(event name, data) of a job's server-sent events, until the stream ends."""
    name = None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                yield name, json.loads(line[5:])


def test_two_servers_on_one_postgres_one_killed_mid_run_every_job_ends_once(tmp_path, tiny_model_dir, postgres):
    url = new_postgres_database(postgres)
    home = make_home(tmp_path, tiny_model_dir)
    env = server_env(home, GUARDFORGE_DATABASE_URL=url, GUARDFORGE_JOBS__LEASE_S="3",
                     GUARDFORGE_JOBS__REQUEUE_RUNNING_ON_RESTART="true")
    servers = [LiveServer(home, env) for _ in range(2)]
    for server in servers:  # both start at once: the start-up is most of this test's time
        server.launch()
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [server.stop() for server in servers])
        for server in servers:
            server.wait_ready()
        clients = [stack.enter_context(httpx.Client(base_url=server.url, timeout=60)) for server in servers]
        # First in line, long enough to be mid-run when its server is killed; then 39 short ones through both.
        long = clients[0].post("/v1/jobs", json={"prompt": "long", "steps": 150, "width": 32, "height": 32,
                                                 "seed": 1}).json()["id"]
        ids = [long] + [clients[i % 2].post("/v1/jobs", json={"prompt": f"job {i}", "steps": 1, "width": 32,
                                                               "height": 32, "seed": i}).json()["id"]
                        for i in range(39)]
        queue = JobQueue(Database(url))
        deadline = time.monotonic() + 120
        while not ((job := queue.get(long, None)).progress or {}).get("step"):
            assert time.monotonic() < deadline and job.state in ("queued", "running"), job
            time.sleep(0.1)
        victim = next(i for i, server in enumerate(servers) if f":{server.process.pid}:" in job.claimed_by)
        servers[victim].kill()
        killed_at = time.time()
        survivor = clients[1 - victim]
        deadline = time.monotonic() + 120
        while any((jobs := {i: queue.get(i, None) for i in ids})[i].state not in ("succeeded", "failed")
                  for i in ids):
            assert time.monotonic() < deadline, {i: j.state for i, j in jobs.items()}
            time.sleep(0.2)
        # Every job ended once, succeeded; only the killed server's running job was claimed twice, after it died.
        assert {i: j.state for i, j in jobs.items()} == {i: "succeeded" for i in ids}
        assert {i: j.attempts for i, j in jobs.items() if i != long} == {i: 1 for i in ids if i != long}
        again = jobs[long]
        assert again.attempts == 2 and again.started_at > killed_at
        assert f":{servers[1 - victim].process.pid}:" in again.claimed_by
        assert survivor.get(f"/v1/jobs/{long}").json()["result"]["images"]
