"""guardforge on a real two-node Ray cluster on loopback: the same API answers as one host, jobs spread over both
nodes' generation replicas, and a node killed mid-job loses nothing (its job is reclaimed and finishes on the other).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.livesrv import free_port, make_home, read_events
from tests.test_queue import new_postgres_database

pytestmark = pytest.mark.cluster
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e \".[ray]\")")

SMALL = {"width": 32, "height": 32, "cfg_scale": 5.0, "sampler_name": "Euler a", "subseed": 3}
LEASE_S = 5.0


def settings_for(home, database_url: str, port: int, **ray_settings):
    from guardforge.settings import Settings

    return Settings(home=home, database_url=database_url, default_model="tiny-sd", device="cpu",
                    jobs={"lease_s": LEASE_S, "requeue_running_on_restart": True, "cpu_threads": 1,
                          "claim_poll_s": 0.1, "remote_poll_s": 0.1},
                    server={"host": "127.0.0.1", "port": port}, ray=ray_settings)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir, postgres):
    """A head and a second node (one CPU each, so one generation replica each); the ingress and the guard are
    pinned to the head (a custom resource), so that killing the second node takes only a generation replica."""
    from ray import serve
    from ray.cluster_utils import Cluster

    from guardforge.rayserve.launch import serve_with_ray

    home = make_home(tmp_path_factory.mktemp("ray"), tiny_model_dir)
    database_url = new_postgres_database(postgres)
    on_head = {"num_cpus": 0, "resources": {"head": 0.01}}
    settings = settings_for(home, database_url, free_port(), proxy_location="HeadOnly", gpus_per_worker=0,
                            min_workers=2, max_workers=2, ingress_actor_options=on_head,
                            guard_actor_options=on_head)
    started = time.perf_counter()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1},
                                                          "include_dashboard": False})
    second = nodes.add_node(num_cpus=1)
    serve_with_ray(settings, nodes.address, mount_ui=True, blocking=False)
    url = f"http://127.0.0.1:{settings.server.port}"
    workers = serve.get_deployment_handle("generation", app_name=settings.ray.app_name)
    print(f"cluster and app up in {time.perf_counter() - started:.1f} s")
    yield {"url": url, "settings": settings, "nodes": nodes, "second": second, "workers": workers}
    ray.shutdown()  # not serve.shutdown(): its graceful stop of every replica takes seconds and tests nothing here
    nodes.shutdown()


def replica_statuses(workers, count: int, timeout: float = 60) -> dict[str, dict]:
    """node id -> status of the generation replica there, once `count` distinct replicas answered."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        status = workers.status.remote().result()
        found[status["node_id"]] = status
    assert len(found) == count, f"only {len(found)} generation replica(s) answered: {found}"
    return found


def wait_until_done(client: httpx.Client, job_ids: list[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    views: dict[str, dict] = {}
    while time.monotonic() < deadline:
        views = {job: client.get(f"/v1/jobs/{job}").json() for job in job_ids}
        if all(view["state"] in ("succeeded", "failed", "cancelled") for view in views.values()):
            return views
        time.sleep(0.3)
    raise AssertionError(f"jobs still running after {timeout} s: {views}")


def same_but_the_job(info: dict) -> dict:
    """An A1111 info without what names the job (its id, its time) or times the guard: the rest is the same for
    the same request."""
    def untimed(verdict):
        return {key: value for key, value in verdict.items() if key != "latency_ms"} if verdict else verdict

    ours = info["guardforge"]
    ours = {**{key: value for key, value in ours.items() if key != "job_id"},
            "prompt_verdict": untimed(ours["prompt_verdict"]), "verdicts": [untimed(v) for v in ours["verdicts"]]}
    return {**{key: value for key, value in info.items() if key != "job_timestamp"}, "guardforge": ours}


def test_same_answers_as_one_host(cluster, tmp_path):
    """txt2img (images and infotext) and /v1/moderations through the Ray app equal a one-host server's for the
    same seeds: the same Studio code, with the guard's scoring done by the guard deployment."""
    from guardforge.studio import Studio
    from tests.test_server_hardening import InProcessServer

    ray_answer = httpx.post(f"{cluster['url']}/sdapi/v1/txt2img",
                            json={"prompt": "a red circle", "steps": 2, "seed": 7, "batch_size": 2, **SMALL},
                            timeout=120)
    assert ray_answer.status_code == 200, ray_answer.text
    moderation = httpx.post(f"{cluster['url']}/v1/moderations", json={"input": ["a red circle", "kill them all"]},
                            timeout=60)
    assert moderation.status_code == 200, moderation.text
    assert httpx.get(f"{cluster['url']}/ui/").status_code == 200  # the web UI, mounted in the ingress as on one host

    one_host = cluster["settings"].model_copy(update={"database_url": f"sqlite:///{tmp_path / 'one-host.db'}"})
    with InProcessServer(Studio(one_host), start_workers=True) as server:
        local_answer = httpx.post(f"{server.url}/sdapi/v1/txt2img",
                                  json={"prompt": "a red circle", "steps": 2, "seed": 7, "batch_size": 2, **SMALL},
                                  timeout=120).json()
        local_moderation = httpx.post(f"{server.url}/v1/moderations",
                                      json={"input": ["a red circle", "kill them all"]}, timeout=60).json()

    answer = ray_answer.json()
    assert len(answer["images"]) == 2 and answer["images"] == local_answer["images"]
    assert answer["parameters"] == local_answer["parameters"]
    assert same_but_the_job(json.loads(answer["info"])) == same_but_the_job(json.loads(local_answer["info"]))
    got = moderation.json()
    assert got["model"] == local_moderation["model"] == "guardforge-embedded"
    assert got["results"] == local_moderation["results"]
    assert got["results"][1]["flagged"] and not got["results"][0]["flagged"]


def test_events_and_cancel_reach_the_replica_that_runs_the_job(cluster):
    """The ingress runs no job: a job's progress events come from the store, where its replica saves them, and a
    cancel sent to the ingress reaches that replica through the store, as between two servers on one host."""
    with httpx.Client(base_url=cluster["url"], timeout=60) as client:
        # 8 x 150 steps: far longer than a cancel takes to arrive (the replica reads the flag every second).
        job_id = client.post("/v1/jobs", json={"prompt": "a long one", "steps": 150, "n_iter": 8, "seed": 1,
                                               "width": 32, "height": 32}).json()["id"]

        def cancel_at_the_first_step(events):
            name, data = events[-1]
            if name == "progress" and data.get("step") and ("cancel", {}) not in events:
                assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
                events.append(("cancel", {}))

        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            events = read_events(stream, on_event=cancel_at_the_first_step)
    assert ("cancel", {}) in events, events
    assert events[-1][0] == "done" and events[-1][1]["state"] == "cancelled", events
    assert httpx.get(f"{cluster['url']}/v1/jobs/{job_id}").json()["state"] == "cancelled"


def test_jobs_spread_over_both_nodes_and_a_killed_node_loses_nothing(cluster):
    from guardforge.db import Database
    from guardforge.jobs.queue import JobQueue

    workers, nodes, second = cluster["workers"], cluster["nodes"], cluster["second"]
    by_node = replica_statuses(workers, 2)
    pid_on_second = by_node[second.node_id]["pid"]
    pid_on_head = next(status["pid"] for node, status in by_node.items() if node != second.node_id)

    with httpx.Client(base_url=cluster["url"], timeout=60) as client:
        # Long enough (~1-2 s each) that the node is gone before the job it runs can finish: at 8 steps a job
        # seen running could end before remove_node took effect, and then nothing was reclaimed.
        jobs = [client.post("/v1/jobs", json={"prompt": f"shape {index}", "steps": 100, "seed": index, "width": 32,
                                              "height": 32}).json()["id"] for index in range(4)]
        store = JobQueue(Database(cluster["settings"].resolved_database_url))
        # Kill the second node while its replica runs a job.
        deadline = time.monotonic() + 90
        victim = None
        while victim is None and time.monotonic() < deadline:
            for job_id in jobs:
                job = store.get(job_id, None)
                if job.state == "running" and job.claimed_by and job.claimed_by.split(":")[2] == str(pid_on_second):
                    victim = job_id
                    break
            else:
                time.sleep(0.1)
        assert victim is not None, "the second node's replica never ran a job"
        nodes.remove_node(second, allow_graceful=False)

        views = wait_until_done(client, jobs)
    assert {view["state"] for view in views.values()} == {"succeeded"}, views
    ran_on = {job_id: store.get(job_id, None) for job_id in jobs}
    # The victim, claimed first by the second node's replica (both nodes ran jobs), was reclaimed once its claim's
    # owner was gone and finished on the head's replica.
    assert ran_on[victim].attempts == 2 and ran_on[victim].claimed_by.split(":")[2] == str(pid_on_head)
    # Each job ended once, with its one image.
    assert all(len(view["images"]) == 1 for view in views.values())
