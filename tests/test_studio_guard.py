"""Studio.generate guards what the engine will read: the prompt without weighting syntax and <lora:> tags, and a
long prompt in windows, so a phrase split by syntax or hidden in filler is still seen before the engine runs.

The context-limited backend is a test-only class implementing the guard's backend protocol (a stand-in for a
model that reads only the start of a text); the Guard, the Policy, the Studio and the engine are the real ones.
"""

from __future__ import annotations

import pytest

from guardforge.engine.request import GenerationRequest
from guardforge.db import Database
from guardforge.guard.audit import AuditLog
from guardforge.guard.backends.base import Scores
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from guardforge.studio import GUARD_WINDOW_WORDS, encoded_prompt_views


class ReadsTheFirstWords:
    """Text backend: S1 = 1 when one of the first `context` words is 'forbidden' (a guard with a short context)."""

    name = "test-context"
    categories = frozenset({"S1"})

    def __init__(self, context: int = 50):
        self.context, self.seen = context, []

    def score_texts(self, texts: list[str]) -> list[Scores]:
        self.seen += texts
        return [Scores({"S1": float("forbidden" in text.split()[:self.context])}) for text in texts]


class NothingIsUnsafe:
    name = "test-safe"
    categories = frozenset({"S12"})

    def score_images(self, images):
        return [Scores({"S12": 0.0}) for _ in images]


@pytest.fixture
def studio(gf_home, tiny_model_dir):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=gf_home),
                  guard=Guard(load_policy("default"), text_backend=ReadsTheFirstWords(),
                              image_backend=NothingIsUnsafe(),
                              audit=AuditLog(Database(f"sqlite:///{gf_home / 'audit.db'}"))))


def _generate(studio, prompt: str):
    return studio.generate(GenerationRequest(prompt=prompt, model="tiny-sd", steps=2, width=16, height=16, seed=1),
                           save=False)


@pytest.mark.parametrize("prompt", ["a forb(i:1.0)dden thing", "a [forb]idden thing", "a forb<lora:x:0.5>idden thing",
                                    "a (forbidden:0.9) thing"])
def test_a_word_split_by_syntax_is_guarded_as_the_engine_reads_it(studio, prompt):
    result = _generate(studio, prompt)
    assert result.blocked and result.images == [] and result.prompt_verdict.violated == ["S1"]
    assert studio.pipelines.loaded() == []  # the engine never ran


def test_a_word_hidden_past_the_guards_context_is_found_in_a_window(studio):
    filler = " ".join(["a quiet green meadow under a pale sky"] * 12)  # 96 words
    prompt = f"{filler} and a forbidden thing"
    views = encoded_prompt_views(prompt)
    assert len(views) > 2 and all(len(view.split()) <= GUARD_WINDOW_WORDS for view in views[1:])
    assert _generate(studio, prompt).blocked
    assert not _generate(studio, f"{filler} and a cat").blocked  # the windows themselves flag nothing new


def test_every_view_is_audited_and_a_plain_prompt_is_scored_once(studio):
    backend = studio.guard.backend("text")
    _generate(studio, "a red circle")
    assert backend.seen == ["a red circle"]
    _generate(studio, "a (red:1.2) circle")
    assert backend.seen[1:] == ["a (red:1.2) circle", "a red circle"]
    assert [row["checkpoint"] for row in studio.guard.audit.recent(5)] == ["output_image", "prompt", "prompt",
                                                                         "output_image", "prompt"]


def test_the_embedded_guard_reads_through_weighting_syntax(gf_home, tiny_model_dir):
    """The case a review found, with the real embedded guard: before, the raw text scored S12 0.009 and the
    engine drew what "a naked woman, explicit sex" draws; now it is blocked like the plain wording."""
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=gf_home))
    result = _generate(studio, "a n(a:1)ked woman, expl(i:1)cit s(e:1)x")
    assert result.blocked and "S12" in result.prompt_verdict.violated


def test_a_bad_negative_prompt_is_refused_before_any_model_loads(studio):
    from guardforge.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="1.2.3"):
        studio.generate(GenerationRequest(prompt="a cat", negative_prompt="(blurry:1.2.3)", model="tiny-sd", steps=2,
                                          width=16, height=16), save=False)
    assert studio.pipelines.loaded() == []
