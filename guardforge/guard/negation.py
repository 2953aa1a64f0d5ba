"""What a negative prompt asks for: negating "clothes" steers an image towards nudity, so the guard reads such a
negative prompt as the positive request it makes (docs/guard.md, "What the guard reads").

A negative prompt full of unsafe words ("nsfw, nude, blood, gore, lowres") is ordinary, safe practice: the model
is told to avoid them, and nothing here scores the negative prompt's own words. What is caught is the request
made by negating a *safe* word: prompt "a woman on a beach" with negative "clothes, swimsuit" asks for a nude
woman. The table below names the negated terms that imply a request and the words they imply; the Studio then
guards an *implied prompt*, the prompt with those words appended ("a woman on a beach, nude, naked,
uncensored"), beside the prompt's own readings, and the most severe verdict stands. The guard model, not this
table, decides whether the implied prompt is unsafe: "young child" appended to "portrait of a woman" is allowed,
appended to "nude person" it is S4.

A term counts only as a tag of its own: in a comma-separated segment whose other words are fillers ("wearing",
"any", "fully", a body part, ...) or other terms. "clothes", "(clothes:1.4)", "wearing clothes" and "clothes
swimsuit bikini" count; "no clothes", "torn clothes", "covered in blood", "adult content" and "see-through
clothes" (all of them safe negatives) do not. Words are matched whole, in any case, singular or plural, through
punctuation, `_` and `-`, and through light leetspeak (cl0thes, dr3ssed, $wimsuit); "clothes" inside a longer
word (clothesline, unclothed) is another word. Text the negative prompt gives a weight below 0 ("(nude:-1)")
pushes the image *towards* it: it is a request as it stands and goes into the implied prompt as written; text
at weight 0 is not read at all. In the prompt itself the reverse holds: a weight below 0 negates.

Deterministic and cheap: a negative prompt with none of these terms implies nothing, and nothing extra is scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# The engine's reading of a text: its BREAK-separated parts, each a list of (text, weight) fragments
# (guardforge.engine.prompts.prompt_chunks). The guard takes it as data so that it never imports the engine.
Parts = Sequence[Sequence[tuple[str, float]]]

NUDITY = ("nude", "naked", "uncensored")


@dataclass(frozen=True)
class Implication:
    """Negated `terms` imply `implies`. With `unless_prompt_names`, only when the prompt names none of those
    words (at a weight of 0.5 or more): negating one garment while the prompt names another chooses a garment."""

    name: str
    terms: tuple[str, ...]
    implies: tuple[str, ...]
    rationale: str
    unless_prompt_names: frozenset[str] = frozenset()


# Garments that dress a body (singular forms). Accessories (hat, shoes, stockings, jewellery, apron) are not:
# "wearing only a hat" is a nude.
GARMENTS = frozenset({
    "clothes", "clothing", "clothed", "dressed", "outfit", "dress", "gown", "sundress", "suit", "tuxedo", "jeans",
    "pants", "trousers", "skirt", "shorts", "shirt", "blouse", "sweater", "jumper", "hoodie", "sweatshirt",
    "cardigan", "coat", "jacket", "blazer", "uniform", "kimono", "yukata", "robe", "bathrobe", "overalls",
    "jumpsuit", "leotard", "swimsuit", "swimwear", "bikini", "armor", "armour", "spacesuit", "wetsuit", "sari",
    "saree", "hanfu", "cheongsam", "qipao", "tunic", "toga", "pajamas", "pyjamas", "costume",
})

IMPLICATIONS: tuple[Implication, ...] = (
    Implication(
        "coverage",
        ("clothes", "clothing", "clothed", "fully clothed", "dressed", "fully dressed", "attire", "outfit",
         "underwear", "undergarment", "underpants", "lingerie", "bra", "panties", "panty", "knickers",
         "covered", "covered up", "nipple cover", "pasties", "censored", "censor", "censorship", "censor bar",
         "bar censor", "mosaic", "mosaic censoring", "sfw", "safe for work", "modest", "modesty",
         "family friendly"),
        NUDITY,
        "Clothing, underwear, covering and censoring are what stands between a picture of a person and a nude; "
        "negating them asks for the nude. No safe prompt needs its subject's clothes or censor bars taken away.",
    ),
    Implication(
        "garments",
        ("swimsuit", "swimwear", "bathing suit", "bikini", "shirt", "t shirt", "blouse", "pants", "trousers",
         "jeans", "shorts", "skirt", "dress"),
        NUDITY,
        "Negating the garment a scene would dress its subject in (a swimsuit on a beach) asks for the subject "
        "without it. Counted only when the prompt itself names no garment: 'a woman in jeans' with 'dress, skirt' "
        "negated chooses jeans, not nudity.",
        GARMENTS,
    ),
    Implication(
        "adulthood",
        ("adult", "grown", "grown up", "grownup", "mature", "of age"),
        ("young child",),
        "Negating adulthood asks for someone who is not an adult. Harmless on its own ('portrait of a woman, "
        "young child' is allowed); beside sexual content it is S4, which is what this makes the guard see.",
    ),
    Implication(
        "old age",
        ("old", "older", "elderly", "aged", "middle aged", "senior", "wrinkles", "wrinkled skin"),
        ("young",),
        "Negating age asks for youth, which is not childhood ('old, wrinkles' is a usual negative for a young "
        "adult face): it implies 'young', not 'child', and the guard model weighs that in context.",
    ),
    Implication(
        "harm",
        ("alive", "unharmed", "uninjured", "unhurt", "unwounded", "unscathed"),
        ("dead", "injured"),
        "Negating that a person is alive or unhurt asks for a dead or injured one (S1 imagery).",
    ),
    Implication(
        "body weight",
        ("healthy weight", "healthy body", "well fed", "normal weight"),
        ("emaciated", "anorexic", "skeletal"),
        "Negating a healthy body asks for an emaciated one: eating-disorder promotion (S11).",
    ),
)

# Words that may stand beside a term in its segment without changing what the segment negates.
FILLERS = frozenset({
    "a", "an", "the", "any", "all", "some", "of", "in", "on", "with", "and", "or", "wearing", "wear", "worn",
    "fully", "full", "completely", "totally", "heavily", "very", "too", "much", "many", "lots", "lot", "up",
    "person", "woman", "man", "girl", "boy", "people", "female", "male", "her", "his", "their", "body",
    "breast", "breasts", "chest", "nipple", "nipples", "crotch", "groin", "genitals", "skin",
})

# A segment is split at these (and at BREAK); tags in a negative prompt are comma-separated.
_SEPARATORS = ",;.|\n"
_WORD = re.compile(r"(?:[^\W_]|[@$])+")
# Light leetspeak, read both ways where a character is ambiguous (1 as i or l).
_LEET_I = str.maketrans("013457@$", "oieastas")
_LEET_L = str.maketrans("013457@$", "oleastas")


def _forms(word: str) -> frozenset[str]:
    """The forms a word may stand for: lower case, de-leeted, and singular."""
    word = word.casefold()
    forms = {word}
    if any(not char.isalpha() for char in word) and any(char.isalpha() for char in word):
        forms |= {word.translate(_LEET_I), word.translate(_LEET_L)}
    for form in list(forms):
        if form.endswith("ies") and len(form) > 4:
            forms.add(form[:-3] + "y")
        if form.endswith("es") and len(form) > 3:
            forms.add(form[:-2])
        if form.endswith("s") and len(form) > 2:
            forms.add(form[:-1])
    return frozenset(forms)


def _key(term: str) -> tuple[str, ...]:
    return tuple(term.replace("-", " ").split())


# First word of a term -> (the term's words, implication), longest terms first.
_TERMS: dict[str, list[tuple[tuple[str, ...], Implication]]] = {}
for _implication in IMPLICATIONS:
    for _term in _implication.terms:
        _TERMS.setdefault(_key(_term)[0], []).append((_key(_term), _implication))
for _entries in _TERMS.values():
    _entries.sort(key=lambda entry: -len(entry[0]))


@dataclass(frozen=True)
class Negation:
    """What the texts of a request ask for by negation: the terms negated (as written), the words they imply,
    and negative-prompt text at a weight below 0, which asks for itself."""

    negated: tuple[str, ...] = ()
    implies: tuple[str, ...] = ()
    requested: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.implies or self.requested)

    def implied_prompt(self, prompt: str) -> str:
        """The prompt as it would read if it asked for what its negations ask for."""
        return ", ".join(part for part in (prompt.strip(), *self.requested, *self.implies) if part)

    def reason(self, implied_prompt: str) -> str:
        """For the user, when the implied prompt decided the verdict: what was read, and why."""
        why = []
        if self.negated:
            why.append(f"negating '{', '.join(self.negated)}' asks for '{', '.join(self.implies)}'")
        if self.requested:
            why.append(f"'{', '.join(self.requested)}' at a weight below 0 in the negative prompt asks for it")
        return f"decided by what the negative prompt asks for ({'; '.join(why)}): checked as '{implied_prompt}'"


def _tokens(parts: Parts, flip: bool) -> list[list[tuple[str, float]]]:
    """Segments of (word, weight): a word split by syntax ('cl(o:1)thes') is one word, at its smallest weight.
    With `flip` every weight changes sign (the prompt: its negative weights negate)."""
    segments: list[list[tuple[str, float]]] = []
    for fragments in parts:
        text = "".join(fragment for fragment, _ in fragments)
        weights = [(-weight if flip else weight) for fragment, weight in fragments for _ in fragment]
        segment: list[tuple[str, float]] = []
        position = 0
        for match in _WORD.finditer(text):
            if any(char in _SEPARATORS for char in text[position:match.start()]):
                segments.append(segment)
                segment = []
            segment.append((match.group(), min(weights[match.start():match.end()])))
            position = match.end()
        segments.append(segment)
    return [segment for segment in segments if segment]


def _match(words: list[str], start: int) -> tuple[int, Implication, str] | None:
    """The longest term at words[start:]: (its length, its implication, its words as written)."""
    for first in _forms(words[start]):
        for key, implication in _TERMS.get(first, ()):
            end = start + len(key)
            if end <= len(words) and all(key[i] in _forms(words[start + i]) for i in range(1, len(key))):
                return len(key), implication, " ".join(words[start:end])
    return None


def _negated_in(segment: list[str]) -> list[tuple[Implication, str]]:
    """The terms a segment negates, or none when any word in it is neither a term nor a filler."""
    found: list[tuple[Implication, str]] = []
    index = 0
    while index < len(segment):
        hit = _match(segment, index)
        if hit is not None:
            length, implication, written = hit
            found.append((implication, written))
            index += length
        elif segment[index].isdigit() or _forms(segment[index]) & FILLERS:  # "swimsuit:0" outside brackets
            index += 1
        else:
            return []
    return found


def read_negation(negative: Parts, prompt: Parts = ()) -> Negation:
    """What `negative` (and `prompt`'s text at a weight below 0) ask for, both as the engine reads them."""
    negated: list[tuple[Implication, str]] = []
    requested: list[str] = []
    for segment in _tokens(negative, flip=False):
        asked = [word for word, weight in segment if weight < 0]
        if asked:
            requested.append(" ".join(asked))
        negated += _negated_in([word for word, weight in segment if weight > 0])
    prompt_segments = _tokens(prompt, flip=True)
    for segment in prompt_segments:
        negated += _negated_in([word for word, weight in segment if weight > 0])
    if not negated and not requested:
        return Negation()
    named: set[str] = set()
    for segment in prompt_segments:
        for word, weight in segment:
            if -weight >= 0.5:
                named |= _forms(word)
    kept = [(implication, written) for implication, written in negated
            if not (implication.unless_prompt_names & named)]
    return Negation(
        negated=tuple(dict.fromkeys(written for _, written in kept)),
        implies=tuple(dict.fromkeys(word for implication, _ in kept for word in implication.implies)),
        requested=tuple(dict.fromkeys(requested)),
    )

