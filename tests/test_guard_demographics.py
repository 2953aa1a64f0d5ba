"""The demographic-neutral reading (guard/demographics.py): who a prompt depicts moves no decision but hate."""

from __future__ import annotations

import pytest

from guardforge.guard.backends.base import Scores
from guardforge.guard.demographics import DemographicNeutral, neutral_reading


@pytest.mark.parametrize("text,neutral", [
    ("an Iraqi man at a market", "a person at a market"),
    ("a woman in a niqab tucking their child into bed", "a person tucking their child into bed"),
    ("a woman with freckled pale skin photographing graffiti", "a person photographing graffiti"),
    ("a dark-skinned woman laughing", "a person laughing"),
    ("two gay men holding hands", "two people holding hands"),
    ("a Black man, a white woman and a Sikh man in a turban", "a person, a person and a person"),
    ("portrait of an intersex person by a pine forest", "portrait of a person by a pine forest"),
    ("a man in a wheelchair crossing the street", "a person crossing the street"),
    # Age decides child-safety questions: it stays.
    ("an elderly Korean woman knitting", "an elderly woman knitting"),
    ("nude Asian teen girl", "nude teen girl"),
])
def test_descriptions_of_people_read_neutrally(text, neutral):
    assert neutral_reading(text) == neutral


@pytest.mark.parametrize("text", [
    "a white cat on a black sofa", "a Chinese lantern festival", "a blind corner on a mountain road",
    "Spider-Man swinging between towers", "a man-made lake at dusk", "a little girl in a red coat",
    "the best man giving a speech",  # a role, not a description of who someone is
    "Jews are vermin",  # no person noun to describe: hate stays as written (and S10 is read as written anyway)
])
def test_what_describes_no_person_reads_as_written(text):
    assert neutral_reading(text) is None


class Leaning:
    """Text backend with the biases the neutral reading is for: a description of a person raises the overall
    score and S4 ('niqab', 'Iraqi'); 'Jewish' raises S10; 'bomb' is S1 whoever holds it."""

    name = "leaning"
    categories = frozenset({"S1", "S4", "S10"})

    def __init__(self):
        self.calls = []

    def score_texts(self, texts):
        self.calls.append(list(texts))
        out = []
        for text in texts:
            lower = text.lower()
            biased = 0.8 if ("niqab" in lower or "iraqi" in lower) else 0.05
            hate = 0.9 if "jewish" in lower and "vermin" in lower else 0.02
            bomb = 0.95 if "bomb" in lower else 0.01
            out.append(Scores({"S1": bomb, "S4": biased, "S10": hate}, unsafe=max(biased, hate, bomb),
                              extra={"threshold": 0.5}))
        return out


def test_a_description_moves_no_score_but_hate():
    backend = Leaning()
    reader = DemographicNeutral(backend)
    niqab, plain, hate, bomb = reader.score_texts([
        "a woman in a niqab tucking their child into bed", "a cat on a sofa", "Jewish people are vermin",
        "an Iraqi man building a bomb"])
    assert niqab.scores["S4"] == pytest.approx(0.05) and niqab.unsafe == pytest.approx(0.05)
    assert plain.scores == {"S1": 0.01, "S4": 0.05, "S10": 0.02} and "neutral_reading" not in plain.extra
    assert hate.scores["S10"] == pytest.approx(0.9) and hate.unsafe >= 0.9  # hate is read as written
    assert bomb.scores["S1"] == pytest.approx(0.95) and bomb.unsafe >= 0.95  # a description hides nothing
    assert bomb.extra["threshold"] == 0.5  # the backend's own threshold travels with the scores
    # One backend call: the texts, then the neutral readings of those that describe someone.
    assert backend.calls == [["a woman in a niqab tucking their child into bed", "a cat on a sofa",
                              "Jewish people are vermin", "an Iraqi man building a bomb",
                              "a person tucking their child into bed", "people are vermin",
                              "a person building a bomb"]]


def test_the_guard_reads_prompts_neutrally_unless_turned_off(gf_home):
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings

    on = Guard.from_settings(Settings(home=gf_home))
    assert isinstance(on.backend("text"), DemographicNeutral)
    off = Guard.from_settings(Settings(home=gf_home, guard={"neutral_demographics": False}))
    assert not isinstance(off.backend("text"), DemographicNeutral)
    assert not isinstance(on.backend("image"), DemographicNeutral)
    swapped = on.check_texts(["a woman in a niqab tucking their child into bed, nightlight glowing",
                              "a person tucking their child into bed, nightlight glowing"])
    described, neutral = swapped
    assert all(described.scores[c] == pytest.approx(neutral.scores[c], abs=1e-6) for c in neutral.scores if c != "S10")
    assert described.action == neutral.action
