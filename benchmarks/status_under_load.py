"""Job-status latency under load: N concurrent pollers against a live `guardforge serve`, idle and while
generations run, in one run.

Run from the repository root:

    python benchmarks/status_under_load.py [--pollers 50] [--seconds 20] [--interval 0.25] [--route job]

It starts `python -m guardforge serve --no-ui` on a free loopback port with a fresh temporary GUARDFORGE_HOME
and the shipped default model (tiny-shapes, CPU, default guard, uvicorn at the CLI's log level, info), as a
user would start it: no GUARDFORGE_*, OMP_*, MKL_* or TORCH_* variable of the caller's shell reaches it (pass
--env NAME=VALUE to set one; --server-root runs another source tree, e.g. `git archive` of an older commit,
for a before/after in one sitting). One warm-up job loads the model. Then two phases of `--seconds` each, with
`--pollers` asyncio tasks sharing one httpx.AsyncClient (httpx's default pool unless --pool per-poller):

- idle: the reference. Nothing runs; the pollers read the finished warm-up job.
- busy: a feeder keeps two jobs of `--steps` steps in the queue, so the worker is always generating; the
  pollers read the oldest unfinished job (running, or queued with its position).

Each poller sends a request, waits `--interval` seconds after the answer (0: back to back, which measures
throughput: latency then is about pollers / requests per second), and records the latency of every request
and every error by type. The pollers start spread evenly over one interval, as independent clients would
(`--start burst`: all in the same instant, the worst case of a page of 50 tabs reopened at once: its first
round then queues 50 requests, connections included, behind each other, and that round alone is the slowest
1% of a 15 s phase). `--route` picks what is polled: `job` GET /v1/jobs/{id}, `progress` GET
/sdapi/v1/progress, `healthz` GET /healthz (no database: the floor of the HTTP stack itself).

It prints per phase the requests, p50/p95/p99/max latency, errors by type and the server's CPU use; the
busy/idle ratios; what state the busy polls saw; the server's peak resident memory (VmHWM) and this client's;
and any server log line other than the banner and access lines. Other processes on the machine skew every
figure: the 1-minute load average at the start and end is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BODY = {"prompt": "a red circle on a blue background", "seed": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def schedstat(pid: int, tid: int) -> tuple[float, float]:
    """Seconds thread `tid` of `pid` has run, and has waited runnable for a core (the kernel's schedstat)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        ran, waited, _ = f.read().split()
    return int(ran) / 1e9, int(waited) / 1e9


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Phase:
    def __init__(self, name: str):
        self.name = name
        self.latencies: list[float] = []
        self.sent: list[float] = []  # when each of `latencies` was sent, seconds into the phase
        self.origin = 0.0  # perf_counter at the phase's start
        self.errors: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self.seconds = 0.0
        self.cpu = 0.0  # the server's CPU seconds (all threads) during the phase
        self.loop = (0.0, 0.0)  # the server's event-loop thread: seconds run, seconds waited for a core
        self.client_loop = (0.0, 0.0)  # the same for this process's own event loop (the pollers)

    def line(self) -> str:
        ms = [x * 1000 for x in self.latencies]
        n = len(ms) + sum(self.errors.values())
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"{self.name:5s} {n:6d} requests ({n / self.seconds:6.1f}/s): p50 {percentile(ms, .5):7.1f} ms  "
                f"p95 {percentile(ms, .95):7.1f}  p99 {percentile(ms, .99):7.1f}  max {max(ms, default=0):7.1f}"
                f"  errors: {errors}\n      server CPU {self.cpu / self.seconds * 100:.0f}%; its event loop ran "
                f"{self.loop[0] / self.seconds * 100:.0f}% of the time and waited for a core "
                f"{self.loop[1] / self.seconds * 100:.0f}%; the pollers' loop ran "
                f"{self.client_loop[0] / self.seconds * 100:.0f}%, waited {self.client_loop[1] / self.seconds * 100:.0f}%"
                f"\n      the slowest 1% were sent in second(s) {self.slowest_seconds()} of the phase")

    def slowest_seconds(self) -> str:
        """Where the tail comes from: a start-up burst shows as second 0, a stall as one later second."""
        slowest = sorted(zip(self.latencies, self.sent), reverse=True)[:max(1, len(self.latencies) // 100)]
        return ", ".join(f"{second} ({count})" for second, count in
                         sorted(Counter(int(sent) for _, sent in slowest).items()))


async def poll(client: httpx.AsyncClient, url_of, phase: Phase, until: float, interval: float) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            response = await client.get(url_of())
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                phase.errors[f"HTTP {response.status_code}"] += 1
            else:
                phase.latencies.append(elapsed)
                phase.sent.append(started - phase.origin)
                if response.headers.get("content-type", "").startswith("application/json"):
                    phase.states[str(response.json().get("state", "-"))[:16]] += 1
        except httpx.HTTPError as exc:
            phase.errors[type(exc).__name__] += 1
        if interval:
            await asyncio.sleep(interval)


async def poll_raw(port: int, url_of, phase: Phase, until: float, interval: float, timeout: float) -> None:
    """As poll, on one kept-alive connection of asyncio streams and a minimal HTTP/1.1 reader: a tenth of
    httpx's CPU per request, so that on a small machine the pollers' own work does not crowd out the server."""
    reader = writer = None
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            writer.write(f"GET {url_of()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(head.split(b" ", 2)[1])
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            body = await asyncio.wait_for(reader.readexactly(length), timeout)
            elapsed = time.perf_counter() - started
            if status != 200:
                phase.errors[f"HTTP {status}"] += 1
            else:
                phase.latencies.append(elapsed)
                phase.sent.append(started - phase.origin)
                if body.startswith(b"{"):
                    phase.states[str(json.loads(body).get("state", "-"))[:16]] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            phase.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
        if interval:
            await asyncio.sleep(interval)
    if writer is not None:
        writer.close()


async def wait_state(client: httpx.AsyncClient, job_id: str, states: set[str], timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = (await client.get(f"/v1/jobs/{job_id}")).json()["state"]
        if state in states:
            return state
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} not {states} after {timeout} s")


async def feed(client: httpx.AsyncClient, body: dict, target: list[str], until: float) -> int:
    """Keep two jobs in the queue until `until`; target[0] is the oldest unfinished one. Returns jobs done."""
    pending: list[str] = []
    done = 0
    while time.monotonic() < until:
        while len(pending) < 2:
            response = await client.post("/v1/jobs", json=body)
            response.raise_for_status()
            pending.append(response.json()["id"])
        target[0] = pending[0]
        state = (await client.get(f"/v1/jobs/{pending[0]}")).json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            if state != "succeeded":
                raise RuntimeError(f"job {pending[0]} ended {state}")
            pending.pop(0)
            done += 1
            continue
        await asyncio.sleep(0.1)
    for job_id in pending:  # leave the server idle for whatever comes next
        await client.delete(f"/v1/jobs/{job_id}")
    return done


async def poller(client: httpx.AsyncClient, port: int, url_of, phase: Phase, until: float, args, index: int):
    if args.start == "staggered":
        await asyncio.sleep(args.interval * index / args.pollers)
    if args.client == "raw":
        await poll_raw(port, url_of, phase, until, args.interval, args.timeout)
    else:
        await poll(client, url_of, phase, until, args.interval)


async def measured(phase: Phase, pid: int, pollers) -> None:
    """Run `pollers` (awaitables) and record the phase's length, the server's CPU and both event loops' time."""
    me = os.getpid()
    cpu, loop, client = cpu_seconds(pid), schedstat(pid, pid), schedstat(me, me)  # main threads run the loops
    started = time.monotonic()
    phase.origin = time.perf_counter()
    await asyncio.gather(*pollers)
    phase.seconds = time.monotonic() - started
    phase.cpu = cpu_seconds(pid) - cpu
    phase.loop = tuple(b - a for a, b in zip(loop, schedstat(pid, pid)))
    phase.client_loop = tuple(b - a for a, b in zip(client, schedstat(me, me)))


async def run(url: str, args, pid: int) -> tuple[Phase, Phase]:
    port = int(url.rsplit(":", 1)[1])
    # httpx's own pool by default (100 connections, 20 kept alive, idle ones dropped after 5 s), as a client
    # written without thought for it would have; `--pool per-poller` keeps one live connection per poller.
    limits = (httpx.Limits(max_connections=args.pollers, max_keepalive_connections=args.pollers)
              if args.pool == "per-poller" else httpx.Limits())
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as client, \
            httpx.AsyncClient(base_url=url, timeout=600) as control:
        body = {**BODY, "steps": args.steps}
        warm = (await control.post("/v1/jobs", json=body)).json()["id"]
        if await wait_state(control, warm, {"succeeded", "failed", "cancelled"}) != "succeeded":
            raise RuntimeError("the warm-up job failed")
        target = [warm]
        path = {"job": lambda: f"/v1/jobs/{target[0]}", "progress": lambda: "/sdapi/v1/progress",
                "healthz": lambda: "/healthz"}[args.route]

        idle = Phase("idle")
        print("idle phase", flush=True)
        until = time.monotonic() + args.seconds
        await measured(idle, pid, (poller(client, port, path, idle, until, args, i) for i in range(args.pollers)))

        busy = Phase("busy")
        feeder = asyncio.create_task(feed(control, body, target, time.monotonic() + args.seconds + 30))
        while target[0] == warm:
            await asyncio.sleep(0.05)
        await wait_state(control, target[0], {"running"})
        print("busy phase", flush=True)
        until = time.monotonic() + args.seconds
        await measured(busy, pid, (poller(client, port, path, busy, until, args, i) for i in range(args.pollers)))
        feeder.cancel()
        try:
            await feeder
        except asyncio.CancelledError:
            pass
        return idle, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=0.25, help="pause after each answer, per poller")
    parser.add_argument("--start", choices=("staggered", "burst"), default="staggered",
                        help="pollers start spread over one interval, or all at once")
    parser.add_argument("--route", choices=("job", "progress", "healthz"), default="job")
    parser.add_argument("--steps", type=int, default=50, help="steps per generation in the busy phase")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable for the server (e.g. GUARDFORGE_SERVER__WORKER_THREADS=1)")
    parser.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                        help="the pollers' client: one httpx.AsyncClient, or one raw kept-alive connection each")
    parser.add_argument("--pool", choices=("default", "per-poller"), default="default",
                        help="the httpx client's pool: httpx's defaults, or one kept-alive connection per poller")
    parser.add_argument("--server-root", type=Path, default=None,
                        help="run the server from this source tree (e.g. `git archive` of an older commit)")
    parser.add_argument("--log-level", default="info",
                        help="the server's (uvicorn's) log level; info, the CLI's default, logs every request")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (database, log)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gf-load-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GUARDFORGE_", "OMP_", "MKL_", "TORCH_"))}
    env.update(GUARDFORGE_HOME=str(home), GUARDFORGE_DEVICE="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(args.server_root or ROOT))
    env.update(item.split("=", 1) for item in args.env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "guardforge", "serve", "--host", "127.0.0.1", "--port",
                                   str(port), "--no-ui", "--log-level", args.log_level],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, cwd=args.server_root or ROOT)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        print(f"server pid {server.pid} on {url}", flush=True)  # for a profiler: py-spy record --pid
        load = os.getloadavg()[0]
        idle, busy = asyncio.run(run(url, args, server.pid))
        status = proc_status(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"CPU: {model}, {os.cpu_count()} cores; 1-minute load average {load:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end (other processes share these cores)")
    print(f"{args.pollers} pollers on {args.route}, {args.interval * 1000:.0f} ms between a poller's requests, "
          f"{args.seconds:.0f} s a phase, {args.start} start, busy jobs of {args.steps} steps, client "
          f"{'raw' if args.client == 'raw' else 'httpx, pool ' + args.pool}; server "
          f"{args.server_root or ROOT}, env {args.env or 'defaults'}")
    print(idle.line())
    print(busy.line())
    for q in (.5, .99):
        i, b = percentile(idle.latencies, q), percentile(busy.latencies, q)
        print(f"busy/idle p{int(q * 100)}: {b / i:.2f}")
    if busy.states:
        print("busy polls saw: " + ", ".join(f"{k} {v}" for k, v in busy.states.most_common()))
    print(f"server: peak RSS {int(status['VmHWM'].split()[0]) / 1024:.0f} MiB, {status['Threads'].strip()} threads "
          f"at the end; this client: peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
          f"CPU {sum(os.times()[:2]):.1f} s")
    lines = log_path.read_text(errors="replace").splitlines()
    # Anything but the start-up banner and access lines: errors, warnings, what the server saw of a reset
    notes = [line for line in lines if not line.startswith("guardforge on http") and " HTTP/1.1\" " not in line
             and not line.startswith("INFO:     ")]
    print(f"server log: {len(lines)} lines, {len(notes)} other than start-up and access lines"
          + (":\n" + "\n".join(notes[-15:]) if notes else ""))
    if args.keep:
        print(f"home kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
