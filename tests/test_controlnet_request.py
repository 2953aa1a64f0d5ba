"""The ControlNet unit schema and the registry's ControlNets (no model is run here)."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import ValidationError

from guardforge.engine.request import ControlNetUnit, GenerationRequest
from guardforge.errors import InvalidRequest
from guardforge.models.registry import ModelRegistry
from guardforge.settings import Limits, Settings


def test_unit_defaults_follow_sd_webui_controlnet():
    unit = ControlNetUnit(model="cn")
    assert (unit.module, unit.weight, unit.guidance_start, unit.guidance_end) == ("none", 1.0, 0.0, 1.0)
    assert (unit.control_mode, unit.resize_mode, unit.processor_res) == ("Balanced", "Crop and Resize", 512)


def test_unit_module_aliases_and_refusals():
    assert ControlNetUnit(model="cn", module="Canny").module == "canny"
    assert ControlNetUnit(model="cn", module="invert (from white bg & black line)").module == "invert"
    with pytest.raises(ValidationError, match="unknown ControlNet module 'nope'"):
        ControlNetUnit(model="cn", module="nope")
    # A module that needs weights is refused at the edge, with the reason.
    with pytest.raises(ValidationError, match=r"'depth_midas' \('depth'\) is unavailable: it needs the MiDaS depth annotator"):
        ControlNetUnit(model="cn", module="depth_midas")
    with pytest.raises(ValidationError, match="guidance_start 0.5 must be below guidance_end 0.5"):
        ControlNetUnit(model="cn", guidance_start=0.5, guidance_end=0.5)
    with pytest.raises(ValidationError, match="extra"):
        ControlNetUnit(model="cn", enabled=True)
    with pytest.raises(ValidationError):
        ControlNetUnit(model="cn", control_mode="Guess")


def test_request_needs_a_control_image_and_caps_units():
    with pytest.raises(ValidationError, match="controlnet unit 0 has no image, and there is no init_image"):
        GenerationRequest(prompt="x", controlnet=[{"model": "cn"}])
    request = GenerationRequest(prompt="x", init_image="aGk=", controlnet=[{"model": "cn"}] * 2)
    assert request.controlnet[1].image is None
    with pytest.raises(InvalidRequest, match="controlnet units=2 is over this server's limit of 1"):
        request.check_limits(Limits(max_controlnet_units=1))


def test_shipped_controlnets_listed_and_overridden(gf_home, tmp_path):
    registry = ModelRegistry(Settings())
    registry.shipped_controlnet_root = tmp_path / "assets" / "controlnet"
    assert registry.names("controlnet") == []
    shipped = registry.shipped_controlnet_root / "tiny-shapes-canny"
    shipped.mkdir(parents=True)
    (shipped / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 768}))
    registry.refresh()
    entry = registry.resolve("tiny-shapes-canny", kind="controlnet")
    assert (entry.source, entry.format, entry.kind) == ("shipped", "diffusers", "controlnet")
    assert "tiny-shapes-canny" not in registry.names("checkpoint")
    user = gf_home / "models" / "ControlNet" / "tiny-shapes-canny"
    shutil.copytree(shipped, user)
    registry.refresh()
    assert registry.resolve("tiny-shapes-canny", kind="controlnet").source == "user"
    assert registry.names("controlnet") == ["tiny-shapes-canny"]


def test_units_with_outpaint_are_refused_until_laid_on_the_canvas():
    with pytest.raises(ValidationError, match="controlnet units with outpaint are not supported yet"):
        GenerationRequest(prompt="x", init_image="aGk=", outpaint={"left": 64},
                          controlnet=[ControlNetUnit(model="cn", image="aGk=")])
