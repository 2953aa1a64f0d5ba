"""Workers: one thread per device takes jobs from the queue, runs them, and publishes their progress.

A job's `kind` picks how it runs: `generate` (a GenerationRequest), `grid` (an X/Y/Z plot, engine/xyz.py) or
`dreambooth` (a DreamBoothConfig, trained and exported). The functions that do the work are the Studio's, passed
in from above.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from guardforge.engine.request import GenerationRequest, GenerationResult, ProgressEvent
from guardforge.errors import Cancelled, GuardforgeError, caller_error_kind
from guardforge.imaging import encode_image
from guardforge.jobs.events import ProgressHub
from guardforge.jobs.queue import TERMINAL, Job, JobQueue, StoredImage
from guardforge.jobs.results import GenerationJobResult, TrainingJobResult

log = logging.getLogger(__name__)

# generate(request, on_progress, cancel, save) -> GenerationResult: Studio.generate, passed in from above.
GenerateFn = Callable[..., GenerationResult]
# train(config, owner=, resume=, progress=, cancel=) -> DreamBoothResult: Studio.run_dreambooth_job.
TrainFn = Callable[..., Any]
# grid(grid_request, on_progress, cancel, save, ...) -> GridResult: Studio.generate_grid.
GridFn = Callable[..., Any]
# The fields of a training progress event (TrainProgress) that events and job views carry.
TRAIN_FIELDS = ("phase", "loss", "instance_loss", "prior_loss", "it_per_s", "message")
# Retrying to record a job's end: first pause, and the longest (a database restart takes seconds to minutes).
RECORD_RETRY_S = (0.5, 30.0)
# How often the pool purges old jobs' pixels when jobs.retention_hours is set (at most; see WorkerPool).
PRUNE_EVERY_S = 3600.0
# The longest a running job's cancel flag (set through any server) and its progress go unread and unsaved:
# one small read, and a write when the progress moved, per second per server.
HEARTBEAT_S = 1.0
LOST_CLAIM = "this server lost the job's claim (its lease expired) and another server took it over"


class ClaimLost(Exception):
    """The job's claim passed to another server while this worker ran it: its end is not this worker's to record."""


def cpu_worker_threads(devices: list[str], setting: int | None = None) -> int:
    """torch intra-op threads for each worker on the CPU: `setting`, or else the cores this process may run on
    less one, shared among the CPU workers, at least 1.

    The core left over is the HTTP server's: torch's default takes every core, and its OpenMP threads spin
    while they wait for each other, so the event loop (job status, progress) would wait for a core whenever
    a generation runs; on a loaded machine a thread descheduled in a parallel region stalls the whole op.
    """
    if setting is not None:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))  # a taskset or a container's cpuset, not the machine's count
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(1, sum(device == "cpu" for device in devices)))


@dataclass
class _Running:
    """The job a worker runs and the signals that stop it: cancel (nothing delivered), A1111's skip and interrupt."""

    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    lost: bool = False  # its claim is another server's now
    recorded: bool = False  # its end is in the database


class Worker:
    """A thread that runs one job at a time on one device.

    `index` is its place in the pool; `replica` counts the workers before it on the same device, so that each
    gets its own copy of a model (a pipeline runs in one thread at a time).
    """

    def __init__(self, queue: JobQueue, hub: ProgressHub, generate: GenerateFn, device: str, poll_s: float = 0.5,
                 train: TrainFn | None = None, index: int = 0, replica: int = 0, threads: int | None = None,
                 grid: GridFn | None = None):
        self.queue = queue
        self.hub = hub
        self.generate = generate
        self.train = train
        self.grid = grid
        self.device = device
        self.index = index
        self.replica = replica
        self.threads = threads  # torch intra-op threads of this worker's thread; None: torch's default
        self.poll_s = poll_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        # A plain flag, not an Event: drain() is called from a signal handler, which must not take a lock.
        self._draining = False
        self._lock = threading.Lock()
        self._current: _Running | None = None
        self.stop_reason: dict[str, str] = {}  # job id -> "interrupted" / "skipped" / "cancelled"
        self._thread = threading.Thread(target=self._loop, name=f"guardforge-worker-{index}-{device}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def drain(self) -> None:
        """Take no more jobs; the one running goes on (the server's stop begins: what waits stays queued)."""
        self._draining = True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._draining = True
        self._stop.set()
        self.wake.set()
        with self._lock:
            if self._current:
                self._current.cancel.set()
        self._thread.join(timeout)

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Stop `job_id` between two steps if this worker runs it."""
        with self._lock:
            if self._current and self._current.job_id == job_id:
                self.stop_reason[job_id] = reason
                self._current.cancel.set()
                return True
        return False

    def running_job(self) -> str | None:
        with self._lock:
            return self._current.job_id if self._current else None

    def lose(self, job_id: str) -> None:
        """`job_id` is no longer this server's to run (another server recovered it): stop it, record nothing."""
        with self._lock:
            if self._current and self._current.job_id == job_id and not self._current.recorded:
                log.warning("worker %d: job %s: %s; stopping it", self.index, job_id, LOST_CLAIM)
                self._current.lost = True
                self._current.cancel.set()

    def skip(self, job_id: str) -> bool:
        """End the current batch of `job_id` early (A1111's skip) if this worker runs it."""
        return self._signal(job_id, "skip", "skipped")

    def interrupt(self, job_id: str) -> bool:
        """End `job_id` after its current batch, cut short, delivering what was made (A1111's interrupt)."""
        return self._signal(job_id, "interrupt", "interrupted")

    def _signal(self, job_id: str, which: str, reason: str) -> bool:
        with self._lock:
            if self._current and self._current.job_id == job_id:
                self.stop_reason[job_id] = reason
                getattr(self._current, which).set()
                return True
        return False

    def _loop(self) -> None:
        if self.threads is not None:
            import torch

            # OpenMP's thread count is per calling thread: it must be set here, in the thread that runs the jobs.
            torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            job = None
            if not self._draining:
                try:
                    job = self.queue.claim_next()
                except Exception:  # a database hiccup must not kill the worker; retry after a pause
                    log.exception("claiming a job failed")
                if job is not None and self._draining:
                    # The stop began during the claim: the job was queued then, so it waits for the next start.
                    self._put_back(job)
                    job = None
            if job is None:
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:
                # Bookkeeping around the job failed (the database, most likely): this thread is the device's
                # only worker, so it must live on, and the job must end with a reason, not stay running.
                log.exception("worker %d: job %s could not be run", self.index, job.id)
                error = f"{type(exc).__name__}: {exc}"
                try:
                    if self._record(job.id, "failed", error=error):
                        self.hub.publish(job.id, {"type": "done", "final": True, "state": "failed", "error": error})
                except ClaimLost:
                    log.warning("worker %d: job %s: %s", self.index, job.id, LOST_CLAIM)

    def _put_back(self, job: Job) -> None:
        try:
            self.queue.unclaim(job.id)
        except Exception:  # left running: the next start's recover() treats it as after a crash
            log.exception("job %s could not be put back in the queue", job.id)

    def _record(self, job_id: str, state: str, **fields: Any) -> bool:
        """queue.finish, retried with backoff while the database refuses (locked, restarting), since a job run
        and not recorded would read as running forever. Gives up only when the server stops, saying so in the
        log; the job then stays `running` in the database until its lease expires and a recover() ends it.
        Raises ClaimLost when the job is no longer this server's."""
        delay, longest = RECORD_RETRY_S
        attempt = 0
        while True:
            try:
                # After a failure the write may have landed anyway (a lost commit acknowledgement): once it
                # has, writing again would insert the images twice.
                if attempt:
                    job = self.queue.get(job_id, None)
                    if job.state in TERMINAL and job.claimed_by == self.queue.instance_id:
                        self._recorded(job_id)
                        return True
                if not self.queue.finish(job_id, state, **fields):
                    raise ClaimLost(job_id)
                self._recorded(job_id)
                return True
            except ClaimLost:
                raise
            except Exception as exc:
                attempt += 1
                if self._stop.is_set():
                    log.error("job %s ended %s but could not be recorded (%s: %s); the server is stopping, so it "
                              "stays running in the database until the next start recovers it", job_id, state,
                              type(exc).__name__, exc)
                    return False
                log.warning("recording job %s as %s failed (%s: %s); retry %d in %.1f s", job_id, state,
                            type(exc).__name__, exc, attempt, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, longest)

    def _recorded(self, job_id: str) -> None:
        with self._lock:
            if self._current and self._current.job_id == job_id:
                self._current.recorded = True

    def _run(self, job: Job) -> None:
        running = _Running(job.id)
        cancel = running.cancel
        with self._lock:
            self._current = running
        try:
            # A cancel may have landed between the claim and registering the event above.
            if self.queue.get(job.id, None).cancel_requested:
                cancel.set()
            self.hub.publish(job.id, {"type": "state", "state": "running", "step": 0, "total": 0,
                                      "eta": None, "started_at": time.time()})
            self._execute(job, running)
        finally:
            with self._lock:
                self._current = None

    def _execute(self, job: Job, running: _Running) -> None:
        final: dict[str, Any] = {"type": "done", "final": True}
        try:
            if running.cancel.is_set():
                raise Cancelled("cancelled before it started")
            if job.kind == "generate":
                self._generate(job, running, final)
            elif job.kind == "dreambooth" and self.train is not None:
                self._train(job, running.cancel, final)
            elif job.kind == "grid" and self.grid is not None:
                self._grid(job, running, final)
            else:
                raise GuardforgeError(f"this server cannot run jobs of kind {job.kind!r}")
        except ClaimLost:
            self._lost(job, final)
        except Cancelled as exc:
            if running.lost:
                self._lost(job, final)
            elif self._stop.is_set() and job.id not in self.stop_reason:
                # The server is shutting down, nobody cancelled this job: keep it as a restart would.
                state = self.queue.release(job.id)
                final.update(state=state, error="the server stopped" if state != "cancelled" else "cancelled")
            else:
                reason = self.stop_reason.pop(job.id, "cancelled")
                if job.kind == "dreambooth" and str(exc):  # where training stopped, and that it can resume
                    reason = f"{reason}: {exc}"
                self._record(job.id, "cancelled", error=reason)
                final.update(state="cancelled", error=reason)
        except GuardforgeError as exc:
            self._record(job.id, "failed", error=str(exc), error_kind=caller_error_kind(exc))
            final.update(state="failed", error=str(exc))
        except Exception as exc:  # a bug or a backend crash: the job fails with the reason, the worker lives
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self._record(job.id, "failed", error=f"{type(exc).__name__}: {exc}")
            final.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        self.stop_reason.pop(job.id, None)
        self.hub.publish(job.id, final)

    def _lost(self, job: Job, final: dict[str, Any]) -> None:
        """The job's claim is another server's: what it ends as is that server's to say; this one's own
        subscribers learn the state the database holds now."""
        log.warning("worker %d: job %s: %s; its result here is dropped", self.index, job.id, LOST_CLAIM)
        try:
            now = self.queue.get(job.id, None)
            # Re-queued rather than ended, it is still final here: streams and waiting calls read the database
            # again on a final event and go on following it there.
            final.update(state=now.state, error=now.error)
        except Exception:
            final.update(state="failed", error=LOST_CLAIM)

    def _progress(self, job: Job) -> Callable[[ProgressEvent], None]:
        def on_progress(event: ProgressEvent) -> None:
            published = {"type": "progress", "state": "running", "step": event.step, "total": event.total,
                         "eta": event.eta_s, "it_per_s": event.it_per_s, "batch_index": event.batch_index}
            if event.preview is not None:  # already screened by the guard (Studio.generate)
                published.update(preview=encode_image(event.preview), preview_step=event.step)
            self.hub.publish(job.id, published)
        return on_progress

    @staticmethod
    def _stored(job: Job, delivered: list) -> list[StoredImage]:
        return [
            StoredImage(
                id=image.image_id, job_id=job.id, owner=job.owner, index=index, action=image.action,
                path=image.path,
                # Kept in the database when not saved to a file: with its infotext, as a saved file and A1111 carry it.
                data=(encode_image(image.pil, infotext=image.infotext)
                      if image.pil is not None and image.path is None else None),
            )
            for index, image in enumerate(delivered)
        ]

    def _generate(self, job: Job, running: _Running, final: dict[str, Any]) -> None:
        save = bool(job.payload.get("save", True))
        request = GenerationRequest.model_validate(job.payload["request"])
        result = self.generate(request, on_progress=self._progress(job), cancel=running.cancel, save=save,
                               skip=running.skip, interrupt=running.interrupt, device=self.device,
                               replica=self.replica, previews=True)
        images = self._stored(job, result.images)
        # Without the request (the job's payload has it) and the images' paths: where the server keeps files is
        # not the caller's business.
        summary = GenerationJobResult.model_validate(
            {**result.model_dump(exclude={"request"}), "interrupted": running.interrupt.is_set(),
             "worker": self.index})
        self._record(job.id, "succeeded", result=summary, images=images)
        final.update(state="succeeded", blocked=result.blocked,
                     prompt_verdict=result.prompt_verdict.model_dump(mode="json") if result.prompt_verdict else None,
                     verdicts=[image.verdict.model_dump(mode="json") if image.verdict else None
                               for image in result.images],
                     images=[image.image_id for image in result.images])

    def _grid(self, job: Job, running: _Running, final: dict[str, Any]) -> None:
        from guardforge.engine.xyz import GridRequest
        from guardforge.jobs.results import GridJobResult

        grid = GridRequest.model_validate(job.payload["request"])
        result = self.grid(grid, on_progress=self._progress(job), cancel=running.cancel,
                           save=bool(job.payload.get("save", True)), skip=running.skip, interrupt=running.interrupt,
                           device=self.device, replica=self.replica)
        # The grid(s) first, then each cell's image: the rows' order is GridJobResult.images'.
        delivered = list(result.grids) + [cell.image for cell in result.cells if cell.image is not None]
        summary = GridJobResult.of(result, interrupted=running.interrupt.is_set(), worker=self.index)
        self._record(job.id, "succeeded", result=summary, images=self._stored(job, delivered))
        final.update(state="succeeded", images=[image.image_id for image in delivered],
                     cells_blocked=sum(cell.blocked for cell in summary.cells))

    def _train(self, job: Job, cancel: threading.Event, final: dict[str, Any]) -> None:
        from guardforge.train.dreambooth.config import DreamBoothConfig, TrainProgress

        def on_progress(event: TrainProgress) -> None:
            self.hub.publish(job.id, {"type": "progress", "state": "running", "step": event.step,
                                      "total": event.total, "eta": event.eta_s,
                                      **{name: getattr(event, name) for name in TRAIN_FIELDS}})

        config = DreamBoothConfig.model_validate(job.payload["request"])
        result = self.train(config, owner=job.owner, resume=bool(job.payload.get("resume")),
                            progress=on_progress, cancel=cancel, device=self.device, replica=self.replica)
        # Names, not server paths: the registry name to generate with, the file or folder in the models folder.
        summary = TrainingJobResult(
            models=result.models, exports={fmt: path.name for fmt, path in result.exports.items()},
            steps=result.steps, final_loss=result.final_loss, class_images_generated=result.class_images_generated,
            class_images_reused=result.class_images_reused,
            refused_class_seeds={str(k): v for k, v in result.refused_class_seeds.items()},
            elapsed_s=result.elapsed_s, device=self.device, worker=self.index)
        self._record(job.id, "succeeded", result=summary)
        final.update(state="succeeded", result=summary.model_dump(mode="json"))


class WorkerPool:
    """One worker per device, all on the same queue; with `retention_s`, also the thread that purges the pixels
    of jobs that ended longer ago than that (at start, then every `prune_every_s`). Workers on the CPU run torch
    on `cpu_threads` threads each (None: see cpu_worker_threads)."""

    def __init__(self, queue: JobQueue, hub: ProgressHub, generate: GenerateFn, devices: list[str],
                 train: TrainFn | None = None, retention_s: float | None = None,
                 prune_every_s: float = PRUNE_EVERY_S, cpu_threads: int | None = None, grid: GridFn | None = None,
                 poll_s: float = 0.5):
        self.queue = queue
        threads = cpu_worker_threads(devices, cpu_threads)
        self.hub = hub
        self.workers = [Worker(queue, hub, generate, device, poll_s=poll_s, train=train, grid=grid, index=index,
                               replica=devices[:index].count(device), threads=threads if device == "cpu" else None)
                        for index, device in enumerate(devices)]
        self.retention_s = retention_s
        # Never slower than a tenth of the retention, so a short one is kept to within ~10%.
        self.prune_every_s = min(prune_every_s, retention_s / 10) if retention_s else prune_every_s
        self._pruner_stop = threading.Event()
        self._pruner: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.started = False

    def start(self) -> list[str]:
        """Recover jobs a dead server left running, then start the threads; returns the recovered ids."""
        if self.started:
            return []
        recovered = self.queue.recover()
        for worker in self.workers:
            worker.start()
        self._keeper_stop.clear()
        self._keeper = threading.Thread(target=self._keep_leases, name="guardforge-leases", daemon=True)
        self._keeper.start()
        if self.retention_s:
            self._pruner_stop.clear()
            self._pruner = threading.Thread(target=self._prune_loop, name="guardforge-pruner", daemon=True)
            self._pruner.start()
        self.started = True
        return recovered

    def prune(self) -> int:
        """Purge the pixels of jobs that ended more than `retention_s` ago; returns how many jobs."""
        if not self.retention_s:
            return 0
        return self.queue.purge(finished_before=time.time() - self.retention_s)

    def _prune_loop(self) -> None:
        while not self._pruner_stop.is_set():
            try:
                purged = self.prune()
                if purged:
                    log.info("retention: purged the image data of %d jobs", purged)
            except Exception:  # a database hiccup: the next round tries again; the workers go on regardless
                log.exception("purging old job data failed")
            self._pruner_stop.wait(self.prune_every_s)

    def _keep_leases(self) -> None:
        """The claims' heartbeat, in one thread for the pool: every HEARTBEAT_S (or a third of the lease, if
        shorter) read the cancel flags of the jobs this server runs and save their progress when it moved;
        every third of the lease renew their leases and recover the jobs of servers that are gone."""
        renew_every = self.queue.lease_s / 3
        tick = min(HEARTBEAT_S, renew_every)
        last_renewal = time.monotonic()
        saved: dict[str, str] = {}  # job id -> the progress last written for it
        while not self._keeper_stop.wait(tick):
            try:
                running = {job_id: worker for worker in self.workers
                           if (job_id := worker.running_job()) is not None}
                renew = time.monotonic() - last_renewal >= renew_every
                progress: dict[str, str | None] = {}
                for job_id in running:
                    latest = self.hub.latest(job_id)
                    encoded = json.dumps(latest) if latest else None
                    progress[job_id] = encoded if encoded != saved.get(job_id) else None
                lost, cancel = self.queue.heartbeat(progress, renew)
                saved = {job_id: progress[job_id] or saved[job_id] for job_id in running
                         if progress[job_id] or job_id in saved}
                for job_id in lost:
                    running[job_id].lose(job_id)
                for job_id in cancel:
                    running[job_id].cancel(job_id)
                if renew:
                    last_renewal = time.monotonic()
                    recovered = self.queue.recover()
                    if recovered:
                        log.warning("%d job(s) of a server that is gone were %s: %s", len(recovered),
                                    "re-queued" if self.queue.requeue_running_on_restart else "failed",
                                    ", ".join(recovered))
                        self.notify()
            except Exception:  # a database hiccup: the next tick tries again, well within the lease
                log.exception("renewing job leases failed")

    def drain(self) -> None:
        """The server's stop has begun: take no more jobs (those queued stay queued for the next start)."""
        for worker in self.workers:
            worker.drain()

    def dead(self) -> list[int]:
        """Indexes of started workers whose thread has ended: their device runs nothing any more."""
        return [worker.index for worker in self.workers if self.started and not worker.alive]

    def stop(self) -> None:
        self._pruner_stop.set()
        for worker in self.workers:
            worker.stop()
        if self._pruner is not None:
            self._pruner.join(10)
            self._pruner = None
        # After the workers: their leases hold while they wind down (a release may wait for a step to end).
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(10)
            self._keeper = None
        self.started = False

    def runs(self, job_id: str) -> bool:
        """Whether one of this pool's workers runs `job_id` now (its events are published here)."""
        return any(worker.running_job() == job_id for worker in self.workers)

    def notify(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        return any(worker.cancel(job_id, reason) for worker in self.workers)

    def skip(self, job_id: str) -> bool:
        return any(worker.skip(job_id) for worker in self.workers)

    def interrupt(self, job_id: str) -> bool:
        return any(worker.interrupt(job_id) for worker in self.workers)

    def reason(self, job_id: str) -> str | None:
        for worker in self.workers:
            if job_id in worker.stop_reason:
                return worker.stop_reason[job_id]
        return None
