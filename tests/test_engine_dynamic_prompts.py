"""Dynamic prompts: sd-dynamic-prompts' syntax against hand-worked expansions (the sets each template can give, and
the ones it must always give), wildcard files and folders, and the refusals that keep a template in its box."""

from __future__ import annotations

import itertools

import pytest

from guardforge.engine.dynamic_prompts import ExpansionLimits, Wildcards, check, expand
from guardforge.errors import InvalidRequest, PathEscape

SEEDS = range(60)  # enough that each option of these small templates comes up (checked: every set is reached)


@pytest.fixture
def wildcards(tmp_path):
    root = tmp_path / "wildcards"
    (root / "colors").mkdir(parents=True)
    (root / "colors" / "warm.txt").write_text("# warm colours\nred\n\n  orange  \n")
    (root / "colors" / "cold.txt").write_text("blue\n")
    (root / "animal.txt").write_text("{cat|dog}\n__colors/cold__ bird\n")  # variants and wildcards in a file
    (root / "one.txt").write_text("# only one value\n\nfox\n")
    (root / "loop.txt").write_text("__loop__ again\n")
    (root / "empty.txt").write_text("# nothing\n\n")
    return Wildcards(root)


def outcomes(template: str, wildcards: Wildcards) -> set[str]:
    return {expand(template, seed, wildcards) for seed in SEEDS}


def test_variants(wildcards):
    assert outcomes("a {cat|dog} here", wildcards) == {"a cat here", "a dog here"}
    assert outcomes("{a|{b|c}}", wildcards) == {"a", "b", "c"}  # nested
    assert outcomes("{0::a|1::b}", wildcards) == {"b"}  # a weight of 0 is never chosen
    assert outcomes("{only}", wildcards) == {"only"}
    assert outcomes("{a|}", wildcards) == {"a", ""}


def test_several_values_without_repeats_and_custom_joiners(wildcards):
    pairs = {f"{x}, {y}" for x, y in itertools.permutations("abc", 2)}
    assert outcomes("{2$$a|b|c}", wildcards) == pairs
    assert outcomes("{2$$ and $$a|b|c}", wildcards) == {p.replace(", ", " and ") for p in pairs}
    assert outcomes("{4$$a|b|c}", wildcards) == {", ".join(p) for p in itertools.permutations("abc")}
    counts = {len(text.split(", ")) for text in outcomes("{1-3$$a|b|c}", wildcards)}
    assert counts == {1, 2, 3}
    assert {len(t.split(", ")) for t in outcomes("{-2$$a|b|c}", wildcards)} == {1, 2}  # `-2`: 1 to 2
    assert {len(t.split(", ")) for t in outcomes("{2-$$a|b|c}", wildcards)} == {2, 3}  # `2-`: 2 to all


def test_wildcards_from_files_and_folders(wildcards):
    assert outcomes("__one__", wildcards) == {"fox"}  # comments and blank lines are not values
    assert outcomes("a __colors/warm__ car", wildcards) == {"a red car", "a orange car"}
    assert outcomes("__colors/*__", wildcards) == {"red", "orange", "blue"}  # a glob takes every file's values
    assert outcomes("__animal__", wildcards) == {"cat", "dog", "blue bird"}  # expanded inside the file too
    assert outcomes("{__one__|owl}", wildcards) == {"fox", "owl"}
    # A wildcard's values as the options: two different ones, never the same twice.
    assert outcomes("{2$$__colors/*__}", wildcards) == {f"{x}, {y}" for x, y in
                                                        itertools.permutations(["red", "orange", "blue"], 2)}


def test_a1111_syntax_is_left_to_the_engine(wildcards):
    text = r"(a cat:1.2), [dog:bird:5], [red|blue] ball, <lora:pixel:0.8>, \(paren\), AND x"
    assert expand(text, 1, wildcards) == text
    # `|` inside A1111's brackets belongs to them, not to the variant around them.
    assert outcomes("{[cat|dog]|bird}", wildcards) == {"[cat|dog]", "bird"}
    assert expand(r"a \{literal\} brace", 1, wildcards) == "a {literal} brace"


def test_one_seed_one_expansion(wildcards):
    template = "{a|b|c|d|e} __colors/*__ {2$$x|y|z}"
    assert [expand(template, 7, wildcards) for _ in range(3)] == [expand(template, 7, wildcards)] * 3
    assert len({expand(template, seed, wildcards) for seed in range(20)}) > 5
    # The prompt's choices do not steer the negative prompt's.
    assert {(expand("{a|b}", s, wildcards), expand("{a|b}", s, wildcards, stream="negative_prompt"))
            for s in SEEDS} == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")}


def test_the_expansion_does_not_depend_on_the_process(wildcards):
    # Recorded once (and under PYTHONHASHSEED 0, 1 and 12345 alike): the random stream is seeded with a str, which
    # random.seed hashes with SHA-512, never with the per-process string hash. A server restart, another worker
    # or another machine gives seed S the same expansion.
    assert [expand("{a|b|c|d}", seed, wildcards) for seed in range(6)] == ["b", "d", "a", "d", "a", "d"]
    assert expand("{2$$a|b|c|d}", 7, wildcards, stream="negative_prompt") == "b, a"


@pytest.mark.parametrize("name", ["../x", "colors/../../x", "/etc/passwd", "colors//warm", "./one"])
def test_names_never_leave_the_folder(wildcards, name):
    (wildcards.root.parent / "x.txt").write_text("outside\n")
    with pytest.raises(PathEscape, match="a name is a path inside the wildcards folder"):
        expand(f"__{name}__", 1, wildcards)


def test_a_link_out_of_the_folder_is_refused(wildcards):
    (wildcards.root.parent / "secret.txt").write_text("outside\n")
    (wildcards.root / "secret.txt").symlink_to(wildcards.root.parent / "secret.txt")
    with pytest.raises(PathEscape, match="leads outside the wildcards folder"):
        expand("__secret__", 1, wildcards)


@pytest.mark.parametrize(("template", "message"), [
    ("__nope__", "unknown wildcard __nope__: there is no nope.txt in the wildcards folder"),
    ("__nope/*__", "wildcard __nope/\\*__ matches no file"),
    ("__empty__", "wildcard __empty__ has no values"),
    ("__loop__", "in wildcard __loop__: wildcards nest deeper than 16 \\(loop -> loop"),
    ("a {cat|dog", "'{' is never closed at character 3 of 'a {cat|dog'"),
    ("a cat}", "'}' closes no '{' at character 6"),
    ("{" * 30 + "a" + "}" * 30, "variants nest deeper than 24 braces"),
    ("__**x__", "wildcard __\\*\\*x__ is not a usable pattern"),
])
def test_refusals_say_what_is_wrong(wildcards, template, message):
    with pytest.raises(InvalidRequest, match=message):
        expand(template, 1, wildcards)


def test_caps_stop_a_template_built_to_explode(tmp_path):
    root = tmp_path / "wildcards"
    root.mkdir()
    # Each level doubles the text: 2^20 copies of "x" from a few short lines.
    for level in range(20):
        (root / f"l{level}.txt").write_text(f"__l{level + 1}__ __l{level + 1}__\n")
    (root / "l20.txt").write_text("x\n")
    wildcards = Wildcards(root, ExpansionLimits(max_depth=32))
    with pytest.raises(InvalidRequest, match="more than 20000 variants and wildcards"):
        expand("__l0__", 1, wildcards)
    small = Wildcards(root, ExpansionLimits(max_chars=100))
    with pytest.raises(InvalidRequest, match="expands to 127 characters, over the limit of 100"):
        expand("__l14__", 1, small)


def test_nesting_is_capped_across_wildcard_files(tmp_path):
    # Each file is within the brace cap, and the chain within the wildcard cap; together they nest 60 deep, which
    # Python's recursion would not survive if it were not refused first.
    root = tmp_path / "wildcards"
    root.mkdir()
    for level in range(6):
        (root / f"n{level}.txt").write_text("{" * 9 + f"__n{level + 1}__" + "}" * 9 + "\n")
    (root / "n6.txt").write_text("end\n")
    with pytest.raises(InvalidRequest, match="nests variants and wildcards deeper than 48"):
        expand("__n0__", 1, Wildcards(root))
    assert expand("__n4__", 1, Wildcards(root)) == "end"  # 20 deep: fine


def test_check_finds_every_wildcard_whatever_the_seed_picks(wildcards):
    check("{__one__|__colors/*__} plain __animal__ __loop__", wildcards)  # a file naming itself is checked once
    with pytest.raises(InvalidRequest, match="unknown wildcard __missing__"):
        check("{a|{b|__missing__}}", wildcards)  # would only fail for the seeds that pick it
    with pytest.raises(PathEscape):
        check("{a|__../x__}", wildcards)
    # Inside the files it reaches, too: a job must not fail in a worker for a line of the caller's choosing.
    (wildcards.root / "outer.txt").write_text("fine\n{x|__gone__}\n")
    with pytest.raises(InvalidRequest, match="in wildcard __outer__: unknown wildcard __gone__"):
        check("a {b|__outer__}", wildcards)
    (wildcards.root / "outer.txt").write_text("fine\n{x|y\n")
    with pytest.raises(InvalidRequest, match="in wildcard __outer__: '{' is never closed"):
        check("__outer__", Wildcards(wildcards.root))  # a fresh one: each request reads the files anew


def test_a_requests_texts_per_image(wildcards):
    """prompt_templates: styles first (a style may carry variants), every text of the request expanded, hires fix's
    own prompts styled and expanded as the first pass's, and the templates kept where expansion changed them."""
    from guardforge.engine import prompt_templates
    from guardforge.engine.request import GenerationRequest
    from guardforge.engine.styles import PromptStyle

    styles = {"shot": PromptStyle(name="shot", prompt="{prompt}, {wide|close} shot", negative_prompt="lowres")}
    request = GenerationRequest(prompt="a __one__", negative_prompt="{a|b}", styles=["shot"],
                                hires={"prompt": "a __one__ in detail"})
    [first, second] = prompt_templates.expand(request, [1, 2], styles, wildcards)
    for expansion, seed in ((first, 1), (second, 2)):
        used = expansion.request
        assert used.styles == [] and used.prompt == expand("a __one__, {wide|close} shot", seed, wildcards)
        assert used.prompt in ("a fox, wide shot", "a fox, close shot")
        assert used.negative_prompt in ("a, lowres", "b, lowres")
        assert used.hires.prompt in ("a fox in detail, wide shot", "a fox in detail, close shot")
        assert used.hires.negative_prompt is None  # hires fix reads the first pass's, as this image expanded it
        assert expansion.infotext_params() == {"Template": "a __one__, {wide|close} shot",
                                               "Negative Template": "{a|b}, lowres"}
    # Styles alone: one expansion for every image, no template.
    styles["film"] = PromptStyle(name="film", prompt="{prompt}, film")
    plain = prompt_templates.expand(GenerationRequest(prompt="a fox", styles=["film"]), [1, 2, 3], styles, wildcards)
    assert [(e.request.prompt, e.request.styles, e.infotext_params()) for e in plain] == [("a fox, film", [], {})] * 3
