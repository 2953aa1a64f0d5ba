"""The X/Y/Z plot's axes without a model: A1111's range syntax against hand-computed lists, what each axis does to
a cell's request, the refusals at the edge, and A1111's positional script_args read into a grid."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from guardforge.a1111.xyz import axis_labels, grid_from_script_args
from guardforge.engine.request import GenerationRequest
from guardforge.engine.xyz import GridAxis, GridRequest, axis_named, fix_seeds, parse_values, plan_grid
from guardforge.errors import InvalidRequest


def values(field: str, text):
    return parse_values(axis_named(field), text)


@pytest.mark.parametrize(("field", "text", "expected"), [
    ("steps", "1-5", [1, 2, 3, 4, 5]),
    ("steps", "1-10 (+3)", [1, 4, 7, 10]),
    ("steps", "1-10 (+4)", [1, 5, 9]),  # the end only where a step lands on it
    ("steps", "10-1 (-3)", [10, 7, 4, 1]),
    ("steps", "5-1", [5, 4, 3, 2, 1]),  # A1111 makes nothing of a range going down without a step
    ("steps", "1-10 [5]", [1, 3, 5, 7, 10]),  # numpy.linspace truncated, as A1111
    ("steps", "5, 1-3, 20", [5, 1, 2, 3, 20]),
    ("seed", "-1, 3", [-1, 3]),  # a lone negative number is a value, not a range
    ("cfg", "1-2 (+0.5)", [1.0, 1.5, 2.0]),
    ("cfg", "0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),  # A1111's numpy.arange would add 0.4
    ("cfg", "1-2 [3]", [1.0, 1.5, 2.0]),
    ("cfg", "7, 4.5,1", [7.0, 4.5, 1.0]),
    ("denoising", "0.2-0.8 [4]", [0.2, 0.4, 0.6, 0.8]),
    ("sampler", 'Euler a, "DPM++ 2M"', ["Euler a", "DPM++ 2M"]),
    ("prompt_sr", 'red, "green, bright", blue', ["red", "green, bright", "blue"]),
    ("steps", [3, "5-7"], [3, 5, 6, 7]),  # a list's text items are ranges too
])
def test_values_and_ranges_read_as_a1111_reads_them(field, text, expected):
    assert values(field, text) == expected


def test_prompt_order_is_every_permutation():
    assert values("Prompt order", "cat, hat") == [("cat", "hat"), ("hat", "cat")]


@pytest.mark.parametrize(("field", "text", "reason"), [
    ("steps", "ten", "'ten' is not a whole number"),
    ("steps", "1.5", "'1.5' is not a whole number"),
    ("cfg", "high", "'high' is not a number"),
    ("steps", "1-10 (+0)", "the step cannot be 0"),
    ("steps", "1-100000", "makes 100000 values; an axis takes at most 1000"),
    ("steps", "1,,2", "'' is not a whole number"),
    ("sampler", "Euler a,", "an empty value"),
    ("steps", "", "give at least one value"),
    ("cfg", "nan, 7", "'nan' is not a number"),
    ("steps", "1-" + "9" * 40, "an axis takes at most 1000"),  # refused before it is expanded
    ("cfg", "1-2 [" + "9" * 400 + "]", "a range's numbers are too large"),
    ("Prompt order", "a, b, c, d, e, f, g", "7 tokens make 5040 orders"),
])
def test_values_that_do_not_read_say_which(field, text, reason):
    with pytest.raises(InvalidRequest, match=reason):
        values(field, text)


def test_axis_names_ours_aliases_and_a1111_labels():
    assert {axis_named(name).name for name in ("cfg", "cfg_scale", "CFG Scale", "cfg scale")} == {"cfg_scale"}
    assert axis_named("Checkpoint name").name == "model"
    with pytest.raises(InvalidRequest, match="no X/Y/Z axis 'eta'; choose one of: seed, "):
        axis_named("eta")


BASE = GenerationRequest(prompt="a red cat <lora:pixel:0.5>", negative_prompt="red blur", steps=2, seed=7,
                         width=32, height=32)


def test_cells_are_the_base_request_with_each_axis_applied():
    grid = GridRequest(request=BASE, x={"field": "Prompt S/R", "values": "red, blue"},
                       y={"field": "lora_weight", "values": "0, 1"}, z={"field": "size", "values": "32x64"})
    plan = plan_grid(grid)
    assert plan.shape == (2, 2, 1)
    assert [(c.ix, c.iy, c.request.prompt, c.request.negative_prompt) for c in plan.cells] == [
        (0, 0, "a red cat <lora:pixel:0>", "red blur"), (1, 0, "a blue cat <lora:pixel:0>", "blue blur"),
        (0, 1, "a red cat <lora:pixel:1>", "red blur"), (1, 1, "a blue cat <lora:pixel:1>", "blue blur")]
    assert {(c.request.width, c.request.height) for c in plan.cells} == {(32, 64)}
    assert plan.labels == [["red", "blue"], ["LoRA weight: 0.0", "LoRA weight: 1.0"], ["Size: 32x64"]]
    assert plan.order == [0, 1, 2, 3]  # X fastest, as A1111 runs cells


def test_a_checkpoint_axis_changes_least_often():
    grid = GridRequest(request=BASE, x={"field": "model", "values": "a, b"}, y={"field": "steps", "values": "1-3"})
    plan = plan_grid(grid)
    # cells in grid order: X (the model) fastest; run order: all of model a, then all of model b
    assert [plan.cells[i].request.model for i in plan.order] == ["a", "a", "a", "b", "b", "b"]


def test_seeds_of_minus_one_are_drawn_once_per_grid():
    grid = GridRequest(request=BASE.model_copy(update={"seed": -1}), x={"field": "seed", "values": "-1, 5"},
                       y={"field": "cfg", "values": "1, 2"})
    fixed = fix_seeds(grid)
    drawn = fixed.x.parsed()
    assert drawn[1] == 5 and drawn[0] != -1 and fixed.request.seed != -1
    assert {c.request.seed for c in plan_grid(fixed).cells if c.ix == 0} == {drawn[0]}
    assert fix_seeds(grid.model_copy(update={"no_fixed_seeds": True})).x.parsed() == [-1, 5]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"x": {"field": "eta", "values": "1"}}, "no X/Y/Z axis 'eta'"),
    ({"x": {"field": "sampler", "values": "Euler a, Warp 9"}}, "Sampler = 'Warp 9': sampler: unknown sampler"),
    ({"x": {"field": "cfg", "values": "7, 500"}}, "CFG Scale = 500.0: cfg_scale: Input should be less than"),
    ({"x": {"field": "Prompt S/R", "values": "dog, cat"}}, "Prompt S/R did not find 'dog'"),
    ({"x": {"field": "Prompt S/R", "values": ", cat"}}, "the first value is the text searched for"),
    ({"x": {"field": "hires_steps", "values": "1, 2"}}, "needs hires fix on"),
    ({"x": {"field": "steps", "values": "1"}, "y": {"field": "steps", "values": "2"}}, "'steps' is given twice"),
    ({}, "give at least one axis"),
    ({"x": {"field": "steps", "values": "1"}, "request": BASE.model_copy(update={"batch_size": 2})},
     "a grid cell is one image"),
])
def test_a_grid_that_cannot_run_is_refused_at_the_edge(fields, reason):
    with pytest.raises(ValidationError, match=reason):
        GridRequest.model_validate({"request": BASE, **fields})


def test_a1111_script_args_by_index_label_and_dropdown():
    labels = axis_labels()
    args = [labels.index("CFG Scale"), "1-3", [], "Sampler", "", ["Euler a", "DPM++ 2M"],
            0, "", [], False, True, False, True, 4, False, False]
    grid = grid_from_script_args(BASE, args)
    assert (grid.x.field, grid.x.parsed(), grid.y.field, grid.y.parsed(), grid.z) == (
        "cfg_scale", [1.0, 2.0, 3.0], "sampler", ["Euler a", "DPM++ 2M"], None)
    assert (grid.draw_legend, grid.include_lone_images, grid.no_fixed_seeds, grid.margin_size) == (False, True,
                                                                                                  True, 4)
    # A1111 1.0-1.5 sent no dropdowns and fewer options: A1111's defaults for the rest.
    old = grid_from_script_args(BASE, [labels.index("Steps"), "1, 2", 0, "", 0, ""])
    assert (old.x.field, old.x.parsed(), old.y, old.draw_legend) == ("steps", [1, 2], None, True)
    assert axis_labels(img2img=True)[6] == "Image CFG Scale" and labels[6] == "CFG Scale"



def test_a1111_1_5_sampler_names_carry_their_schedule():
    # A1111 1.0-1.5's layout (read above) came with its sampler names, the schedule inside them.
    labels = axis_labels()
    grid = grid_from_script_args(BASE, [labels.index("Sampler"), "DPM++ 2M Karras, Euler", 0, "", 0, ""])
    assert [(c.request.sampler, c.request.schedule) for c in plan_grid(grid).cells] == [
        ("DPM++ 2M", "Karras"), ("Euler", BASE.schedule)]
    hires = GenerationRequest.model_validate({**BASE.model_dump(), "hires": {"scale": 2}})
    grid = GridRequest(request=hires, x={"field": "Hires sampler", "values": "DPM++ 2M Karras"})
    cell = plan_grid(grid).cells[0].request
    assert (cell.hires.sampler, cell.hires.schedule, cell.schedule) == ("DPM++ 2M", "Karras", BASE.schedule)

@pytest.mark.parametrize(("args", "reason"), [
    ([axis_labels().index("Sigma Churn"), "1", []], "the X axis 'Sigma Churn' has no equivalent in guardforge"),
    ([99, "1", []], "X type 99 is not an axis"),
    (["Warp", "1", []], "'Warp' is not one of A1111's axes"),
    ([6, "1", [], 0, "", [], 0, "", [], True, False, False, False, 0, False, False, "extra"], "takes 16 script_args"),
])
def test_a1111_script_args_that_cannot_run_say_why(args, reason):
    with pytest.raises(InvalidRequest, match=reason):
        grid_from_script_args(BASE, args)
