"""A caller's past generations, filtered as the UI's gallery asks: by day, by model, by what the guard did."""

from __future__ import annotations

import datetime as dt
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from guardforge.guard.verdict import SEVERITY
from guardforge.jobs.queue import Job

Outcome = Literal["allowed", "flagged", "blurred", "blocked"]
OUTCOMES: dict[str, Outcome] = {"allow": "allowed", "flag": "flagged", "blur": "blurred", "block": "blocked"}
# Results read to find the matches of a filter the database cannot apply (model, verdict): the newest this many
# of the caller's jobs in the day range.
SCAN = 1000


class HistoryFilter(BaseModel):
    """Which past jobs to list: `since` and `until` are days on the server's clock, both included."""

    model_config = ConfigDict(extra="forbid")

    since: dt.date | None = None
    until: dt.date | None = None
    model: str | None = None
    verdict: Outcome | None = None

    @model_validator(mode="after")
    def _ordered(self) -> HistoryFilter:
        if self.since and self.until and self.until < self.since:
            raise ValueError(f"'until' ({self.until}) is before 'since' ({self.since})")
        return self

    def window(self) -> tuple[float | None, float | None]:
        """created_at bounds, [start, end), in the server's local time as the gallery shows dates."""
        start = time.mktime(self.since.timetuple()) if self.since else None
        end = time.mktime((self.until + dt.timedelta(days=1)).timetuple()) if self.until else None
        return start, end

    def matches(self, result) -> bool:
        """Whether a job's result passes the model and verdict filters; a job that ended without one (failed,
        cancelled) or has not ended passes only when neither is set."""
        if self.model is not None and getattr(result, "model", None) != self.model:
            return False
        return self.verdict is None or result_outcome(result) == self.verdict


def job_model(job: Job) -> str | None:
    """The checkpoint that ran (the result's), else the one asked for (None: the server's default)."""
    if job.result is not None and getattr(job.result, "model", None):
        return job.result.model
    return (job.payload.get("request") or {}).get("model")


def outcome(job: Job) -> Outcome | None:
    """What the guard did to the job, its most severe action: blocked at the door counts as blocked; None for
    a job that never got a verdict (queued, running, failed, cancelled)."""
    return result_outcome(job.result)


def result_outcome(result) -> Outcome | None:
    if result is None or not hasattr(result, "images"):
        return None
    if result.blocked:
        return "blocked"
    actions = [image.action for image in result.images]
    if result.prompt_verdict is not None:
        actions.append(result.prompt_verdict.action)
    return OUTCOMES[max(actions, key=SEVERITY.__getitem__, default="allow")]
