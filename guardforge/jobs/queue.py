"""The persistent job queue: FIFO within priority, stored through SQLAlchemy (SQLite file or PostgreSQL)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
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
# How long a claim holds without renewal: a server whose worker stops renewing (dead, frozen, cut off from the
# database) loses its running jobs to the others' recovery after this long.
LEASE_S = 30.0
# Columns a gf_jobs table made by an older release lacks (before leases; before error_kind), added in place
# (name -> ALTER TABLE's type and default).
ADDED_COLUMNS = {"claimed_by": "VARCHAR(255)", "lease_until": "FLOAT", "attempts": "INTEGER NOT NULL DEFAULT 0",
                 "progress": "TEXT", "error_kind": "VARCHAR(64)"}


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
        # The claim: the server instance (instance_id()) whose worker runs or ran the job, and until when its
        # claim holds unless renewed; the times it was claimed; its latest progress event (JSON), so that a
        # server other than the one running it can show it.
        Column("claimed_by", String(255)),
        Column("lease_until", Float),
        Column("attempts", Integer, nullable=False, default=0, server_default="0"),
        Column("progress", Text),
        # A failed job's error class when the failure was the caller's (its model or LoRA left the folder between
        # submit and run: guardforge.errors.CALLER_ERRORS), so that an interface waiting on it answers as it would
        # have at submit, not with a server error.
        Column("error_kind", String(64)),
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


def instance_id() -> str:
    """A server instance's name in its claims, `host:pid namespace:pid:random`, new at each start: the random
    part tells apart two instances of one process (tests) or a pid the system gave out again."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}:{secrets.token_hex(4)}"


def _pid_namespace() -> str:
    # Two containers on one host may share a host name but not a pid namespace: a pid means something only
    # within its namespace.
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return ""


def owner_is_dead(claimed_by: str | None) -> bool:
    """Whether the instance that made a claim has certainly exited: it ran on this host, in this pid namespace,
    and its process is gone. False whenever that is not knowable (another host, another namespace, this very
    process, a pid the system reused): then only the lease's expiry frees the claim."""
    if not claimed_by or claimed_by.count(":") < 3:
        return False
    host, namespace, pid, _ = claimed_by.rsplit(":", 3)
    if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    try:  # killed and not yet reaped by its parent: a zombie runs nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


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
    claimed_by: str | None = None  # the server instance that runs (or ran) it
    lease_until: float | None = None
    attempts: int = 0  # how many times a worker claimed it
    progress: dict[str, Any] | None = None  # its latest progress event as its worker saved it (running jobs)
    error_kind: str | None = None  # a failed job's error class when the failure was the caller's


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
    """Jobs in a database table; `claim_next` hands the oldest job of the highest priority to one worker.

    Several servers may share one database. Each JobQueue is one server instance (`instance_id`): its claims
    carry that name and a lease of `lease_s` that its workers' pool renews (heartbeat()); recover() ends only
    claims whose lease expired or whose instance certainly exited, so a live server's jobs are never touched.
    """

    def __init__(self, database: Database, max_queue: int = 100, requeue_running_on_restart: bool = False,
                 lease_s: float = LEASE_S, instance: str | None = None):
        self.database = database
        self.engine = database.engine
        self.tables = database.define(job_tables)
        self._jobs, self._images = self.tables.jobs, self.tables.images
        self.max_queue = max_queue
        self.requeue_running_on_restart = requeue_running_on_restart
        self.lease_s = lease_s
        self.instance_id = instance or instance_id()
        # Serialises submit's count-then-insert within this process; across processes the cap is soft.
        self._submit_lock = threading.Lock()
        database.create(self._jobs, self._images)
        database.add_columns(self._jobs, ADDED_COLUMNS)

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
        """Mark the next queued job running under this instance's claim and lease and return it; None when
        nothing waits."""
        jobs = self._jobs
        while True:
            with self.engine.begin() as conn:
                # PostgreSQL: the row is locked until commit and other servers' claims skip it for the next
                # one instead of queueing behind this transaction. SQLite renders no FOR UPDATE: its one
                # writer at a time already serialises claims.
                row = conn.execute(
                    select(jobs.c.id).where(jobs.c.state == "queued")
                    .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
                    .limit(1).with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                now = time.time()
                # The conditional update keeps the claim safe where the lock is not taken (SQLite).
                claimed = conn.execute(
                    update(jobs).where(jobs.c.id == row.id, jobs.c.state == "queued")
                    .values(state="running", started_at=now, claimed_by=self.instance_id,
                            lease_until=now + self.lease_s, attempts=jobs.c.attempts + 1, progress=None)
                ).rowcount
            if claimed:
                return self._get(row.id)

    def _held(self, job_id: str):
        """The condition that `job_id` runs under this instance's claim."""
        return ((self._jobs.c.id == job_id) & (self._jobs.c.state == "running")
                & (self._jobs.c.claimed_by == self.instance_id))

    def unclaim(self, job_id: str) -> None:
        """Put a job claimed a moment ago back in the queue, in its old place (a stop began during the claim)."""
        with self.engine.begin() as conn:
            conn.execute(update(self._jobs).where(self._held(job_id)).values(
                state="queued", started_at=None, claimed_by=None, lease_until=None,
                attempts=self._jobs.c.attempts - 1))

    def finish(self, job_id: str, state: JobState, result: JobResult | None = None,
               error: str | None = None, images: list[StoredImage] = (), error_kind: str | None = None) -> bool:
        """Record the end of a job this instance runs. False, with nothing written, when its claim is no longer
        this instance's: its lease expired and another server's recovery failed or re-queued it."""
        with self.engine.begin() as conn:
            held = conn.execute(update(self._jobs).where(self._held(job_id)).values(
                state=state, result=result.model_dump_json() if result is not None else None, error=error,
                error_kind=error_kind, finished_at=time.time(), lease_until=None, progress=None,
            )).rowcount
            if not held:
                return False
            for image in images:
                conn.execute(self._images.insert().values(
                    id=image.id, job_id=image.job_id, owner=image.owner, idx=image.index,
                    action=image.action, path=image.path, data=image.data,
                ))
        return True

    def heartbeat(self, progress: dict[str, str | None], renew: bool) -> tuple[set[str], set[str]]:
        """For the jobs this instance's workers run (id -> their newest progress event as JSON, None when
        unchanged since the last call): save the progress, extend their leases by `lease_s` when `renew`, and
        read back which of them this instance no longer holds (lost: another server recovered them) and which
        a user asked to cancel through any server."""
        jobs = self._jobs
        ids = list(progress)
        if not ids:
            return set(), set()
        lease_until = time.time() + self.lease_s
        with self.engine.begin() as conn:
            for job_id, event in progress.items():
                values: dict[str, Any] = {"lease_until": lease_until} if renew else {}
                if event is not None:
                    values["progress"] = event
                if values:
                    conn.execute(update(jobs).where(self._held(job_id)).values(**values))
            rows = conn.execute(select(jobs.c.id, jobs.c.state, jobs.c.claimed_by, jobs.c.cancel_requested)
                                .where(jobs.c.id.in_(ids))).all()
        held = {row.id for row in rows if row.state == "running" and row.claimed_by == self.instance_id}
        return set(ids) - held, {row.id for row in rows if row.id in held and row.cancel_requested}

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
        """Jobs whose server is gone are failed with a reason, or re-queued; those the user had asked to cancel
        end cancelled. Gone: its lease expired (or it has none: a claim made before leases), or the instance
        that claimed it certainly exited (owner_is_dead: a server restarted on the same host after a crash
        need not wait a lease for its own old jobs). A live server's claims are left alone, so this runs at
        start-up and periodically on every server sharing the database. Returns the ids it ended."""
        jobs = self._jobs
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.claimed_by, jobs.c.lease_until)
                                .where(jobs.c.state == "running")).all()
        recovered = []
        for row in rows:
            # The condition is checked again in the update: a renewal or another server's recovery in between
            # wins, and this one changes nothing.
            expired = jobs.c.lease_until.is_(None) | (jobs.c.lease_until < time.time())
            if row.lease_until is None or row.lease_until < time.time():
                which = (jobs.c.id == row.id) & expired
            elif owner_is_dead(row.claimed_by):
                which = (jobs.c.id == row.id) & (jobs.c.claimed_by == row.claimed_by)
            else:
                continue
            with self.engine.begin() as conn:
                if self._end_stopped(conn, which):
                    recovered.append(row.id)
        return recovered

    def release(self, job_id: str) -> str:
        """A running job of this instance stopped by a graceful shutdown: treated as recover() would after a
        crash; returns the state it ends in. Another instance's job is left alone."""
        with self.engine.begin() as conn:
            self._end_stopped(conn, self._held(job_id))
            row = conn.execute(select(self._jobs.c.state).where(self._jobs.c.id == job_id)).first()
        return row.state if row else "failed"

    def _end_stopped(self, conn, which) -> int:
        """End the running jobs `which` selects as their server's stop or death requires; returns how many."""
        running = (self._jobs.c.state == "running") & which
        # A cancel the worker never got to act on still stands: re-queueing it would run what the user stopped.
        ended = conn.execute(update(self._jobs).where(running, self._jobs.c.cancel_requested.is_(True)).values(
            state="cancelled", error=CANCELLED_BY_STOP, finished_at=time.time(), lease_until=None)).rowcount
        if self.requeue_running_on_restart:
            values = dict(state="queued", started_at=None, claimed_by=None, lease_until=None, progress=None)
        else:
            # claimed_by stays: which server's end failed the job.
            values = dict(state="failed", error=RESTART_REASON, finished_at=time.time(), lease_until=None)
        return ended + conn.execute(update(self._jobs).where(running).values(**values)).rowcount

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
            started_at=row.started_at, finished_at=row.finished_at, claimed_by=row.claimed_by,
            lease_until=row.lease_until, attempts=row.attempts or 0,
            progress=json.loads(row.progress) if row.progress else None, error_kind=row.error_kind,
        )
