"""`guardforge.cli.main()` called in the test process as the console script calls it: the same code as a
subprocess run without the interpreter's and torch's start-up (seconds each on a shared CPU)."""

from __future__ import annotations

import os
import sys


def cli_caller(monkeypatch, capsys, env: dict[str, str]):
    """A function (*args) -> (exit code, stdout, stderr) that runs `guardforge *args` with `env` set."""
    from guardforge.cli import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # main() sets this default in os.environ; monkeypatch puts the session's value back afterwards.
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"))

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["guardforge", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return call
