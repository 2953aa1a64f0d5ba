"""Shared fixtures: an isolated guardforge home with a tiny SD model in an A1111-style models folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: every model is built in-process or shipped in the package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.fixture
def gf_home(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A guardforge home whose models/Stable-diffusion holds the tiny model as `tiny-sd`."""
    import shutil

    home = tmp_path / "home"
    target = home / "models" / "Stable-diffusion" / "tiny-sd"
    shutil.copytree(tiny_model_dir, target)
    for sub in ("Lora", "VAE", "ControlNet"):
        (home / "models" / sub).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("GUARDFORGE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory, tiny_model_dir):
    """A live server with the web UI (tiny-sd by default) shared by the tests that need no settings of their own;
    tests/shared_server.py names what its home holds. Tests add jobs and files to it, so they look for their own."""
    from tests.shared_server import start_shared_server

    live = start_shared_server(tmp_path_factory.mktemp("shared-server"), tiny_model_dir)
    yield live
    live.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (trust auth, loopback) for the session, when its binaries are installed; each
    test makes its own database on it (tests/test_queue.py new_postgres_database)."""
    from tests.livesrv import ThrowawayPostgres

    server = ThrowawayPostgres()
    yield server.url
    server.remove()
