"""The shipped tiny-shapes-canny ControlNet controls where tiny-shapes draws: measured, not assumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardforge.train.shapes import control

SHIPPED = Path(__file__).resolve().parent.parent / "guardforge" / "assets" / "controlnet" / "tiny-shapes-canny"


def test_control_cases_name_no_place_and_spread_the_places():
    cases = control.control_cases(200)
    for case in cases:
        words = set(case.prompt.replace(",", "").split())
        assert not words & {"left", "right", "top", "bottom", "centre", "center", "middle", "large", "small"}
        assert {case.target.colour, case.target.shape, case.scene.background} <= words
    places = [case.target.position for case in cases]
    assert all(25 <= places.count(p) <= 55 for p in set(places)) and len(set(places)) == 5
    assert control.control_cases(20) == control.control_cases(20)


def test_wilson_interval():
    low, high = control.wilson_interval(38, 40)
    assert 0.83 < low < 0.84 and 0.98 < high < 0.99  # 95% CI of 38/40
    assert control.wilson_interval(0, 10)[0] == 0.0 and control.wilson_interval(10, 10)[1] == 1.0


def test_shipped_controlnet_is_listed_and_shipped_whole(tmp_path):
    from guardforge.models.registry import ModelRegistry
    from guardforge.settings import Settings

    entry = ModelRegistry(Settings(home=tmp_path / "home")).resolve("tiny-shapes-canny", kind="controlnet")
    assert (entry.kind, entry.source, entry.format) == ("controlnet", "shipped", "diffusers")
    assert {p.name for p in SHIPPED.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors",
                                                    "MODEL_CARD.md"}
    assert "cv2.Canny" in (SHIPPED / "MODEL_CARD.md").read_text()


def test_shipped_controlnet_puts_the_object_where_the_edges_are(tmp_path):
    """Through the product path (Studio.generate with a canny unit on the shipped tiny-shapes): the object lands
    where the control image has it, and without the unit it does not."""
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=tmp_path / "home", guard={"policy": "off"}))
    generate = control.studio_generator(studio, "tiny-shapes-canny", steps=8, cfg=7.5)
    with_control, without = control.evaluate(generate, n=10, seed=0)
    # The prompt names no place: tiny-shapes alone draws the object in the centre, where none of these 10 is.
    assert with_control.correct["position"] >= 9, with_control.readings
    assert without.correct["position"] <= 3, without.readings
    # The prompt still decides what is drawn.
    assert with_control.correct["colour"] >= 9 and with_control.correct["shape"] >= 7, with_control.readings


def test_eval_control_command_prints_both_rows_and_writes_the_grid(tmp_path, monkeypatch):
    import re

    from typer.testing import CliRunner

    from guardforge.cli import _register, app

    monkeypatch.setenv("GUARDFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GUARDFORGE_GUARD__POLICY", "off")
    _register()
    result = CliRunner().invoke(app, ["eval", "control", "--n", "2", "--steps", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^(with control|without control)\s+(\d+\.\d)%", result.output, re.M)
    assert [label for label, _ in rows] == ["with control", "without control"], result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["control_tiny-shapes-canny_canny64_Euler_cfg7.5_steps2.png"]
    refused = CliRunner().invoke(app, ["eval", "control", "--n", "1", "--controlnet", "no-such-net"])
    assert refused.exit_code != 0
