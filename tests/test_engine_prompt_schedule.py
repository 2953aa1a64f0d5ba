"""Prompt editing and alternation as A1111 reads them: schedules against hand-computed lists, then pixels on the tiny
models against plain prompts and against diffusers runs whose embeddings are switched by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from guardforge.engine.prompt_schedule import (
    MAX_NESTING,
    PassTexts,
    check_prompt_editing,
    edits,
    pass_texts,
    prompt_schedule,
    scheduled_pairs,
    text_at,
)
from guardforge.engine.prompts import encode_prompts
from guardforge.engine.request import GenerationRequest
from guardforge.engine.samplers import build_scheduler
from guardforge.errors import InvalidRequest
from tests.test_engine import engine, loaded, pixels  # noqa: F401 (fixtures)
from tests.test_engine_prompts import sdxl  # noqa: F401 (fixture)


@pytest.mark.parametrize(("prompt", "steps", "expected"), [
    # A1111's own docstring examples (modules/prompt_parser.py), which its lark grammar gives.
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[fe|||]male", 6, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female"), (6, "male")]),
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", 100, [
         (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
         (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
         (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
         (75, "fantasy landscape with a lake and an oak in background masterful"),
         (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),
    # Hand-computed: the edges (when 0 or below: `to` from the start; when at or past the steps: `from` throughout).
    ("a [cat:dog:0] b", 10, [(10, "a dog b")]),
    ("[cat:dog:-3]", 10, [(10, "dog")]),
    ("[cat:dog:10]", 10, [(10, "cat")]),
    ("[cat:dog:25]", 10, [(10, "cat")]),
    ("[cat:dog:1.0]", 10, [(10, "cat")]),  # a decimal point makes it a fraction: all 10 steps
    ("[cat:dog:1]", 10, [(1, "cat"), (10, "dog")]),  # without one, a step number
    ("[cat:dog:0.25]", 10, [(2, "cat"), (10, "dog")]),  # int(2.5)
    ("[cat:dog:4] [red:blue:0.5]", 10, [(4, "cat red"), (5, "dog red"), (10, "dog blue")]),
    # Nested, with weights inside: the alternation runs from step 1, whichever branch shows it.
    ("[(cat:1.3):[dog|fox]:2]", 4, [(1, "(cat:1.3)"), (2, "(cat:1.3)"), (3, "dog"), (4, "fox")]),
    ("[cat|dog]", 3, [(1, "cat"), (2, "dog"), (3, "cat")]),
    # A bracket with no `:` or `|` is attention, kept for the weighting that follows; escapes stay escapes.
    ("a [faded] [cat:dog:2]", 10, [(2, "a [faded] cat"), (10, "a [faded] dog")]),
    (r"a \[cat:dog:2\] b", 10, [(10, r"a \[cat:dog:2\] b")]),
    (r"[a\:b:c:2]", 10, [(2, r"a\:b"), (10, "c")]),
    # A `|` outside brackets fails A1111's grammar: the whole prompt is read as typed. Braces are not ours.
    ("a | b [cat:dog:2]", 10, [(10, "a | b [cat:dog:2]")]),
    ("{red|blue} [cat:dog:2]", 10, [(10, "{red|blue} [cat:dog:2]")]),
    # A `when` too large for int() is past every step (or, negative, before the first), not an error.
    ("[cat:dog:1e999]", 10, [(10, "cat")]),
    ("[cat:dog:-1e999]", 10, [(10, "dog")]),
])
def test_schedules_match_a1111(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize(("prompt", "expected"), [
    # Hires fix's second pass of 4 steps after a first pass of 10: step numbers count on from 10, fractions 1-2.
    ("[cat:dog:12]", [(2, "cat"), (4, "dog")]),
    ("[cat:dog:1.5]", [(2, "cat"), (4, "dog")]),
    ("[cat:dog:0.5]", [(4, "dog")]),  # switched during the first pass
    ("[cat:dog:5]", [(4, "dog")]),
    ("[cat:dog:30]", [(4, "cat")]),
])
def test_hires_second_pass_schedules_count_on_from_the_first(prompt, expected):
    assert prompt_schedule(prompt, 10, hires_steps=4) == expected
    assert prompt_schedule("[cat:dog:1.5]", 10) == [(10, "cat")]  # the first pass never reaches 1.5


def test_brackets_nested_past_the_limit_make_the_prompt_plain_text():
    deepest = "[" * MAX_NESTING + "a:b:3" + "]" * MAX_NESTING
    assert [step for step, _ in prompt_schedule(deepest, 10)] == [3, 10]
    too_deep = "[" + deepest + "]"
    assert prompt_schedule(too_deep, 10) == [(10, too_deep)]
    # Unclosed brackets, each retried as text: what lies inside them is parsed once, not once per bracket.
    unclosed = "[" * 99 + "(a)" * 6000 + ")"
    assert prompt_schedule(unclosed, 150) == [(150, unclosed)]


def test_the_sampler_reads_step_0_and_step_1_from_the_same_entry():
    # A1111's reconstruct_cond_batch: denoising step i (from 0) takes the first entry whose step is >= i.
    schedule = prompt_schedule("[cat:dog:2]", 5)
    assert [text_at(schedule, i) for i in range(5)] == ["cat", "cat", "cat", "dog", "dog"]
    alternating = prompt_schedule("[cat|dog]", 4)
    assert [text_at(alternating, i) for i in range(4)] == ["cat", "cat", "dog", "cat"]
    assert edits("[cat|dog]") and edits("a [b:3]") and not edits("a [faded] (b:1.2)") and not edits("a | [b:3]")


def test_img2img_lays_the_schedule_over_the_requests_steps(loaded):  # noqa: F811
    config = loaded.pipeline.scheduler.config
    request = GenerationRequest(prompt="[cat:dog:0.5]", negative_prompt="[blur|haze]", steps=4, sampler="Euler",
                                init_image="x", denoising_strength=0.75)
    [texts] = pass_texts(request, config, request.prompt)
    assert texts == PassTexts("[cat:dog:0.5]", "[blur|haze]", steps=4, runs=3)
    assert texts.pairs() == [("cat", "blur"), ("cat", "blur"), ("cat", "haze")]  # step 2 of 4: not reached
    assert scheduled_pairs(request, config) == [("cat", "blur"), ("cat", "haze")]
    heun = request.model_copy(update={"sampler": "Heun", "init_image": None})
    assert pass_texts(heun, config, heun.prompt)[0].steps == 7  # a second-order sampler's 2 x 4 - 1 steps
    assert scheduled_pairs(request.model_copy(update={"prompt": "cat", "negative_prompt": ""}), config) == []


def test_what_cannot_edit_prompts_is_refused():
    request = GenerationRequest(prompt="[cat:dog:2]", steps=4)
    with pytest.raises(InvalidRequest, match="needs an SD 1.x, SD 2.x or SDXL model, not flux"):
        check_prompt_editing(request, "flux")
    check_prompt_editing(request.model_copy(update={"prompt": "a [faded] cat"}), "flux")


def _run(engine, loaded, prompt, negative="blurry", steps=3, **fields):  # noqa: F811
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, steps=steps, seed=5, sampler="Euler",
                                **fields)
    [(image, _)] = engine.run(loaded, request, **({"init_image": INIT} if request.mode == "img2img" else {}))
    return pixels(image)


INIT = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3) * 7 % 251)


def _by_hand(pipe, first, then, at, steps=3, seed=5, sdxl=False):
    """diffusers' own loop with `first`'s embeddings, switched to `then`'s at the end of step `at` through the
    callback contract: under classifier-free guidance the loop holds [negative rows, positive rows]."""
    start = encode_prompts(pipe, *first, 1, torch.device("cpu")).kwargs
    switch = encode_prompts(pipe, *then, 1, torch.device("cpu")).kwargs

    def callback(pipe, step, timestep, kwargs):
        if step == at:
            kwargs["prompt_embeds"] = torch.cat([switch["negative_prompt_embeds"], switch["prompt_embeds"]])
            if sdxl:
                kwargs["add_text_embeds"] = torch.cat([switch["negative_pooled_prompt_embeds"],
                                                       switch["pooled_prompt_embeds"]])
        return kwargs

    base = pipe.scheduler
    pipe.scheduler = build_scheduler(base.config, "Euler", seed=seed)
    try:
        image = pipe(**start, num_inference_steps=steps, guidance_scale=7.0, callback_on_step_end=callback,
                     generator=[torch.Generator("cpu").manual_seed(seed)]).images[0]
    finally:
        pipe.scheduler = base
    return pixels(image)


def test_edits_switch_the_embeddings_where_the_schedule_says(engine, loaded):  # noqa: F811
    four = {"steps": 4}
    cat, dog = _run(engine, loaded, "a cat", **four), _run(engine, loaded, "a dog", **four)
    assert not np.array_equal(cat, dog)
    # The edges are plain generations: when 0 reads `to` from the start, when at or past the steps `from`.
    assert np.array_equal(_run(engine, loaded, "a [cat:dog:0]", **four), dog)
    assert np.array_equal(_run(engine, loaded, "a [cat:dog:4]", **four), cat)
    assert np.array_equal(_run(engine, loaded, "a [cat:dog:3]", **four), cat)  # A1111's sampler: steps 0-3 read 3's
    # Mid-way: steps 0 and 1 read "a cat", 2 and 3 "a dog"; as diffusers does with the embeddings switched by hand.
    switched = _run(engine, loaded, "a [cat:dog:1]", **four)
    # On this untrained model the first steps decide nearly all: a late switch moves pixels by a level or two.
    assert not np.array_equal(switched, cat) and not np.array_equal(switched, dog)
    assert np.array_equal(switched, _by_hand(loaded.pipeline, ("a cat", "blurry"), ("a dog", "blurry"), at=1, steps=4))
    # The negative prompt is scheduled the same way, in the negative rows.
    negative = _run(engine, loaded, "a cat", negative="[blurry:grainy:1]", **four)
    assert np.array_equal(negative, _by_hand(loaded.pipeline, ("a cat", "blurry"), ("a cat", "grainy"), at=1, steps=4))
    assert not np.array_equal(negative, cat)
    # Alternation over 3 steps reads cat, cat, dog: that same switch; at 1 step it is its first option.
    assert np.array_equal(_run(engine, loaded, "a [cat|dog]"), _run(engine, loaded, "a [cat:dog:1]"))
    assert np.array_equal(_run(engine, loaded, "a [cat|dog]", steps=1), _run(engine, loaded, "a cat", steps=1))


def test_img2img_reads_the_schedule_over_the_steps_its_strength_runs(engine, loaded):  # noqa: F811
    img2img = {"init_image": "x", "denoising_strength": 0.75, "steps": 4}  # 3 of 4 steps run
    cat = _run(engine, loaded, "a cat", **img2img)
    # [cat:dog:0.5] is step 2 of the request's 4 (not of the 3 that run): steps 0-2 all read step 2's "a cat".
    assert np.array_equal(_run(engine, loaded, "a [cat:dog:0.5]", **img2img), cat)
    switched = _run(engine, loaded, "a [cat:dog:1]", **img2img)  # steps 0 and 1 "a cat", step 2 "a dog"
    assert not np.array_equal(switched, cat)
    assert not np.array_equal(switched, _run(engine, loaded, "a dog", **img2img))


def test_sdxl_switches_the_pooled_embeddings_too(engine, sdxl):  # noqa: F811
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import MemorySettings

    loaded_xl = LoadedModel(entry=None, pipeline=sdxl, memory=MemorySettings(), device=torch.device("cpu"))
    switched = _run(engine, loaded_xl, "a [cat:dog:1]")
    assert np.array_equal(switched, _by_hand(sdxl, ("a cat", "blurry"), ("a dog", "blurry"), at=1, sdxl=True))
    assert not np.array_equal(switched, _run(engine, loaded_xl, "a cat"))


def test_hires_fix_second_pass_counts_on_from_the_first(engine, loaded):  # noqa: F811
    # First pass 3 steps; second pass 4 steps at strength 0.75, of which 3 run.
    hires = {"hires": {"scale": 2.0, "upscaler": "Latent", "steps": 4, "denoising_strength": 0.75}}
    cat = _run(engine, loaded, "a cat", **hires)
    # Step 6 is past both passes, 1.5 (half-way through the second pass) and step 4 (the second pass's step 1)
    # both switch after the second pass's step 1: the first pass reads "a cat" throughout.
    assert np.array_equal(_run(engine, loaded, "a [cat:dog:6]", **hires), cat)
    half = _run(engine, loaded, "a [cat:dog:1.5]", **hires)
    assert not np.array_equal(half, cat)
    assert np.array_equal(half, _run(engine, loaded, "a [cat:dog:4]", **hires))
