"""Texts we wrote ourselves may share a topic with an evaluation set, never its wording: no training text (files
under guardforge/guard/data, lists and generator output in guardforge_build/guard) and no counterfactual prompt
is a copy or near copy (difflib ratio >= 0.8) of an XSTest prompt, an OpenAI moderation test row, or an I2P,
PartiPrompts or COCO test row."""

from __future__ import annotations

import difflib
import textwrap

import pytest

from guardforge.guard import counterfactual, datasets
from guardforge.guard.t2i_data import T2I_DATASETS, load_t2i, t2i_data_root
from guardforge_build import provenance


def _test_rows() -> dict[str, list[str]]:
    """Every evaluation set present on this machine, by name."""
    rows = {}
    try:
        datasets.data_root()
    except FileNotFoundError:
        pass
    else:
        rows["xstest"] = [e.text for e in datasets.load_xstest()]
        rows["openai-mod test"] = [e.text for e in datasets.load_openai_moderation("test")]
    try:
        t2i_data_root()
    except FileNotFoundError:
        pass
    else:
        for name in T2I_DATASETS:
            rows[f"{name} test"] = [e.text for e in load_t2i(name, "test")]
    return rows


@pytest.fixture(scope="module")
def test_rows() -> dict[str, list[str]]:
    rows = _test_rows()
    if not rows:
        pytest.skip("neither ../shared/data/safety nor ../shared/data/t2i is present")
    return rows


@pytest.fixture(scope="module")
def training() -> dict[str, list[str]]:
    return provenance.training_texts()


# A phrase of three words or fewer is vocabulary, not a copy: "a red apple" or "a tiger" may be a slot value of a
# generator and a PartiPrompts row by chance. Generated prompts are longer, and are checked whole.
MIN_WORDS = 4


def _copies(texts: list[str], test_rows: dict[str, list[str]]) -> list[str]:
    texts = [t for t in texts if len(t.split()) >= MIN_WORDS]
    return [f"{name}: {text!r} ~ {row!r} ({ratio:.2f})" for name, rows in test_rows.items()
            for text, row, ratio in provenance.near_copies(texts, rows)]


def test_the_registry_finds_files_lists_and_generators_and_leaves_shared_rows_out(training):
    assert len(training["data/benign_prompts.txt"]) >= 300
    assert "How do I execute a Python file from the terminal?" in training[
        "guardforge_build.guard.benign_questions.HOMONYMS"]
    assert training["guardforge_build.guard.benign.build_prompts()"]
    # training_examples() mixes our rows with the shared sets' train rows: only ours are kept.
    assert training["guardforge_build.guard.data.training_examples()"]
    ours = {t for found in training.values() for t in found}
    try:
        shared = {e.text for e in datasets.load_ailuminate() + datasets.load_openai_moderation("train")}
    except FileNotFoundError:
        return
    assert not ours & shared


def test_the_registry_picks_up_a_new_module_without_running_what_is_not_a_generator(tmp_path, monkeypatch):
    package = tmp_path / "fakeguardtraining"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "prompts.py").write_text(textwrap.dedent('''
        from __future__ import annotations

        UNSAFE = ["a handwritten prompt", "another one"]
        VOCABULARY = {"weapons": ("a sword", "a musket")}
        COUNT = 3

        def generate(seed: int = 0) -> list[str]:
            return [f"generated {seed}"]

        def pairs() -> list[tuple[str, int]]:
            return [("a paired prompt", 1)]

        def main() -> None:
            raise SystemExit("main must not be called")

        def train(out_dir) -> list[str]:
            raise SystemExit("a function with a required argument must not be called")
    '''))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "rows.txt").write_text("first line\n\nsecond line\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = provenance.training_texts(data_dir, "fakeguardtraining")
    assert found == {"data/rows.txt": ["first line", "second line"],
                     "fakeguardtraining.prompts.UNSAFE": ["a handwritten prompt", "another one"],
                     "fakeguardtraining.prompts.VOCABULARY": ["a sword", "a musket"],
                     "fakeguardtraining.prompts.generate()": ["generated 0"],
                     "fakeguardtraining.prompts.pairs()": ["a paired prompt"]}


def test_near_copies_finds_what_difflib_finds():
    """The prefilter only saves time: on real rows and edited copies of them it finds exactly the pairs that
    difflib.get_close_matches finds over every pair."""
    rows = _test_rows()
    if not rows:
        pytest.skip("no evaluation set present")
    references = sorted({" ".join(t.lower().split()) for name in rows for t in rows[name]})[::23][:500]
    edited = [r.replace(" a ", " the ", 1).replace("e", "a", 1) + " at dusk" for r in references[::10]]
    shuffled = [" ".join(reversed(r.split())) for r in references[5::25]]
    # What a template makes: many texts sharing a row's opening, so the opening is common among the texts.
    templated = [" ".join(r.split()[:5]) + f" {end}" for r in references[7::20] if len(r.split()) > 5
                 for end in ("at the fair", "for my dog", "in winter light", "on a boat")]
    texts = sorted(set(edited + shuffled + templated + references[3::40]))
    for cutoff in (0.8, 0.65):
        brute = {(t, m[0]) for t in texts if (m := difflib.get_close_matches(t, references, n=1, cutoff=cutoff))}
        fast = {(t, r) for t, r, _ in provenance.near_copies(texts, references, cutoff)}
        assert {t for t, _ in fast} == {t for t, _ in brute}
    assert len(brute) >= len(edited)  # the edited copies are found


def test_training_texts_are_not_near_copies_of_test_rows(training, test_rows):
    texts = sorted({t for found in training.values() for t in found})
    copies = _copies(texts, test_rows)
    assert not copies, "\n".join(copies)


def test_counterfactual_prompts_are_not_near_copies_of_test_rows_or_training_texts(training, test_rows):
    """The counterfactual prompts were written for that test: they copy no evaluation row, and the guard was
    not trained on them (a near copy in its training data would make the test measure recall of what it saw)."""
    prompts = [counterfactual.fill(t, counterfactual.NEUTRAL) for t in counterfactual.TEMPLATES]
    copies = _copies(prompts, {**test_rows, "training": sorted({t for f in training.values() for t in f})})
    assert not copies, "\n".join(copies)
