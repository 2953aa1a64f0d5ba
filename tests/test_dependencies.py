"""The lock and the installed set: constraints.txt covers pyproject's bounds, and LoRA's libraries fit together."""

from __future__ import annotations

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from guardforge.dependencies import lora_conflicts, require_lora_support
from guardforge.errors import IncompatibleDependencies
from guardforge.tools.deps import differences, direct_requirements, read_lock


def test_the_installed_transformers_peft_diffusers_support_lora():
    # The combination a fresh install from constraints.txt gives: transformers 5.24/5.25 with peft 0.21 failed here.
    assert lora_conflicts() == []
    require_lora_support()


def test_a_conflict_is_named_in_one_line():
    versions = {"peft": Version("0.21.2"), "transformers": Version("5.25.0"), "diffusers": Version("0.42.1")}
    problems = lora_conflicts("0.22.0", "0.6.0", "4.34.0", versions=versions)
    assert problems == ["transformers 5.25.0 needs peft >= 0.22.0, but peft 0.21.2 is installed"]
    old_transformers = {**versions, "transformers": Version("4.30.0")}
    assert lora_conflicts("0.22.0", "0.6.0", "4.34.0", versions=old_transformers)[-1] == (
        "diffusers 0.42.1 needs transformers >= 4.34.0 for LoRA, but transformers 4.30.0 is installed")
    assert lora_conflicts(versions={**versions, "peft": None}, transformers_needs_peft="0.22.0",
                          diffusers_needs_peft="0.6.0", diffusers_needs_transformers="4.34.0") == [
        "peft is not installed"]


def test_a_lora_request_with_an_incompatible_pair_is_refused_before_loading(monkeypatch, gf_home):
    # transformers' own minimum raised past the installed peft: what transformers 5.25 did to peft 0.21.2.
    from transformers.integrations import peft as transformers_peft

    from guardforge.engine.pipelines import Engine
    from guardforge.engine.request import GenerationRequest
    from guardforge.settings import Settings

    monkeypatch.setattr(transformers_peft, "MIN_PEFT_VERSION", "99.0.0")
    engine = Engine(Settings())
    with pytest.raises(IncompatibleDependencies) as caught:
        engine.check(GenerationRequest(prompt="<lora:ink:1> a red circle"))
    message = str(caught.value)
    assert "\n" not in message
    assert "needs peft >= 99.0.0" in message and "constraints.txt" in message
    engine.check(GenerationRequest(prompt="a red circle"))  # without a LoRA tag nothing needs peft


def test_the_lock_pins_every_direct_dependency_within_pyproject_bounds():
    pins = read_lock()
    for requirement in direct_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt: run python -m guardforge.tools.deps lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside pyproject's {requirement.specifier}")


def test_differences_name_what_moved_and_what_is_missing():
    pins = {"peft": "0.21.2", "transformers": "5.23.0", "torch": "2.13.0"}
    found = {"peft": "0.21.2", "transformers": "5.25.0"}
    assert differences(pins, found) == [("torch", "2.13.0", "missing"), ("transformers", "5.23.0", "5.25.0")]
