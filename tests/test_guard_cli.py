"""`guardforge guard` commands, run in-process against a real loopback guard server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from guardforge.cli import _register, app
from tests.test_guard_openai_compat import server  # noqa: F401  (the loopback server fixture)

_register()


@pytest.fixture
def env(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GUARDFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables to the terminal; keep rows on one line
    monkeypatch.setenv("GUARDFORGE_GUARD__TEXT_BACKEND", "openai-compatible")
    monkeypatch.setenv("GUARDFORGE_GUARD__IMAGE_BACKEND", "openai-compatible")
    monkeypatch.setenv("GUARDFORGE_GUARD__OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    return tmp_path


def test_check_json_one_object_per_input(env):
    from PIL import Image

    (env / "prompts.txt").write_text("safe\n\nlabels\n")
    Image.new("RGB", (8, 8), "red").save(env / "x.png")
    result = CliRunner().invoke(app, ["guard", "check", "a knife attack", "--file", str(env / "prompts.txt"),
                                      "--image", str(env / "x.png"), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [row["input"] for row in rows] == ["a knife attack", "safe", "labels", str(env / "x.png")]
    for row in rows:
        assert {"flagged", "categories", "scores", "action", "backend", "latency_ms", "input"} <= set(row)
        assert all(0.0 <= v <= 1.0 for v in row["scores"].values())
    assert rows[0]["flagged"] and rows[0]["categories"] == ["S10"] and rows[0]["action"] == "block"
    assert not rows[1]["flagged"] and rows[1]["action"] == "allow" and rows[1]["scores"]["S1"] == 0.0
    assert rows[2]["labels_only"] and rows[2]["categories"] == ["S1"]
    assert rows[3]["type"] == "image" and rows[3]["backend"] == "openai-compatible"
    assert (env / "guardforge.db").is_file()  # every verdict went to the audit log


def test_check_needs_input(env):
    result = CliRunner().invoke(app, ["guard", "check"])
    assert result.exit_code != 0


def test_backends_table_is_plain_about_s12(env):
    result = CliRunner().invoke(app, ["guard", "backends"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for name in ("embedded", "llama-guard", "openai-compatible", "shieldgemma2"):
        assert name in flat
    assert "S12 (sexual content) only" in flat
    assert "needs guard.llama_guard_path" in flat


def test_policy_prints_the_policy_in_force(env, tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["guard", "policy"])
    assert result.exit_code == 0, result.output
    assert "policy default" in result.output and "excluded" in result.output and "blur" in result.output
    assert "model's own" in result.output  # the overall rule at the guard's own threshold
    custom = tmp_path / "mine.yaml"
    custom.write_text("name: mine\ncustom: [{code: XD, name: Deepfakes, description: fakes}]\n")
    result = CliRunner().invoke(app, ["guard", "policy", str(custom)])
    assert "Deepfakes (custom)" in result.output
    off = CliRunner().invoke(app, ["guard", "policy", "off"])
    assert "none (guard off)" in off.output
