"""Scale-out on Ray Serve: jobs per minute with 1 and 2 CPU generation replicas, and one job's latency on Ray
against one host.

Both sides run tiny-shapes (the shipped model) at its native size through the HTTP API, on a throwaway PostgreSQL
each (the job store several servers share), the guard off (generation is what scales here), one torch thread per
worker. Prints the CPU, jobs/min with 1 and 2 replicas and their ratio (goal >= 1.8), one job's median latency
through /sdapi/v1/txt2img on Ray over one host (goal <= 1.10), and the peak memory of this process and everything
it started (Ray's processes included). Needs the ray extra and PostgreSQL's binaries.

    python benchmarks/scale_out.py --jobs 24 --steps 20 --latency-runs 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")


class PeakMemory:
    """The largest sum of resident memory of this process and its descendants (Ray's raylet, workers, replicas)."""

    def __init__(self, every_s: float = 0.25):
        import psutil

        self.root = psutil.Process()
        self.peak = 0
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every_s):
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_jobs(url: str, count: int, body: dict) -> float:
    """Submit `count` jobs at once through /v1/jobs, wait for all; jobs per minute from the first submit to the
    last end, as the job store recorded them."""
    with httpx.Client(base_url=url, timeout=120) as client:
        ids = []
        for index in range(count):
            answer = client.post("/v1/jobs", json={**body, "seed": 1000 + index})
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        views = {}
        while len(views) < count:
            for job_id in ids:
                if job_id not in views:
                    view = client.get(f"/v1/jobs/{job_id}").json()
                    if view["state"] in ("succeeded", "failed", "cancelled"):
                        if view["state"] != "succeeded":
                            raise RuntimeError(f"job {job_id} {view['state']}: {view['error']}")
                        views[job_id] = view
            time.sleep(0.1)
    began = min(view["created_at"] for view in views.values())
    ended = max(view["finished_at"] for view in views.values())
    return count / (ended - began) * 60


def latency(url: str, runs: int, body: dict) -> float:
    """The median wall time of one /sdapi/v1/txt2img call, with nothing else queued."""
    times = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for index in range(runs):
            started = time.perf_counter()
            answer = client.post("/sdapi/v1/txt2img", json={**body, "seed": index})
            answer.raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def settings_for(home: Path, database_url: str, port: int, replicas: int = 1, claim_poll_s: float = 0.5,
                 remote_poll_s: float = 1.0):
    from guardforge.settings import Settings

    no_cpu = {"num_cpus": 0}  # the ingress and the guard deployment wait on I/O; the replicas get the cores
    return Settings(home=home, database_url=database_url, device="cpu", guard={"policy": "off"},
                    jobs={"cpu_threads": 1, "claim_poll_s": claim_poll_s, "remote_poll_s": remote_poll_s},
                    server={"host": "127.0.0.1", "port": port},
                    ray={"gpus_per_worker": 0, "min_workers": replicas, "max_workers": replicas,
                         "worker_actor_options": {"num_cpus": 1}, "ingress_actor_options": no_cpu,
                         "guard_actor_options": no_cpu, "proxy_location": "HeadOnly"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24, help="jobs per throughput run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latency-runs", type=int, default=9)
    # On Ray a job submitted through the ingress reaches an idle replica at its next look in the store, and its
    # end reaches the waiting call at that call's next read: the settings docs/scale.md recommends for Ray.
    parser.add_argument("--claim-poll-s", type=float, default=0.05, help="jobs.claim_poll_s on Ray")
    parser.add_argument("--remote-poll-s", type=float, default=0.05, help="jobs.remote_poll_s on Ray")
    args = parser.parse_args()

    from tests.livesrv import LiveServer, ThrowawayPostgres, free_port, server_env
    from tests.test_queue import new_postgres_database

    memory = PeakMemory()
    postgres = ThrowawayPostgres()
    home = Path(tempfile.mkdtemp(prefix="gf-scale-"))
    body = {"prompt": "a red circle on a blue square", "steps": args.steps}
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start")
    print(f"tiny-shapes, {args.steps} steps, guard off, one torch thread per worker; {args.jobs} jobs per run; "
          f"on Ray jobs.claim_poll_s={args.claim_poll_s}, jobs.remote_poll_s={args.remote_poll_s}")

    import ray

    from guardforge.rayserve.launch import serve_with_ray

    server = None
    try:
        # One host: a `guardforge serve` process with one CPU worker, as a user runs it; beside it, Ray Serve on
        # this machine with one generation replica of one CPU. Their single-job latencies are taken in turns, so
        # that both see the same machine (it may be shared).
        server = LiveServer(home, server_env(home, GUARDFORGE_DEFAULT_MODEL="tiny-shapes",
                                             GUARDFORGE_DATABASE_URL=new_postgres_database(postgres.url),
                                             GUARDFORGE_JOBS__CPU_THREADS="1")).start()
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
        database_url = new_postgres_database(postgres.url)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        per_replicas = {}
        for replicas in (1, 2):
            started = time.perf_counter()
            serve_with_ray(settings_for(home, database_url, port, replicas, args.claim_poll_s, args.remote_poll_s),
                           mount_ui=False, blocking=False)
            print(f"ray: {replicas} replica(s) deployed in {time.perf_counter() - started:.1f} s")
            run_jobs(url, 2 * replicas, body)  # every replica loads the model
            if replicas == 1:
                latency(server.url, 1, body)  # loads the model
                pairs = [(latency(server.url, 1, body), latency(url, 1, body)) for _ in range(args.latency_runs)]
                one_host_latency = statistics.median(one for one, _ in pairs)
                ray_latency = statistics.median(on_ray for _, on_ray in pairs)
                one_host_jpm = run_jobs(server.url, args.jobs, body)
                server.stop()
                server = None
                print(f"one host, 1 worker:  {one_host_jpm:6.1f} jobs/min; one job {one_host_latency * 1000:.0f} ms")
                print(f"ray, one job:        {ray_latency * 1000:.0f} ms")
            per_replicas[replicas] = run_jobs(url, args.jobs, body)
            print(f"ray, {replicas} replica(s): {per_replicas[replicas]:6.1f} jobs/min")
        ray.shutdown()
    finally:
        if server is not None:
            server.stop()
        postgres.remove()
    peak = memory.stop()
    ratio = per_replicas[2] / per_replicas[1]
    added = ray_latency / one_host_latency
    print(f"scale-out, 2 replicas / 1: {ratio:.2f}  (goal >= 1.8)")
    print(f"latency, ray / one host:   {added:.2f}  (goal <= 1.10)")
    print(f"peak memory (this process and all it started): {peak / 2**30:.2f} GiB")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
