"""API overhead: N generations through POST /v1/jobs on a live server vs Studio.generate in-process, interleaved.

Prints the time ratio (goal <= 1.05) and the p50/p99 latency of GET /v1/jobs/{id} while a generation runs
(goal p99 < 50 ms). Uses GUARDFORGE_HOME and --model as given, or builds the tiny test model with --tiny.

    python benchmarks/api_overhead.py --tiny --n 10 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def wait_done(client: httpx.Client, job_id: str) -> dict:
    """Follow the job's event stream to its `done` event, as a client of the native API would."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "done":
                return json.loads(line[6:])
    raise RuntimeError("stream ended without a done event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="generations per side")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--tiny", action="store_true", help="build the tiny test model in a temporary home")
    parser.add_argument("--polls", type=int, default=300, help="GET /v1/jobs/{id} calls for the latency figure")
    args = parser.parse_args()

    env = dict(os.environ, GUARDFORGE_DEFAULT_MODEL=args.model, GUARDFORGE_GUARD__POLICY="off")
    if args.tiny:
        from tests.livesrv import make_home
        from tests.tiny import save_tiny_sd

        root = Path(tempfile.mkdtemp(prefix="gf-bench-"))
        env["GUARDFORGE_HOME"] = str(make_home(root, save_tiny_sd(root / "tiny" / "tiny-sd")))
    os.environ.update(env)

    from guardforge.engine.request import GenerationRequest
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.livesrv import LiveServer, server_env

    home = Path(env.get("GUARDFORGE_HOME", Path.home() / ".guardforge"))
    server_vars = {k: v for k, v in env.items() if k.startswith("GUARDFORGE_")}
    server = LiveServer(home, {**server_env(home), **server_vars, "OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", str(os.cpu_count()))}).start()
    try:
        studio = Studio(Settings())
        body = {"prompt": "a red square on a blue field", "model": args.model, "steps": args.steps,
                "width": args.size, "height": args.size, "seed": 1}
        request = GenerationRequest(**body)
        with httpx.Client(base_url=server.url, timeout=600) as client:
            studio.generate(request)  # warm-up: load the model on both sides
            wait_done(client, client.post("/v1/jobs", json=body).json()["id"])
            direct, api = [], []
            for _ in range(args.n):
                started = time.perf_counter()
                studio.generate(request)
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                done = wait_done(client, client.post("/v1/jobs", json=body).json()["id"])
                api.append(time.perf_counter() - started)
                assert done["state"] == "succeeded", done

            long_body = {**body, "steps": min(150, args.steps * 20), "n_iter": 4}
            job_id = client.post("/v1/jobs", json=long_body).json()["id"]
            while client.get(f"/v1/jobs/{job_id}").json()["state"] != "running":
                time.sleep(0.01)
            latencies = []
            for _ in range(args.polls):
                started = time.perf_counter()
                state = client.get(f"/v1/jobs/{job_id}").json()["state"]
                latencies.append(time.perf_counter() - started)
                if state != "running":
                    break
            running_polls = len(latencies)
            client.delete(f"/v1/jobs/{job_id}")
    finally:
        server.stop()

    ratio = sum(api) / sum(direct)
    print(f"generations: {args.n} per side, {args.steps} steps, {args.size}x{args.size}, model {args.model}")
    print(f"in-process Studio.generate: median {statistics.median(direct) * 1000:.1f} ms, total {sum(direct):.2f} s")
    print(f"POST /v1/jobs + SSE done:   median {statistics.median(api) * 1000:.1f} ms, total {sum(api):.2f} s")
    print(f"time ratio api/in-process: {ratio:.3f} (goal <= 1.05)")
    print(f"GET /v1/jobs/{{id}} during a generation ({running_polls} calls): "
          f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms "
          f"(goal p99 < 50 ms)")


if __name__ == "__main__":
    main()
