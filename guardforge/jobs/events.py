"""Progress pub/sub: the worker thread publishes job events; async subscribers (SSE, waiting routes) receive them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class ProgressHub:
    """Fan-out of per-job events from worker threads to asyncio subscribers, plus the latest event per job.

    Publishing never blocks the worker: each subscriber's queue is filled through its own event loop's
    call_soon_threadsafe. A job's last event carries `"final": True`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self._latest: dict[str, dict[str, Any]] = {}

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            if event.get("final"):
                self._latest.pop(job_id, None)
            else:
                # A preview comes every few steps: the latest event keeps the last one for those who poll
                # (the UI, A1111's /progress), while subscribers get each preview once.
                previous = self._latest.get(job_id) or {}
                if "preview" not in event and "preview" in previous:
                    event_kept = {**event, "preview": previous["preview"], "preview_step": previous["preview_step"]}
                else:
                    event_kept = event
                self._latest[job_id] = event_kept
            targets = list(self._subscribers.get(job_id, ()))
        for loop, queue in targets:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that subscriber's loop has closed; it will never read again
                pass

    def latest(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._latest.get(job_id)

    def subscribe(self, job_id: str) -> Subscription:
        """Must be called from a running event loop; use as `with hub.subscribe(id) as sub:`."""
        return Subscription(self, job_id, asyncio.get_running_loop())

    def _add(self, job_id: str, entry: tuple[asyncio.AbstractEventLoop, asyncio.Queue]) -> None:
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(entry)

    def _remove(self, job_id: str, entry: tuple[asyncio.AbstractEventLoop, asyncio.Queue]) -> None:
        with self._lock:
            entries = self._subscribers.get(job_id, [])
            if entry in entries:
                entries.remove(entry)
            if not entries:
                self._subscribers.pop(job_id, None)


class Subscription:
    """One subscriber's stream of a job's events; registered on enter so no event after that is missed."""

    def __init__(self, hub: ProgressHub, job_id: str, loop: asyncio.AbstractEventLoop):
        self._hub = hub
        self._job_id = job_id
        self._entry = (loop, asyncio.Queue())

    def __enter__(self) -> Subscription:
        self._hub._add(self._job_id, self._entry)
        return self

    def __exit__(self, *exc) -> None:
        self._hub._remove(self._job_id, self._entry)

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self._entry[1].get(), timeout)
        except asyncio.TimeoutError:
            return None

