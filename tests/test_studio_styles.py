"""Studio.generate with styles and dynamic prompts: each image reads its styled, expanded texts, the guard reads them
as typed ones, each infotext records them, and one seed gives one expansion (and one image) on any rerun.

The text backend is tests/test_studio_guard_texts.py's KnowsNude (a stand-in for a guard model that knows one unsafe
word); the last test runs the shipped embedded guard. The Studio, the engine and the tiny model are real."""

from __future__ import annotations

import numpy as np
import pytest

from guardforge.engine.dynamic_prompts import Wildcards, expand
from guardforge.engine.infotext import parse_infotext, request_from_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest, PathEscape
from tests.test_studio_guard_texts import _studio

STYLES = ('name,prompt,negative_prompt\n'
          'film,"{prompt}, film grain","blurry, lowres"\n'
          'frame,"a framed picture of {prompt}",\n'
          'unsafe,nude,\n')
TEMPLATE = "a __colors/warm__ {cat|dog|bird}"


@pytest.fixture
def home(gf_home):
    (gf_home / "styles.csv").write_text(STYLES)
    (gf_home / "wildcards" / "colors").mkdir(parents=True)
    (gf_home / "wildcards" / "colors" / "warm.txt").write_text("# warm\nred\n\norange\n")
    (gf_home / "wildcards" / "outfit.txt").write_text("nude\n")
    return gf_home


@pytest.fixture
def studio(home):
    return _studio(home)


def _request(prompt: str, **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": prompt, "model": "tiny-sd", "steps": 2, "width": 32, "height": 32,
                                "seed": 3, **fields})


def _pixels(image) -> np.ndarray:
    return np.asarray(image.pil, dtype=np.int16)


def test_styles_are_what_the_image_reads_and_reuse_applies_them_once(studio):
    result = studio.generate(_request("a cat", styles=["film", "frame"]), save=False)
    [image] = result.images
    styled = "a framed picture of a cat, film grain"  # film wraps the prompt, frame wraps that
    assert image.infotext.startswith(f"{styled}\nNegative prompt: blurry, lowres\nSteps: 2,")
    assert "Template" not in image.infotext  # styles alone make no template, as in A1111
    assert result.request.styles == ["film", "frame"] and result.request.prompt == "a cat"
    assert studio.guard.backend("text").calls == [[styled]]  # the guard read the styled prompt
    # Read back (PNG info, reuse), the infotext asks for the styled texts and no styles: the same image again.
    again = studio.generate(request_from_infotext(image.infotext), save=False)
    assert again.request.styles == [] and again.images[0].infotext == image.infotext
    assert np.abs(_pixels(again.images[0]) - _pixels(image)).max() <= 1


def test_styles_csv_is_read_at_use(studio, home):
    assert studio.styled(_request("a cat", styles=["film"])).prompt == "a cat, film grain"
    (home / "styles.csv").write_text('name,prompt\nfilm,"{prompt}, kodachrome"\n')
    assert studio.styled(_request("a cat", styles=["film"])).prompt == "a cat, kodachrome"


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"styles": ["film", "nope"]}, InvalidRequest, "unknown style 'nope'; known styles: film, frame, unsafe"),
    ({"prompt": "a __missing__ cat"}, InvalidRequest, "prompt: unknown wildcard __missing__"),
    ({"negative_prompt": "{blurry|lowres"}, InvalidRequest, "negative_prompt: '{' is never closed"),
    ({"prompt": "a __../styles__ cat"}, PathEscape, "a name is a path inside the wildcards folder"),
])
def test_bad_styles_and_templates_are_refused_before_any_model_loads(studio, fields, error, message):
    request = _request(**{"prompt": "a cat", **fields})
    with pytest.raises(error, match=message):
        studio.generate(request, save=False)
    with pytest.raises(error, match=message):
        studio.submit(request)
    assert studio.pipelines.loaded() == [] and studio.guard.backend("text").calls == []


def test_each_image_reads_its_own_expansion_and_a_seed_gives_it_back(studio, home):
    events = []
    result = studio.generate(_request(TEMPLATE, styles=["film"], seed=10, batch_size=2, n_iter=2), save=False,
                             on_progress=events.append)
    template = f"{TEMPLATE}, film grain"
    wildcards = Wildcards(home / "wildcards")
    prompts = [parse_infotext(image.infotext)["Prompt"] for image in result.images]
    # Each image's prompt is the template expanded with that image's seed (engine/dynamic_prompts.py's tests
    # hold the expansion itself to hand-worked sets).
    assert result.seeds == [10, 11, 12, 13]
    assert prompts == [expand(template, seed, wildcards) for seed in result.seeds]
    assert prompts == ["a orange cat, film grain", "a orange bird, film grain", "a orange bird, film grain",
                       "a orange cat, film grain"]
    for image in result.images:
        assert parse_infotext(image.infotext)["Template"] == template
    # The request keeps its template; the guard read each distinct expansion once.
    assert result.request.prompt == TEMPLATE and result.request.styles == ["film"]
    assert studio.guard.backend("text").calls == [["a orange cat, film grain", "a orange bird, film grain"]]
    # Progress counts over the whole request, batches numbered as batch_size groups them.
    assert [(e.step, e.total, e.batch_index) for e in events] == [(s, 8, (s - 1) // 4) for s in range(1, 9)]

    # The third image's seed alone: the same expansion, the same pixels (within BLAS's one 8-bit level).
    alone = studio.generate(_request(TEMPLATE, styles=["film"], seed=12), save=False)
    assert alone.images[0].infotext == result.images[2].infotext
    assert np.abs(_pixels(alone.images[0]) - _pixels(result.images[2])).max() <= 1
    assert np.abs(_pixels(result.images[1]) - _pixels(result.images[2])).max() > 8  # not one image four times


def test_a_random_seed_is_drawn_before_the_expansion(studio, home):
    result = studio.generate(_request("{a|b|c|d|e|f} square", seed=-1, steps=1), save=False)
    [image] = result.images
    assert result.request.seed == image.seed != -1
    assert parse_infotext(image.infotext)["Prompt"] == expand("{a|b|c|d|e|f} square", image.seed,
                                                              Wildcards(home / "wildcards"))


def test_a_wildcard_or_style_that_brings_an_unsafe_word_is_blocked_like_the_typed_word(studio):
    typed = studio.generate(_request("a nude woman"), save=False)
    through_wildcard = studio.generate(_request("a __outfit__ woman"), save=False)
    through_style = studio.generate(_request("a woman", styles=["unsafe"]), save=False)
    for result in (typed, through_wildcard, through_style):
        assert result.blocked and result.images == [] and result.prompt_verdict.violated == ["S12"]
        assert result.prompt_verdict.action == typed.prompt_verdict.action == "block"
    calls = studio.guard.backend("text").calls
    assert calls[:2] == [["a nude woman"], ["a nude woman"]] and calls[2] == ["a woman, nude"]
    # One image of a batch is enough: the whole request is blocked before the engine runs.
    batch = studio.generate(_request("a {red|nude} woman", batch_size=4, steps=1), save=False)
    assert batch.blocked and sorted(studio.guard.backend("text").calls[-1]) == ["a nude woman", "a red woman"]
    assert studio.pipelines.loaded() == []


def test_the_embedded_guard_blocks_a_wildcards_phrase_as_the_typed_phrase(home):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    (home / "wildcards" / "scene.txt").write_text("# one value\nnaked woman, explicit sex\n")
    studio = Studio(Settings(home=home))
    typed = studio.generate(_request("a naked woman, explicit sex"), save=False)
    expanded = studio.generate(_request("a __scene__"), save=False)
    assert typed.blocked and expanded.blocked
    assert expanded.prompt_verdict.violated == typed.prompt_verdict.violated and "S12" in typed.prompt_verdict.violated


def test_a_skip_ends_the_rest_of_its_batch_when_images_run_one_at_a_time(studio):
    import threading

    skip, steps_per_image = threading.Event(), []

    def on_progress(event):
        steps_per_image.append(event.step)
        if event.step == 1:  # the first image's first step: skip its batch (images 1 and 2 of 4)
            skip.set()

    result = studio.generate(_request("a {red|blue|green|white} square", seed=20, batch_size=2, n_iter=2, steps=3),
                             save=False, on_progress=on_progress, skip=skip)
    assert len({parse_infotext(image.infotext)["Prompt"] for image in result.images}) > 1  # one at a time
    assert len(result.images) == 4 and not skip.is_set()  # the skip is spent once its batch ends
    # One step each for the skipped batch's two images (diffusers ends a run after the step that saw the skip),
    # three for each of the next batch's: the skip did not end at the first image.
    assert len(steps_per_image) == 1 + 1 + 3 + 3
