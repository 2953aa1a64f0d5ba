"""`guardforge models list|hash` against a real models folder."""

from __future__ import annotations

import hashlib

from typer.testing import CliRunner

import guardforge.cli.cmd_models  # noqa: F401  (registers the commands)
from guardforge.cli import app
from guardforge.errors import PathEscape


def test_list_and_hash(gf_home):
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "tiny-sd" in line)
    assert all(word in row for word in ("checkpoint", "sd1", "diffusers", "user", "-"))

    hashed = runner.invoke(app, ["models", "hash", "tiny-sd"])
    assert hashed.exit_code == 0, hashed.output
    sha, short, name = hashed.output.split()
    assert len(sha) == 64 and short == sha[:10] and name == "tiny-sd"
    folder = gf_home / "models" / "Stable-diffusion" / "tiny-sd"
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*.safetensors"), key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    assert sha == digest.hexdigest()

    # The hash is now known, and `list` shows it without hashing again.
    again = runner.invoke(app, ["models", "list", "--kind", "checkpoint"], env={"COLUMNS": "200"})
    assert short in again.output
    assert "tiny-sd" not in runner.invoke(app, ["models", "list", "--kind", "lora"]).output


def test_hash_refuses_escaping_names(gf_home):
    result = CliRunner().invoke(app, ["models", "hash", "../../etc/passwd"])
    assert isinstance(result.exception, PathEscape)
