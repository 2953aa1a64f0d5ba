"""The job queue and key store on a real SQLite file and PostgreSQL: order, caps, ownership, recovery, keys."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine

from guardforge.access.keys import KeyNotFound, KeyStore
from guardforge.db import Database
from guardforge.jobs.queue import RESTART_REASON, ImageRef, JobNotFound, JobQueue, QueueFull, TooManyActiveJobs
from guardforge.jobs.results import GenerationJobResult, ImageResult
from tests.livesrv import ThrowawayPostgres


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server (trust auth, loopback) when its binaries are installed."""
    server = ThrowawayPostgres()
    yield server.url
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The same tests on a SQLite file and on PostgreSQL: one queue implementation, two URLs."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'jobs.db'}"
    return new_postgres_database(request.getfixturevalue("postgres"))


def new_postgres_database(server: str) -> str:
    """The URL of a new, empty database on the throwaway server."""
    name = f"gf_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"{server}/{name}"


def test_fifo_within_priority_and_survives_reopen(db_url):
    queue = JobQueue(Database(db_url))
    first = queue.submit("generate", {"n": 1}, owner="a")
    second = queue.submit("generate", {"n": 2}, owner="a")
    urgent = queue.submit("generate", {"n": 3}, owner="b", priority=5)
    assert queue.get(second, "a").position == 2
    # A fresh engine on the same file sees the same jobs: nothing lives only in memory.
    reopened = JobQueue(Database(db_url))
    order = [reopened.claim_next().id for _ in range(3)]
    assert order == [urgent, first, second]
    assert reopened.claim_next() is None
    assert reopened.get(first, None).state == "running"


def test_max_queue_and_per_owner_cap(db_url):
    queue = JobQueue(Database(db_url), max_queue=2)
    queue.submit("generate", {}, owner="a", max_active_for_owner=1)
    with pytest.raises(TooManyActiveJobs):
        queue.submit("generate", {}, owner="a", max_active_for_owner=1)
    queue.submit("generate", {}, owner="b")
    with pytest.raises(QueueFull):
        queue.submit("generate", {}, owner="c")
    queue.claim_next()  # running jobs do not count against the queue size
    queue.submit("generate", {}, owner="c")


def test_owner_sees_and_cancels_only_its_jobs(db_url):
    queue = JobQueue(Database(db_url))
    job = queue.submit("generate", {}, owner="a")
    with pytest.raises(JobNotFound):
        queue.get(job, "b")
    with pytest.raises(JobNotFound):
        queue.cancel(job, "b")
    assert [j.id for j in queue.list("b")] == []
    assert queue.cancel(job, "a").state == "cancelled"
    assert queue.claim_next() is None


def test_cancel_running_sets_the_flag(db_url):
    queue = JobQueue(Database(db_url))
    job = queue.submit("generate", {}, owner="a")
    queue.claim_next()
    cancelled = queue.cancel(job, "a")
    assert cancelled.state == "running" and cancelled.cancel_requested


@pytest.mark.parametrize("requeue", [False, True])
def test_recover_running_jobs_after_a_crash(db_url, requeue):
    queue = JobQueue(Database(db_url), lease_s=0.2)
    running = queue.submit("generate", {}, owner="a")
    waiting = queue.submit("generate", {}, owner="a")
    assert queue.claim_next().id == running
    # A new process on the same database, as after SIGKILL: the dead one renews no lease.
    restarted = JobQueue(Database(db_url), requeue_running_on_restart=requeue)
    time.sleep(0.25)
    assert restarted.recover() == [running]
    job = restarted.get(running, None)
    if requeue:
        assert job.state == "queued" and restarted.claim_next().id == running
    else:
        assert job.state == "failed" and job.error == RESTART_REASON
        assert restarted.claim_next().id == waiting


@pytest.mark.parametrize("requeue", [False, True])
def test_a_cancel_requested_job_ends_cancelled_after_a_crash_or_a_stop(db_url, requeue):
    queue = JobQueue(Database(db_url), requeue_running_on_restart=requeue, lease_s=0.2)
    crashed, stopped, other = (queue.submit("generate", {}, owner="a") for _ in range(3))
    for _ in range(3):
        queue.claim_next()
    # The user cancelled both while they ran; the server died (or stopped) before the worker acted on it.
    queue.cancel(crashed, "a")
    queue.cancel(stopped, "a")
    assert queue.release(stopped) == "cancelled"
    restarted = JobQueue(Database(db_url), requeue_running_on_restart=requeue)
    time.sleep(0.25)  # the first server's leases run out
    assert sorted(restarted.recover()) == sorted([crashed, other])
    for job_id in (crashed, stopped):
        job = restarted.get(job_id, None)
        assert job.state == "cancelled" and job.finished_at is not None, job
    # The job nobody cancelled is treated as before: re-queued, or failed with the reason.
    assert restarted.get(other, None).state == ("queued" if requeue else "failed")
    assert [j.id for j in iter(restarted.claim_next, None)] == ([other] if requeue else [])


def test_keys_are_hashed_verified_and_revoked(db_url):
    store = KeyStore(Database(db_url))
    key, plaintext = store.create("alice")
    assert store.verify(plaintext) == key.id
    assert store.verify(plaintext[:-1] + ("x" if plaintext[-1] != "x" else "y")) is None
    assert store.verify("not-a-key") is None
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT salt, hash FROM gf_api_keys").all()
    assert plaintext.split("_", 2)[2] not in str(stored)  # only salt and scrypt hash are kept
    store.revoke(key.id)
    assert store.verify(plaintext) is None
    with pytest.raises(KeyNotFound):
        store.revoke("nope")


def test_finish_records_images_for_the_owner(db_url):
    from guardforge.jobs.queue import StoredImage

    queue = JobQueue(Database(db_url))
    job = queue.submit("generate", {}, owner="a")
    queue.claim_next()
    queue.finish(job, "succeeded", result=GenerationJobResult(model="m"),
                 images=[StoredImage("img1", job, "a", 0, "allow", None, "aGk=")])
    assert queue.get(job, "a").images == [ImageRef("img1", 0, "allow")]
    assert queue.image("img1", "a").data == "aGk="
    with pytest.raises(JobNotFound):
        queue.image("img1", "b")
    assert queue.get(job, "a").finished_at <= time.time()


def test_verified_keys_cache_is_bounded_and_forgets_a_revoked_key(tmp_path):
    store = KeyStore(Database(f"sqlite:///{tmp_path / 'keys.db'}"), cache_size=2)
    made = [store.create(name) for name in ("a", "b", "c")]
    for key, plaintext in made:
        assert store.verify(plaintext) == key.id
    assert len(store._verified) == 2  # the oldest check was dropped; a busy server's memory stays flat
    assert store.verify(made[0][1]) == made[0][0].id  # dropped from the cache, still a good key
    store.revoke(made[2][0].id)
    assert store.verify(made[2][1]) is None and len(store._verified) == 1
    # Revoked from another process (the CLI), with this process's cache still holding the key: refused at once.
    KeyStore(store.database).revoke(made[0][0].id)
    assert store.verify(made[0][1]) is None


def test_a_keys_table_from_before_max_priority_keeps_working(db_url):
    # A database made by the first release: gf_api_keys without max_priority, one live key in it.
    from guardforge.access.keys import _hash

    database = Database(db_url)
    salt = b"0123456789abcdef"
    with database.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE gf_api_keys (id VARCHAR(16) PRIMARY KEY, name VARCHAR(128) NOT NULL, "
                             "salt VARCHAR(64) NOT NULL, hash VARCHAR(128) NOT NULL, created_at FLOAT NOT NULL, "
                             "revoked_at FLOAT)")
        conn.exec_driver_sql("INSERT INTO gf_api_keys (id, name, salt, hash, created_at) VALUES "
                             f"('0ldkey', 'old', '{salt.hex()}', '{_hash('s3cret', salt)}', 1.0)")
    store = KeyStore(database)
    old = store.check("gf_0ldkey_s3cret")
    assert old is not None and old.id == "0ldkey" and old.max_priority == 0
    key, plaintext = store.create("urgent", max_priority=7)
    assert store.check(plaintext).max_priority == 7 and key.max_priority == 7
    assert KeyStore(Database(db_url)).check(plaintext).max_priority == 7  # a second open finds the column
    assert [k.max_priority for k in store.list()] == [0, 7]
    with pytest.raises(ValueError, match="between 0 and 100"):
        store.create("greedy", max_priority=101)


def test_purge_drops_only_the_pixels_of_ended_jobs_old_enough(db_url):
    from sqlalchemy import update

    from guardforge.jobs.queue import ImageGone, StoredImage

    queue = JobQueue(Database(db_url))
    payload = {"request": {"prompt": "p", "init_image": "SU5JVA==", "mask": "TUFTSw=="}, "save": False}

    def ended(owner: str, ended_hours_ago: float) -> str:
        job = queue.submit("generate", payload, owner=owner)
        queue.claim_next()
        queue.finish(job, "succeeded", result=GenerationJobResult(model="m", images=[ImageResult(image_id=f"img-{owner}", seed=2, infotext=f"{owner}, Steps: 2", width=8, height=8)]),
                     images=[StoredImage(f"img-{owner}", job, owner, 0, "allow", None, "UElYRUxT"),
                             StoredImage(f"blk-{owner}", job, owner, 1, "block", None, None)])
        with queue.engine.begin() as conn:  # as if it had ended that long ago
            conn.execute(update(queue.tables.jobs).where(queue.tables.jobs.c.id == job)
                         .values(finished_at=time.time() - ended_hours_ago * 3600))
        return job

    old, recent = ended("old", 48), ended("recent", 1)
    running = queue.submit("generate", payload, owner="running")
    queue.claim_next()
    queued = queue.submit("generate", payload, owner="queued")

    assert queue.purge(finished_before=time.time() - 24 * 3600) == 1
    job = queue.get(old, None)
    assert job.payload["request"]["init_image"] is None and job.payload["request"]["mask"] is None
    assert job.payload["request"]["prompt"] == "p" and job.payload["purged_at"] <= time.time()
    # The history stays: the row, its result (infotexts) and its image rows.
    assert job.state == "succeeded" and job.result.images[0].infotext == "old, Steps: 2"
    assert [i.id for i in job.images] == ["img-old", "blk-old"]
    with pytest.raises(ImageGone, match="no longer kept"):
        queue.image("img-old", "old")
    assert queue.image("blk-old", "old").action == "block"  # withheld, not purged: the guard's reason stands
    assert queue.image("img-recent", "recent").data == "UElYRUxT"
    assert queue.get(recent, None).payload == payload

    # Even "everything that ended before tomorrow" leaves running and queued jobs whole: a worker needs them.
    assert queue.purge(finished_before=time.time() + 24 * 3600) == 1  # the recent one; the old one is done
    assert queue.purge(job_id=running) == 0 and queue.purge(job_id=queued) == 0
    assert queue.get(running, None).payload == payload and queue.get(running, None).state == "running"
    assert queue.get(queued, None).payload == payload and queue.get(queued, None).state == "queued"
    with pytest.raises(ImageGone):
        queue.image("img-recent", "recent")
    # Once it has ended, the job's own purge works.
    queue.finish(running, "succeeded", result=GenerationJobResult(model="m"))
    assert queue.purge(job_id=running) == 1 and queue.get(running, None).payload["request"]["init_image"] is None
