"""Retention of job data: `guardforge jobs prune` on a real SQLite file, and a live server with
jobs.retention_hours purging ended jobs' pixels on its own while a running job keeps its payload."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import update

from guardforge.db import Database
from guardforge.jobs.queue import ImageGone, JobQueue, StoredImage
from guardforge.jobs.results import GenerationJobResult
from tests.livesrv import REPO, make_home, run_cli, server_env
from tests.test_server import noise_png_b64, wait_state

PAYLOAD = {"request": {"prompt": "p", "init_image": "SU5JVA==", "mask": None}, "save": False}


def ended_job(queue: JobQueue, owner: str, ended_hours_ago: float) -> str:
    job = queue.submit("generate", PAYLOAD, owner=owner)
    queue.claim_next()
    queue.finish(job, "succeeded", result=GenerationJobResult(model="m"),
                 images=[StoredImage(f"img-{owner}", job, owner, 0, "allow", None, "UElYRUxT")])
    with queue.engine.begin() as conn:  # as if it had ended that long ago
        conn.execute(update(queue.tables.jobs).where(queue.tables.jobs.c.id == job)
                     .values(finished_at=time.time() - ended_hours_ago * 3600))
    return job


def test_cli_jobs_prune_takes_only_jobs_that_ended_long_enough_ago(tmp_path):
    home = tmp_path / "home"
    env = server_env(home)
    queue = JobQueue(Database(f"sqlite:///{home / 'guardforge.db'}"))
    old, recent = ended_job(queue, "old", 30), ended_job(queue, "recent", 2)
    running = queue.submit("generate", PAYLOAD, owner="running")
    queue.claim_next()

    assert run_cli(["jobs", "prune", "--older-than", "24"], env).strip() == "purged the image data of 1 job"
    assert queue.get(old, None).payload["request"]["init_image"] is None
    with pytest.raises(ImageGone):
        queue.image("img-old", None)
    assert queue.image("img-recent", None).data == "UElYRUxT" and queue.get(recent, None).payload == PAYLOAD

    # No age and no retention setting: refused with the way out, nothing purged.
    done = subprocess.run([sys.executable, "-m", "guardforge", "jobs", "prune"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == 2 and "--older-than" in done.stderr, done.stderr
    assert queue.image("img-recent", None).data == "UElYRUxT"

    # The setting is the default age.
    out = run_cli(["jobs", "prune"], {**env, "GUARDFORGE_JOBS__RETENTION_HOURS": "1"})
    assert out.strip() == "purged the image data of 1 job" and queue.get(recent, None).payload["purged_at"]
    assert queue.get(running, None).payload == PAYLOAD and queue.get(running, None).state == "running"


def test_server_retention_purges_ended_jobs_and_leaves_a_running_one(tmp_path, tiny_model_dir):
    from guardforge.settings import GuardSettings, JobsSettings, Limits, Settings
    from guardforge.studio import Studio
    from tests.test_server_hardening import InProcessServer

    home = make_home(tmp_path, tiny_model_dir)
    # 0.001 h = 3.6 s, checked every 0.36 s (a tenth of the retention). uvicorn in this process: the Studio's
    # workers prune, not the server's process, which would cost an interpreter and torch.
    studio = Studio(Settings(home=home, device="cpu", default_model="tiny-sd", guard=GuardSettings(policy="off"),
                             jobs=JobsSettings(retention_hours=0.001), limits=Limits(max_steps=150)))
    with InProcessServer(studio, start_workers=True) as live:
        with httpx.Client(base_url=live.url, timeout=120) as client:
            short = client.post("/v1/jobs?save=false", json={"prompt": "short", "steps": 2, "width": 64,
                                                               "height": 64}).json()["id"]
            [image] = wait_state(client, short, {"succeeded"})["images"]
            assert client.get(image["url"]).status_code == 200  # kept for its GET until the retention is up
            init = noise_png_b64()
            long = client.post("/v1/jobs", json={"prompt": "long", "init_image": init, "denoising_strength": 1.0,
                                                 "steps": 150, "n_iter": 8, "width": 64, "height": 64}).json()["id"]
            deadline = time.monotonic() + 60
            while client.get(image["url"]).status_code != 410:
                assert time.monotonic() < deadline, "the retention never purged the ended job"
                time.sleep(0.2)
            assert "no longer kept" in client.get(image["url"]).json()["detail"]
            time.sleep(5)  # more than the retention, and many pruning rounds, while the long job runs
            queue = JobQueue(Database(f"sqlite:///{home / 'guardforge.db'}"))
            job = queue.get(long, None)
            assert job.state in ("queued", "running") and job.payload["request"]["init_image"] == init
            assert "purged_at" not in job.payload
            client.delete(f"/v1/jobs/{long}")
            wait_state(client, long, {"cancelled"})
