"""The gallery's history: a caller's own past generations, filtered by day, model and verdict, and deleted with
their files; another key's jobs are neither listed nor deletable."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import pytest
from pydantic import ValidationError

from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest
from guardforge.jobs.history import HistoryFilter
from guardforge.jobs.queue import JobNotFound
from tests.test_studio_guard import NothingIsUnsafe, ReadsTheFirstWords


@pytest.fixture
def studio(gf_home):
    from guardforge.db import Database
    from guardforge.guard.audit import AuditLog
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    models = gf_home / "models" / "Stable-diffusion"
    shutil.copytree(models / "tiny-sd", models / "tiny-sd-2")
    database = Database(f"sqlite:///{gf_home / 'guardforge.db'}")
    guard = Guard(load_policy("default"), text_backend=ReadsTheFirstWords(), image_backend=NothingIsUnsafe(),
                  audit=AuditLog(database))
    studio = Studio(Settings(home=gf_home, jobs={"preview_every_steps": 0}), guard=guard, database=database)
    studio.start_workers()
    yield studio
    studio.stop_workers()


def finished(studio, caller, **fields):
    job = studio.submit(GenerationRequest(steps=1, width=32, height=32, seed=3, **fields), caller)
    deadline = time.monotonic() + 120
    while (job := studio.job(job.id, caller)).state not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    assert job.state == "succeeded", job.error
    return job


def test_history_filters_and_deletes_only_the_callers_own(studio):
    a, b = studio.caller("key-a"), studio.caller("key-b")
    red = finished(studio, a, prompt="a red square", model="tiny-sd")
    blocked = finished(studio, a, prompt="a forbidden thing", model="tiny-sd")
    other = finished(studio, a, prompt="a blue circle", model="tiny-sd-2")
    theirs = finished(studio, b, prompt="b's own", model="tiny-sd")

    def ids(caller, **where):
        return [job.id for job in studio.history(caller, HistoryFilter(**where))]

    assert ids(a) == [other.id, blocked.id, red.id]  # newest first, B's job not among them
    assert ids(b) == [theirs.id]
    assert ids(a, model="tiny-sd-2") == [other.id]
    assert ids(a, verdict="blocked") == [blocked.id] and ids(a, verdict="allowed") == [other.id, red.id]
    today = dt.date.today()
    assert ids(a, since=today, until=today) == [other.id, blocked.id, red.id]
    assert ids(a, since=today + dt.timedelta(days=1)) == [] and ids(a, until=today - dt.timedelta(days=1)) == []
    with pytest.raises(ValidationError, match="before"):
        HistoryFilter(since=today, until=today - dt.timedelta(days=1))
    with pytest.raises(ValidationError):
        HistoryFilter(verdict="fine")

    saved = studio.jobs.image(red.images[0].id, None).path
    verdict_file = saved.replace(".png", ".verdict.json")
    assert shutil.os.path.exists(saved) and shutil.os.path.exists(verdict_file)
    with pytest.raises(JobNotFound):  # B cannot reach A's job, nor learn that it exists
        studio.delete_job(red.id, b)
    assert studio.delete_job(red.id, a) == 1
    assert not shutil.os.path.exists(saved) and not shutil.os.path.exists(verdict_file)
    assert ids(a) == [other.id, blocked.id]
    with pytest.raises(JobNotFound):
        studio.job(red.id, a)


def test_a_job_still_under_way_is_not_deleted(studio):
    caller = studio.caller("key-a")
    studio.stop_workers()  # nothing runs: the job stays queued
    job = studio.submit(GenerationRequest(prompt="waits", steps=1, width=32, height=32), caller)
    with pytest.raises(InvalidRequest, match="cancel it first"):
        studio.delete_job(job.id, caller)
    assert studio.job(job.id, caller).state == "queued"
