"""Prompt editing through Studio.generate: the guard reads every prompt a step reads, the infotext keeps the prompt
as typed, and a ControlNet unit steers a run whose prompt switches part-way.

The text backend is a test-only class implementing the guard's backend protocol (one unsafe word, "nude"); the
Guard, the Policy, the Studio and the engine are the real ones."""

from __future__ import annotations

import numpy as np
import pytest

from guardforge.db import Database
from guardforge.engine.prompt_schedule import guarded_pairs
from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest
from guardforge.guard.audit import AuditLog
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from tests.test_controlnet_engine import MagentaIsUnsafe, b64, square
from tests.test_studio_guard_texts import KnowsNude
from tests.tiny_controlnet import save_tiny_controlnet


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    import shutil

    home = tmp_path_factory.mktemp("edit") / "home"
    shutil.copytree(tiny_model_dir, home / "models" / "Stable-diffusion" / "tiny-sd")
    save_tiny_controlnet(home / "models" / "ControlNet" / "tiny-cn", seed=0)
    return home


@pytest.fixture(scope="module")
def texts():
    return KnowsNude()


@pytest.fixture(scope="module")
def studio(home, texts):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=home, default_model="tiny-sd", device="cpu"),
                  guard=Guard(load_policy("default"), text_backend=texts, image_backend=MagentaIsUnsafe(),
                              audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))


def generate(studio, prompt, **fields):
    base = {"negative_prompt": "blurry", "model": "tiny-sd", "steps": 3, "seed": 5, "sampler": "Euler",
            "width": 16, "height": 16}
    return studio.generate(GenerationRequest(**{**base, "prompt": prompt, **fields}), save=False)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].pil.convert("RGB"), dtype=np.int16)


def test_a_prompt_that_only_a_step_reads_is_guarded_before_anything_loads(studio, texts):
    # As typed, "a cat|nude photo" names nothing unsafe to this guard; its second step reads "a nude photo".
    result = generate(studio, "a [cat|nude] photo")
    assert result.blocked and result.images == [] and studio.pipelines.loaded() == []
    assert any("a nude photo" in batch for batch in texts.calls)
    assert generate(studio, "a [cat|nude] photo", steps=1).blocked is False  # one step: only "a cat photo" runs
    # Dynamic prompts are expanded first: then `|` outside brackets is gone and the alternation is read.
    assert generate(studio, "a {red|blue} [cat|nude] photo").blocked
    assert generate(studio, "a photo", negative_prompt="[blurry:nude:1]").blocked is False  # a negative is no ask


def test_the_guard_reads_each_scheduled_prompt_and_the_infotext_keeps_the_typed_one(studio, texts):
    texts.calls.clear()
    result = generate(studio, "a [cat:dog:1] photo")
    read = {text for batch in texts.calls for text in batch}
    assert {"a cat photo", "a dog photo"} <= read
    assert result.images[0].infotext.startswith("a [cat:dog:1] photo\nNegative prompt: blurry\n")


def test_a_controlnet_unit_steers_a_run_whose_prompt_switches(studio):
    unit = {"image": b64(square(16)), "module": "canny", "model": "tiny-cn"}
    four = {"controlnet": [unit], "steps": 4}
    dog = pixels(generate(studio, "a dog", **four))
    assert np.array_equal(pixels(generate(studio, "a [cat:dog:0]", **four)), dog)
    switched = pixels(generate(studio, "a [cat:dog:1]", **four))  # steps 0 and 1 "a cat", 2 and 3 "a dog"
    assert not np.array_equal(switched, dog)
    assert not np.array_equal(switched, pixels(generate(studio, "a cat", **four)))
    assert not np.array_equal(switched, pixels(generate(studio, "a [cat:dog:1]", steps=4)))  # the unit steers it


def test_a_weight_that_only_a_step_reads_is_refused_as_a_typed_one_is(studio):
    # As typed the colon is followed by a bracket, not a weight; step 2 reads "(a:1.2.3)".
    with pytest.raises(InvalidRequest, match="'1.2.3'"):
        generate(studio, "(a:[1.2|1.2.3])")
    with pytest.raises(InvalidRequest, match="'1.2.3'"):  # what submit checks, before any job is queued
        guarded_pairs(GenerationRequest(prompt="(a:[1.2|1.2.3])", steps=3), studio.model("tiny-sd"))
