"""A real `guardforge serve` subprocess on loopback for the server, queue-restart, UI and schema tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def read_events(stream, on_event=None) -> list[tuple[str, dict]]:
    """A job's server-sent events as (name, data) pairs, read until "done". `on_event(events)` runs after each one
    arrives, so a test can act mid-stream (cancel a job, unblock another)."""
    events, name = [], None
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
            if on_event:
                on_event(events)
            if name == "done":
                break
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL server (trust auth, loopback, its own data folder) for as long as the object lives, when its
    binaries are installed: the queue tests and a database that goes down under a running server."""

    def __init__(self):
        import pytest

        self.initdb, self.pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
        pytest.importorskip("psycopg")
        # postgres refuses to run as root; run it as the postgres user where we are root.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.data = Path(tempfile.mkdtemp(prefix="gf-pg-"))
        if self.as_user:
            shutil.chown(self.data, "postgres")
        self.port = free_port()
        subprocess.run([*self.as_user, self.initdb, "-D", str(self.data / "db"), "-U", "postgres", "--auth=trust"],
                       check=True, capture_output=True)
        self.start()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data / "db"), "-w", "-l", str(self.data / "log"),
                        "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def make_home(root: Path, tiny_model_dir: Path) -> Path:
    """A guardforge home whose models/Stable-diffusion holds the tiny model as `tiny-sd` (as gf_home)."""
    home = root / "home"
    target = home / "models" / "Stable-diffusion" / "tiny-sd"
    if not target.exists():
        shutil.copytree(tiny_model_dir, target)
    for sub in ("Lora", "VAE", "ControlNet"):
        (home / "models" / sub).mkdir(parents=True, exist_ok=True)
    return home


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDFORGE_")}
    env.update({
        "GUARDFORGE_HOME": str(home), "GUARDFORGE_DEFAULT_MODEL": "tiny-sd", "GUARDFORGE_GUARD__POLICY": "off",
        "GUARDFORGE_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        # The test machine is shared: one intra-op thread keeps the worker from starving the event loop.
        "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
        # A stop waits this long for gradio's and our event streams; the drain itself has its own test.
        "GUARDFORGE_SERVER__GRACEFUL_SHUTDOWN_S": "1",
    })
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run([sys.executable, "-m", "guardforge", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"guardforge {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class LiveServer:
    """`python -m guardforge serve` on a free loopback port; its log goes to home/server-N-PORT.log."""

    def __init__(self, home: Path, env: dict[str, str], ui: bool = False):
        self.home = home
        self.env = env
        self.ui = ui
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, timeout: float = 240) -> LiveServer:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it (several servers start side by side)."""
        n = len(list(self.home.glob("server-*.log")))
        self.log_path = self.home / f"server-{n}-{self.port}.log"
        args = [sys.executable, "-m", "guardforge", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning"] + ([] if self.ui else ["--no-ui"])
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_ready(self, timeout: float = 240) -> LiveServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
