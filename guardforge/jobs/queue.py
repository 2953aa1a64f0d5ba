"""The persistent job queue: FIFO within priority, stored through SQLAlchemy (SQLite file or PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url

from guardforge.errors import GuardforgeError
from guardforge.jobs.results import JobResult, parse_result

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
RESTART_REASON = "the server stopped while this job was running"
CANCELLED_BY_STOP = "cancelled (the server stopped before the job did)"


class QueueFull(GuardforgeError):
    """The queue already holds its maximum of waiting jobs (HTTP 429)."""


class JobNotFound(GuardforgeError, LookupError):
    """No job (or image) of that id belongs to the caller (HTTP 404)."""


class TooManyActiveJobs(GuardforgeError):
    """The caller already has its maximum of queued and running jobs (HTTP 429)."""


class ImageGone(JobNotFound):
    """The image existed, but its pixels were deleted (save_images=false once answered, or retention; HTTP 410)."""


# What purge() takes out of a generate job's payload: the caller's pixels, megabytes of base64 each.
PAYLOAD_IMAGE_FIELDS = ("init_image", "mask")
PURGED_KEY = "purged_at"  # in the payload of a purged job: when its pixels were dropped


metadata = MetaData()

jobs_table = Table(
    "gf_jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # "generate" or "dreambooth": what the payload is
    Column("priority", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False, index=True),
    # JSON: generate {"request": GenerationRequest, "save": bool};
    # dreambooth {"request": DreamBoothConfig as submitted, "resume": bool, "export_name": str,
    #             "output_dir": str (resolved; never shown to the caller)}
    Column("payload", Text, nullable=False),
    Column("result", Text),  # JSON summary of the result, without pixels
    Column("error", Text),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
)

images_table = Table(
    "gf_images", metadata,
    Column("id", String(32), primary_key=True),
    Column("job_id", String(32), nullable=False, index=True),
    Column("owner", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("action", String(8), nullable=False),
    Column("path", Text),  # saved by the OutputStore
    Column("data", Text),  # base64 PNG when the caller asked not to save (A1111's save_images=false)
)


# The reads every status poll makes, built once: building a statement costs more CPU than running it on
# SQLite, and a server answers these tens of times a second per poller.
_JOB_BY_ID = select(jobs_table).where(jobs_table.c.id == bindparam("job_id"))
_POSITION = select(func.count()).select_from(jobs_table).where(
    jobs_table.c.state == "queued",
    (jobs_table.c.priority > bindparam("priority"))
    | ((jobs_table.c.priority == bindparam("priority")) & (jobs_table.c.created_at < bindparam("created_at"))),
)
_IMAGES_OF_JOB = (select(images_table.c.id, images_table.c.idx, images_table.c.action)
                  .where(images_table.c.job_id == bindparam("job_id")).order_by(images_table.c.idx))


def _active_query(by_owner: bool, by_kind: bool):
    query = select(jobs_table).where(jobs_table.c.state.in_(("running", "queued")))
    if by_owner:
        query = query.where(jobs_table.c.owner == bindparam("owner"))
    if by_kind:
        query = query.where(jobs_table.c.kind == bindparam("kind"))
    return query.order_by((jobs_table.c.state == "running").desc(), jobs_table.c.priority.desc(),
                          jobs_table.c.created_at).limit(1)


_DEPTH = select(func.count()).select_from(jobs_table).where(jobs_table.c.state == "queued")  # /readyz, /metrics
# A1111's /progress polls this one: (owner given, kind given) -> statement.
_ACTIVE_FOR = {(o, k): _active_query(o, k) for o in (False, True) for k in (False, True)}


@dataclass
class Job:
    id: str
    owner: str
    kind: str
    priority: int
    state: JobState
    payload: dict[str, Any]
    result: JobResult | None  # set once the job succeeded
    error: str | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    position: int | None = None  # 0 = next to run; only for queued jobs
    images: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StoredImage:
    id: str
    job_id: str
    owner: str
    index: int
    action: str
    path: str | None
    data: str | None


def make_engine(url: str, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout (how long a write waits for another writer's
    lock before "database is locked") so the worker and the routes can share it."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # WAL lets readers go on while the worker writes
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Purged pixels (purge()) are zeroed, not left readable in free pages of the file.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class JobQueue:
    """Jobs in a database table; `claim_next` hands the oldest job of the highest priority to one worker."""

    def __init__(self, engine: Engine, max_queue: int = 100, requeue_running_on_restart: bool = False):
        self.engine = engine
        self.max_queue = max_queue
        self.requeue_running_on_restart = requeue_running_on_restart
        # Serialises submit's count-then-insert within this process; across processes the cap is soft.
        self._submit_lock = threading.Lock()
        metadata.create_all(engine)

    # -- writing -------------------------------------------------------------------------------------
    def submit(self, kind: str, payload: dict[str, Any], owner: str, priority: int = 0,
               max_active_for_owner: int | None = None) -> str:
        job_id = uuid.uuid4().hex
        with self._submit_lock, self.engine.begin() as conn:
            queued = conn.execute(select(func.count()).select_from(jobs_table)
                                  .where(jobs_table.c.state == "queued")).scalar_one()
            if queued >= self.max_queue:
                raise QueueFull(f"the queue is full ({queued} jobs waiting); try again later")
            if max_active_for_owner is not None:
                active = conn.execute(select(func.count()).select_from(jobs_table).where(
                    jobs_table.c.owner == owner, jobs_table.c.state.in_(("queued", "running")))).scalar_one()
                if active >= max_active_for_owner:
                    raise TooManyActiveJobs(
                        f"you already have {active} jobs queued or running (limit {max_active_for_owner})")
            conn.execute(jobs_table.insert().values(
                id=job_id, owner=owner, kind=kind, priority=priority, state="queued",
                payload=json.dumps(payload), cancel_requested=False, created_at=time.time(),
            ))
        return job_id

    def claim_next(self) -> Job | None:
        """Mark the next queued job running and return it; None when nothing waits."""
        while True:
            with self.engine.begin() as conn:
                row = conn.execute(
                    select(jobs_table.c.id).where(jobs_table.c.state == "queued")
                    .order_by(jobs_table.c.priority.desc(), jobs_table.c.created_at, jobs_table.c.id)
                    .limit(1)
                ).first()
                if row is None:
                    return None
                # The conditional update makes the claim safe if another worker took the same row.
                claimed = conn.execute(
                    update(jobs_table).where(jobs_table.c.id == row.id, jobs_table.c.state == "queued")
                    .values(state="running", started_at=time.time())
                ).rowcount
            if claimed:
                return self._get(row.id)

    def unclaim(self, job_id: str) -> None:
        """Put a job claimed a moment ago back in the queue, in its old place (a stop began during the claim)."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id, jobs_table.c.state == "running")
                         .values(state="queued", started_at=None))

    def finish(self, job_id: str, state: JobState, result: JobResult | None = None,
               error: str | None = None, images: list[StoredImage] = ()) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(
                state=state, result=result.model_dump_json() if result is not None else None, error=error,
                finished_at=time.time(),
            ))
            for image in images:
                conn.execute(images_table.insert().values(
                    id=image.id, job_id=image.job_id, owner=image.owner, idx=image.index,
                    action=image.action, path=image.path, data=image.data,
                ))

    def cancel(self, job_id: str, owner: str | None) -> Job:
        """Cancel a queued job now; flag a running one (its worker stops it between steps)."""
        job = self.get(job_id, owner)
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs_table).where(
                jobs_table.c.id == job_id, jobs_table.c.state == "queued",
            ).values(state="cancelled", error="cancelled before it started", finished_at=time.time())).rowcount
            if not done:
                conn.execute(update(jobs_table).where(
                    jobs_table.c.id == job_id, jobs_table.c.state == "running",
                ).values(cancel_requested=True))
        return self._get(job.id)

    def recover(self) -> list[str]:
        """At start-up: jobs left running by a dead server are failed with a reason, or re-queued; those the
        user had asked to cancel end cancelled."""
        with self.engine.begin() as conn:
            ids = [r.id for r in conn.execute(select(jobs_table.c.id).where(jobs_table.c.state == "running"))]
            if ids:
                self._end_stopped(conn, jobs_table.c.id.in_(ids))
        return ids

    def release(self, job_id: str) -> str:
        """A running job stopped by a graceful shutdown: treated as recover() would after a crash; returns the
        state it ends in."""
        with self.engine.begin() as conn:
            self._end_stopped(conn, jobs_table.c.id == job_id)
            row = conn.execute(select(jobs_table.c.state).where(jobs_table.c.id == job_id)).first()
        return row.state if row else "failed"

    def _end_stopped(self, conn, which) -> None:
        running = (jobs_table.c.state == "running") & which
        # A cancel the worker never got to act on still stands: re-queueing it would run what the user stopped.
        conn.execute(update(jobs_table).where(running, jobs_table.c.cancel_requested.is_(True)).values(
            state="cancelled", error=CANCELLED_BY_STOP, finished_at=time.time()))
        if self.requeue_running_on_restart:
            values = dict(state="queued", started_at=None)
        else:
            values = dict(state="failed", error=RESTART_REASON, finished_at=time.time())
        conn.execute(update(jobs_table).where(running).values(**values))

    def purge(self, job_id: str | None = None, finished_before: float | None = None) -> int:
        """Drop the pixels of ended jobs: the base64 images kept in the database for them (files in the outputs
        folder are the user's and stay) and the init image and mask in their payload. The job rows, their
        results (infotexts, verdicts) and the image rows stay, so history and audit do; the payload gets
        `purged_at`. Queued and running jobs are never touched: a worker needs their payloads.

        `job_id`: that one job; `finished_before`: every job that ended before this time. Returns how many jobs
        were purged (a job already purged is not counted again)."""
        if job_id is None and finished_before is None:
            raise ValueError("purge needs a job id or a time")
        which = jobs_table.c.state.in_(TERMINAL) & ~jobs_table.c.payload.contains(
            f'"{PURGED_KEY}"', autoescape=True)  # json.dumps escapes quotes inside values, so only the key matches
        if job_id is not None:
            which &= jobs_table.c.id == job_id
        if finished_before is not None:
            which &= jobs_table.c.finished_at < finished_before
        now = time.time()
        purged = 0
        with self.engine.connect() as conn:
            ids = [row.id for row in conn.execute(select(jobs_table.c.id).where(which))]
        # One job per transaction: a payload may be megabytes, and SQLite's write lock is the workers' too.
        for candidate in ids:
            with self.engine.begin() as conn:
                row = conn.execute(select(jobs_table.c.kind, jobs_table.c.payload)
                                   .where(which & (jobs_table.c.id == candidate))).first()
                if row is None:  # purged meanwhile by another caller
                    continue
                payload = json.loads(row.payload)
                request = payload.get("request")
                if row.kind == "generate" and isinstance(request, dict):
                    for key in PAYLOAD_IMAGE_FIELDS:
                        if request.get(key) is not None:
                            request[key] = None
                payload[PURGED_KEY] = now
                conn.execute(update(jobs_table).where(jobs_table.c.id == candidate)
                             .values(payload=json.dumps(payload)))
                conn.execute(update(images_table).where(images_table.c.job_id == candidate,
                                                        images_table.c.data.is_not(None)).values(data=None))
                purged += 1
        return purged

    # -- reading -------------------------------------------------------------------------------------
    def get(self, job_id: str, owner: str | None) -> Job:
        """The job, if `owner` may see it (None: any owner)."""
        job = self._get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def list(self, owner: str | None, limit: int = 50, state: str | None = None,
             kind: str | None = None) -> list[Job]:
        query = select(jobs_table).order_by(jobs_table.c.created_at.desc()).limit(limit)
        if owner is not None:
            query = query.where(jobs_table.c.owner == owner)
        if state is not None:
            query = query.where(jobs_table.c.state == state)
        if kind is not None:
            query = query.where(jobs_table.c.kind == kind)
        with self.engine.connect() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def active_for(self, owner: str | None, kind: str | None = None) -> Job | None:
        """The caller's running job, else its next queued one (A1111's /progress reports one job)."""
        with self.engine.connect() as conn:
            row = conn.execute(_ACTIVE_FOR[owner is not None, kind is not None],
                               {"owner": owner, "kind": kind}).first()
            return self._complete(conn, self._job(row)) if row else None

    def active(self, kind: str | None = None) -> list[Job]:
        """Every queued or running job (of `kind`), any owner."""
        query = select(jobs_table).where(jobs_table.c.state.in_(("running", "queued")))
        if kind is not None:
            query = query.where(jobs_table.c.kind == kind)
        with self.engine.connect() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def depth(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(_DEPTH).scalar_one()

    def image(self, image_id: str, owner: str | None) -> StoredImage:
        with self.engine.connect() as conn:
            row = conn.execute(select(images_table).where(images_table.c.id == image_id)).first()
        if row is None or (owner is not None and row.owner != owner):
            raise JobNotFound(f"no image {image_id!r}")
        if row.path is None and row.data is None and row.action != "block":
            # A delivered image with neither a file nor pixels: purge() dropped them (the worker stores one or
            # the other for every image the guard let through).
            raise ImageGone(f"image {image_id!r} is no longer kept: its job's image data was deleted (an A1111 "
                            "call with save_images=false keeps nothing once answered; other jobs' data goes "
                            "after jobs.retention_hours or `guardforge jobs prune`)")
        return StoredImage(row.id, row.job_id, row.owner, row.idx, row.action, row.path, row.data)

    def _get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(_JOB_BY_ID, {"job_id": job_id}).first()
            return self._complete(conn, self._job(row)) if row else None

    @staticmethod
    def _complete(conn, job: Job) -> Job:
        """`job` with its place in the queue (queued) or its images (ended), read in the same transaction."""
        if job.state == "queued":
            job.position = conn.execute(_POSITION, {"priority": job.priority,
                                                    "created_at": job.created_at}).scalar_one()
        if job.state in TERMINAL:
            job.images = [{"id": r.id, "index": r.idx, "action": r.action}
                          for r in conn.execute(_IMAGES_OF_JOB, {"job_id": job.id})]
        return job

    @staticmethod
    def _job(row) -> Job:
        return Job(
            id=row.id, owner=row.owner, kind=row.kind, priority=row.priority, state=row.state,
            payload=json.loads(row.payload),
            result=parse_result(row.kind, json.loads(row.result)) if row.result else None,
            error=row.error, cancel_requested=bool(row.cancel_requested), created_at=row.created_at,
            started_at=row.started_at, finished_at=row.finished_at,
        )
