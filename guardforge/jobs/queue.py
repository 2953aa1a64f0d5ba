"""The persistent job queue: FIFO within priority, stored through SQLAlchemy (SQLite file or PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
import uuid
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
    func,
    select,
    update,
)

from guardforge.db import Database
from guardforge.errors import GuardforgeError, InvalidRequest
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


# What purge() takes out of a generate job's payload: the caller's pixels, megabytes of base64 each (and each
# ControlNet unit's image).
PAYLOAD_IMAGE_FIELDS = ("init_image", "mask")
PURGED_KEY = "purged_at"  # in the payload of a purged job: when its pixels were dropped


class JobTables:
    """The queue's two tables, with the reads every status poll makes built once: building a statement costs
    more CPU than running it on SQLite, and a server answers these tens of times a second per poller."""

    def __init__(self, jobs: Table, images: Table) -> None:
        self.jobs = jobs
        self.images = images
        self.job_by_id = select(jobs).where(jobs.c.id == bindparam("job_id"))
        self.position = select(func.count()).select_from(jobs).where(
            jobs.c.state == "queued",
            (jobs.c.priority > bindparam("priority"))
            | ((jobs.c.priority == bindparam("priority")) & (jobs.c.created_at < bindparam("created_at"))),
        )
        self.images_of_job = (select(images.c.id, images.c.idx, images.c.action)
                              .where(images.c.job_id == bindparam("job_id")).order_by(images.c.idx))
        self.depth = select(func.count()).select_from(jobs).where(jobs.c.state == "queued")  # /readyz, /metrics
        # A1111's /progress polls this one: (owner given, kind given) -> statement.
        self.active_for = {(o, k): self._active_query(o, k) for o in (False, True) for k in (False, True)}

    def _active_query(self, by_owner: bool, by_kind: bool):
        jobs = self.jobs
        query = select(jobs).where(jobs.c.state.in_(("running", "queued")))
        if by_owner:
            query = query.where(jobs.c.owner == bindparam("owner"))
        if by_kind:
            query = query.where(jobs.c.kind == bindparam("kind"))
        return query.order_by((jobs.c.state == "running").desc(), jobs.c.priority.desc(),
                              jobs.c.created_at).limit(1)


def job_tables(metadata: MetaData) -> JobTables:
    """The queue's tables, added to `metadata` (one database's; see Database.define)."""
    jobs = Table(
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
    images = Table(
        "gf_images", metadata,
        Column("id", String(32), primary_key=True),
        Column("job_id", String(32), nullable=False, index=True),
        Column("owner", String(64), nullable=False),
        Column("idx", Integer, nullable=False),
        Column("action", String(8), nullable=False),
        Column("path", Text),  # saved by the OutputStore
        Column("data", Text),  # base64 PNG when the caller asked not to save (A1111's save_images=false)
    )
    return JobTables(jobs, images)


@dataclass(frozen=True)
class ImageRef:
    """One image row of an ended job: its id, its place in the result's images, what the guard did to it."""

    id: str
    index: int
    action: str


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
    images: list[ImageRef] = field(default_factory=list)


@dataclass
class StoredImage:
    id: str
    job_id: str
    owner: str
    index: int
    action: str
    path: str | None
    data: str | None


class JobQueue:
    """Jobs in a database table; `claim_next` hands the oldest job of the highest priority to one worker."""

    def __init__(self, database: Database, max_queue: int = 100, requeue_running_on_restart: bool = False):
        self.database = database
        self.engine = database.engine
        self.tables = database.define(job_tables)
        self._jobs, self._images = self.tables.jobs, self.tables.images
        self.max_queue = max_queue
        self.requeue_running_on_restart = requeue_running_on_restart
        # Serialises submit's count-then-insert within this process; across processes the cap is soft.
        self._submit_lock = threading.Lock()
        database.create(self._jobs, self._images)

    # -- writing -------------------------------------------------------------------------------------
    def submit(self, kind: str, payload: dict[str, Any], owner: str, priority: int = 0,
               max_active_for_owner: int | None = None) -> str:
        job_id = uuid.uuid4().hex
        with self._submit_lock, self.engine.begin() as conn:
            queued = conn.execute(select(func.count()).select_from(self._jobs)
                                  .where(self._jobs.c.state == "queued")).scalar_one()
            if queued >= self.max_queue:
                raise QueueFull(f"the queue is full ({queued} jobs waiting); try again later")
            if max_active_for_owner is not None:
                active = conn.execute(select(func.count()).select_from(self._jobs).where(
                    self._jobs.c.owner == owner, self._jobs.c.state.in_(("queued", "running")))).scalar_one()
                if active >= max_active_for_owner:
                    raise TooManyActiveJobs(
                        f"you already have {active} jobs queued or running (limit {max_active_for_owner})")
            conn.execute(self._jobs.insert().values(
                id=job_id, owner=owner, kind=kind, priority=priority, state="queued",
                payload=json.dumps(payload), cancel_requested=False, created_at=time.time(),
            ))
        return job_id

    def claim_next(self) -> Job | None:
        """Mark the next queued job running and return it; None when nothing waits."""
        while True:
            with self.engine.begin() as conn:
                row = conn.execute(
                    select(self._jobs.c.id).where(self._jobs.c.state == "queued")
                    .order_by(self._jobs.c.priority.desc(), self._jobs.c.created_at, self._jobs.c.id)
                    .limit(1)
                ).first()
                if row is None:
                    return None
                # The conditional update makes the claim safe if another worker took the same row.
                claimed = conn.execute(
                    update(self._jobs).where(self._jobs.c.id == row.id, self._jobs.c.state == "queued")
                    .values(state="running", started_at=time.time())
                ).rowcount
            if claimed:
                return self._get(row.id)

    def unclaim(self, job_id: str) -> None:
        """Put a job claimed a moment ago back in the queue, in its old place (a stop began during the claim)."""
        with self.engine.begin() as conn:
            conn.execute(update(self._jobs).where(self._jobs.c.id == job_id, self._jobs.c.state == "running")
                         .values(state="queued", started_at=None))

    def finish(self, job_id: str, state: JobState, result: JobResult | None = None,
               error: str | None = None, images: list[StoredImage] = ()) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(self._jobs).where(self._jobs.c.id == job_id).values(
                state=state, result=result.model_dump_json() if result is not None else None, error=error,
                finished_at=time.time(),
            ))
            for image in images:
                conn.execute(self._images.insert().values(
                    id=image.id, job_id=image.job_id, owner=image.owner, idx=image.index,
                    action=image.action, path=image.path, data=image.data,
                ))

    def cancel(self, job_id: str, owner: str | None) -> Job:
        """Cancel a queued job now; flag a running one (its worker stops it between steps)."""
        job = self.get(job_id, owner)
        with self.engine.begin() as conn:
            done = conn.execute(update(self._jobs).where(
                self._jobs.c.id == job_id, self._jobs.c.state == "queued",
            ).values(state="cancelled", error="cancelled before it started", finished_at=time.time())).rowcount
            if not done:
                conn.execute(update(self._jobs).where(
                    self._jobs.c.id == job_id, self._jobs.c.state == "running",
                ).values(cancel_requested=True))
        return self._get(job.id)

    def recover(self) -> list[str]:
        """At start-up: jobs left running by a dead server are failed with a reason, or re-queued; those the
        user had asked to cancel end cancelled."""
        with self.engine.begin() as conn:
            ids = [r.id for r in conn.execute(select(self._jobs.c.id).where(self._jobs.c.state == "running"))]
            if ids:
                self._end_stopped(conn, self._jobs.c.id.in_(ids))
        return ids

    def release(self, job_id: str) -> str:
        """A running job stopped by a graceful shutdown: treated as recover() would after a crash; returns the
        state it ends in."""
        with self.engine.begin() as conn:
            self._end_stopped(conn, self._jobs.c.id == job_id)
            row = conn.execute(select(self._jobs.c.state).where(self._jobs.c.id == job_id)).first()
        return row.state if row else "failed"

    def _end_stopped(self, conn, which) -> None:
        running = (self._jobs.c.state == "running") & which
        # A cancel the worker never got to act on still stands: re-queueing it would run what the user stopped.
        conn.execute(update(self._jobs).where(running, self._jobs.c.cancel_requested.is_(True)).values(
            state="cancelled", error=CANCELLED_BY_STOP, finished_at=time.time()))
        if self.requeue_running_on_restart:
            values = dict(state="queued", started_at=None)
        else:
            values = dict(state="failed", error=RESTART_REASON, finished_at=time.time())
        conn.execute(update(self._jobs).where(running).values(**values))

    def purge(self, job_id: str | None = None, finished_before: float | None = None) -> int:
        """Drop the pixels of ended jobs: the base64 images kept in the database for them (files in the outputs
        folder are the user's and stay) and the init image and mask in their payload. The job rows, their
        results (infotexts, verdicts) and the image rows stay, so history and audit do; the payload gets
        `purged_at`. Queued and running jobs are never touched: a worker needs their payloads.

        `job_id`: that one job; `finished_before`: every job that ended before this time. Returns how many jobs
        were purged (a job already purged is not counted again)."""
        if job_id is None and finished_before is None:
            raise ValueError("purge needs a job id or a time")
        which = self._jobs.c.state.in_(TERMINAL) & ~self._jobs.c.payload.contains(
            f'"{PURGED_KEY}"', autoescape=True)  # json.dumps escapes quotes inside values, so only the key matches
        if job_id is not None:
            which &= self._jobs.c.id == job_id
        if finished_before is not None:
            which &= self._jobs.c.finished_at < finished_before
        now = time.time()
        purged = 0
        with self.engine.connect() as conn:
            ids = [row.id for row in conn.execute(select(self._jobs.c.id).where(which))]
        # One job per transaction: a payload may be megabytes, and SQLite's write lock is the workers' too.
        for candidate in ids:
            with self.engine.begin() as conn:
                row = conn.execute(select(self._jobs.c.kind, self._jobs.c.payload)
                                   .where(which & (self._jobs.c.id == candidate))).first()
                if row is None:  # purged meanwhile by another caller
                    continue
                payload = json.loads(row.payload)
                request = payload.get("request")
                if row.kind == "grid" and isinstance(request, dict):  # a grid's base request holds its images
                    request = request.get("request")
                if row.kind in ("generate", "grid") and isinstance(request, dict):
                    for key in PAYLOAD_IMAGE_FIELDS:
                        if request.get(key) is not None:
                            request[key] = None
                    for unit in request.get("controlnet") or []:  # control images are the caller's pixels too
                        if isinstance(unit, dict) and unit.get("image") is not None:
                            unit["image"] = None
                    ip_adapter = request.get("ip_adapter")
                    if isinstance(ip_adapter, dict) and ip_adapter.get("image") is not None:
                        ip_adapter["image"] = None  # so is the IP-Adapter's picture
                payload[PURGED_KEY] = now
                conn.execute(update(self._jobs).where(self._jobs.c.id == candidate)
                             .values(payload=json.dumps(payload)))
                conn.execute(update(self._images).where(self._images.c.job_id == candidate,
                                                        self._images.c.data.is_not(None)).values(data=None))
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
        query = select(self._jobs).order_by(self._jobs.c.created_at.desc()).limit(limit)
        if owner is not None:
            query = query.where(self._jobs.c.owner == owner)
        if state is not None:
            query = query.where(self._jobs.c.state == state)
        if kind is not None:
            query = query.where(self._jobs.c.kind == kind)
        with self.engine.connect() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def results(self, owner: str | None, kind: str, since: float | None = None, until: float | None = None,
                limit: int = 1000) -> list[tuple[str, JobResult | None]]:
        """(id, result) of the newest jobs of `kind`, created in [since, until): what a filter over results
        reads, without the payloads (an img2img job's holds its init image, megabytes of base64)."""
        jobs = self._jobs
        query = select(jobs.c.id, jobs.c.result).where(jobs.c.kind == kind).order_by(jobs.c.created_at.desc())
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if since is not None:
            query = query.where(jobs.c.created_at >= since)
        if until is not None:
            query = query.where(jobs.c.created_at < until)
        with self.engine.connect() as conn:
            return [(row.id, parse_result(kind, json.loads(row.result)) if row.result else None)
                    for row in conn.execute(query.limit(limit))]

    def delete(self, job_id: str, owner: str | None) -> list[str]:
        """Remove an ended job of `owner` and its image rows; returns the paths of its saved files for the caller
        to remove. A queued or running job is refused: a worker holds it."""
        job = self.get(job_id, owner)
        if job.state not in TERMINAL:
            raise InvalidRequest(f"job {job_id!r} is {job.state}: cancel it first, then delete it")
        with self.engine.begin() as conn:
            paths = [row.path for row in conn.execute(select(self._images.c.path).where(
                self._images.c.job_id == job_id)) if row.path]
            conn.execute(self._images.delete().where(self._images.c.job_id == job_id))
            conn.execute(self._jobs.delete().where(self._jobs.c.id == job_id, self._jobs.c.state.in_(TERMINAL)))
        return paths

    def active_for(self, owner: str | None, kind: str | None = None) -> Job | None:
        """The caller's running job, else its next queued one (A1111's /progress reports one job)."""
        with self.engine.connect() as conn:
            row = conn.execute(self.tables.active_for[owner is not None, kind is not None],
                               {"owner": owner, "kind": kind}).first()
            return self._complete(conn, self._job(row)) if row else None

    def active(self, kind: str | None = None) -> list[Job]:
        """Every queued or running job (of `kind`), any owner."""
        query = select(self._jobs).where(self._jobs.c.state.in_(("running", "queued")))
        if kind is not None:
            query = query.where(self._jobs.c.kind == kind)
        with self.engine.connect() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def depth(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(self.tables.depth).scalar_one()

    def image(self, image_id: str, owner: str | None) -> StoredImage:
        with self.engine.connect() as conn:
            row = conn.execute(select(self._images).where(self._images.c.id == image_id)).first()
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
            row = conn.execute(self.tables.job_by_id, {"job_id": job_id}).first()
            return self._complete(conn, self._job(row)) if row else None

    def _complete(self, conn, job: Job) -> Job:
        """`job` with its place in the queue (queued) or its images (ended), read in the same transaction."""
        if job.state == "queued":
            job.position = conn.execute(self.tables.position, {"priority": job.priority,
                                                               "created_at": job.created_at}).scalar_one()
        if job.state in TERMINAL:
            job.images = [ImageRef(r.id, r.idx, r.action)
                          for r in conn.execute(self.tables.images_of_job, {"job_id": job.id})]
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
