"""Who a prompt depicts must not make it unsafe: a text guard also reads each text with the people in it described
neutrally, and takes that reading's scores for every category but hate.

A classifier trained on real text learns that some words about people (a skin colour, a religion, an
orientation, a disability) sit near harmful text, and scores "a woman in a niqab tucking her child into bed"
far above "a person tucking their child into bed". Hate (S10) is about the group, so its score stays the
original reading's; every other category, and the overall score (never below that hate score), is the neutral
reading's. Adding or changing a description of someone therefore moves no decision but a
hate decision, in either direction: a harmful prompt gains nothing from a description either.

Age stays in the text: it decides child-safety (S4) questions, and "girl", "boy", "teen", "child" are left as
written.
"""

from __future__ import annotations

import re

from guardforge.guard.backends.base import Scores

PROTECTED = frozenset({"S10"})  # categories read from the text as written

# Words that describe a person by skin colour, ethnicity, nationality, religion, gender identity, sexual
# orientation or disability. Removed only where they stand before a person noun (below), so "a white cat", "a
# Chinese lantern", "a Christian church" and "a blind corner" read as written.
_SKIN = r"black|white|brown|dark|light|pale|fair|olive|tan|tanned|freckled|deep|ebony|caucasian"
_ETHNIC = (r"asian|east asian|south asian|southeast asian|african|african american|afro-caribbean|latino|latina|"
           r"latinx|hispanic|indigenous|native american|native|first nations|aboriginal|aboriginal australian|"
           r"arab|arabic|middle eastern|north african|romani|roma|pacific islander|polynesian|maori|inuit|"
           r"biracial|mixed-race|mixed race|multiracial|jewish|slavic|nordic|mediterranean|persian|kurdish|"
           r"berber|tamil|punjabi|bengali|han chinese|uyghur|tibetan")
_NATIONAL = (r"afghan|albanian|algerian|american|angolan|argentine|argentinian|armenian|australian|austrian|"
             r"azerbaijani|bangladeshi|belarusian|belgian|bolivian|bosnian|brazilian|british|bulgarian|burmese|"
             r"cambodian|cameroonian|canadian|chilean|chinese|colombian|congolese|croatian|cuban|czech|danish|"
             r"dominican|dutch|ecuadorian|egyptian|emirati|english|eritrean|estonian|ethiopian|filipino|filipina|"
             r"finnish|french|georgian|german|ghanaian|greek|guatemalan|haitian|honduran|hungarian|icelandic|"
             r"indian|indonesian|iranian|iraqi|irish|israeli|italian|ivorian|jamaican|japanese|jordanian|"
             r"kazakh|kenyan|korean|kuwaiti|lao|laotian|latvian|lebanese|liberian|libyan|lithuanian|malaysian|"
             r"malian|mexican|moldovan|mongolian|moroccan|mozambican|nepali|nepalese|new zealander|nicaraguan|"
             r"nigerian|nigerien|north korean|norwegian|pakistani|palestinian|panamanian|paraguayan|peruvian|"
             r"polish|portuguese|puerto rican|qatari|romanian|russian|rwandan|salvadoran|saudi|scottish|"
             r"senegalese|serbian|sierra leonean|singaporean|slovak|slovenian|somali|south african|"
             r"south korean|south sudanese|spanish|sri lankan|sudanese|swedish|swiss|syrian|taiwanese|tajik|"
             r"tanzanian|thai|tunisian|turkish|turkmen|ugandan|ukrainian|uruguayan|uzbek|venezuelan|"
             r"vietnamese|welsh|yemeni|zambian|zimbabwean")
_RELIGION = (r"muslim|islamic|christian|catholic|protestant|evangelical|orthodox|mormon|jewish|hasidic|"
             r"hindu|buddhist|sikh|jain|bahai|baha'i|shinto|taoist|pagan|wiccan|atheist|agnostic|amish|"
             r"quaker|rastafarian|zoroastrian|sunni|shia|shiite")
_GENDER = (r"transgender|trans|nonbinary|non-binary|intersex|genderqueer|genderfluid|gender-fluid|agender|"
           r"cisgender|cis|two-spirit|masculine|feminine|androgynous")
_ORIENTATION = r"gay|lesbian|bisexual|bi|queer|straight|heterosexual|homosexual|asexual|pansexual|lgbt|lgbtq"
_DISABILITY = (r"disabled|blind|deaf|deafblind|autistic|paraplegic|quadriplegic|paralyzed|paralysed|amputee|"
               r"one-armed|one-legged|neurodivergent|hard-of-hearing|visually impaired|wheelchair-using|"
               r"wheelchair-bound")
_DESCRIPTOR = (rf"(?:{_ETHNIC}|{_NATIONAL}|{_RELIGION}|{_GENDER}|{_ORIENTATION}|{_DISABILITY}|"
               rf"(?:{_SKIN})(?:-| )skinned|{_SKIN})")
# The people the descriptions attach to. Nouns that carry an age (girl, boy, child, teen) stay as written.
_PERSON = (r"person|people|man|men|woman|women|guy|guys|lady|ladies|gentleman|gentlemen|couple|couples|family|"
           r"families|individual|individuals|adult|adults|girl|girls|boy|boys|child|children|kid|kids|teen|"
           r"teens|teenager|teenagers|monk|monks|nun|nuns|priest|priests|worshipper|worshippers|student|"
           r"students|worker|workers|mother|father|mom|dad|grandmother|grandfather|grandma|grandpa|parent|"
           r"parents|bride|groom|friend|friends|neighbor|neighbour|neighbors|neighbours|crowd|community")
_GENDERED = {"man": "person", "woman": "person", "men": "people", "women": "people", "guy": "person",
             "guys": "people", "lady": "person", "ladies": "people", "gentleman": "person", "gentlemen": "people"}

_BEFORE_PERSON = re.compile(rf"\b(?:{_DESCRIPTOR})(?:[ ,]+(?:and )?(?:{_DESCRIPTOR}))*\s+(?=(?:{_PERSON})\b)",
                            re.IGNORECASE)
_PHRASES = re.compile(
    r"\s*(?:,\s*)?\b(?:"
    rf"with (?:(?:{_SKIN})(?: |-))*(?:{_SKIN})? ?skin(?: tone)?"
    r"|(?:wearing|in) an? (?:hijab|niqab|burqa|burka|chador|headscarf|head scarf|turban|dastar|kippah|kipa|"
    r"yarmulke|skullcap|bindi|sari|saree|habit|cassock|tallit|prayer shawl|shtreimel)"
    r"|(?:in|using) a wheelchair|with a (?:cane|white cane|guide dog|prosthetic (?:arm|leg|limb)|hearing aid|"
    r"cochlear implant)"
    r"|with (?:down syndrome|down's syndrome|vitiligo|albinism|autism|cerebral palsy|dwarfism|a disability|"
    r"a limb difference|one arm|one leg)"
    r")\b", re.IGNORECASE)
# Only where the noun names someone ("a man", "the women", "two men"), not in a name, a compound or a role: "Spider-
# Man", "man-made", "the best man" read as written.
_GENDER_NOUN = re.compile(rf"\b((?:a|an|the|one|two|three|four|five|some|several|many|these|those|this|that)\s+)"
                          rf"({'|'.join(_GENDERED)})(?![-\w])", re.IGNORECASE)
_ARTICLE = re.compile(r"\b(a|an|A|An) (?=(\w))")


def _article(match: re.Match) -> str:
    word, first = match.group(1), match.group(2)
    wanted = "an" if first.lower() in "aeiou" else "a"
    return (wanted.capitalize() if word[0].isupper() else wanted) + " "


def neutral_reading(text: str) -> str | None:
    """The text with the people in it described neutrally ("a woman in a niqab" -> "a person", "an Iraqi man" ->
    "a person", "two gay men" -> "two people"); None when nothing in it describes who someone is."""
    neutral = _PHRASES.sub("", text)
    neutral = _BEFORE_PERSON.sub("", neutral)
    neutral = _GENDER_NOUN.sub(lambda m: m.group(1) + _GENDERED[m.group(2).lower()], neutral)
    if neutral == text:
        return None
    return _ARTICLE.sub(_article, re.sub(r"[ \t]{2,}", " ", neutral)).strip()


def combine(original: Scores, neutral: Scores) -> Scores:
    """The scores a text gets: the neutral reading's, except the protected categories' (as written); the overall
    score is the neutral reading's, and never below a protected category's score as written."""
    scores = dict(neutral.scores)
    for code in PROTECTED & original.scores.keys():
        scores[code] = original.scores[code]
    unsafe = neutral.unsafe
    if unsafe is not None:
        unsafe = max([unsafe] + [original.scores[code] for code in PROTECTED & original.scores.keys()])
    return Scores(scores=scores, unsafe=unsafe, labels_only=original.labels_only,
                  extra={**original.extra, "neutral_reading": True})


class DemographicNeutral:
    """A text backend read through `neutral_reading`: the same scores for a text that describes nobody, the
    combined scores (see `combine`) for one that does. Both readings go to the backend in one batch."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name
        self.categories = backend.categories

    def score_texts(self, texts: list[str]) -> list[Scores]:
        neutrals = [neutral_reading(text) for text in texts]
        extra = [neutral for neutral in neutrals if neutral is not None]
        answers = self.backend.score_texts(list(texts) + extra)
        originals, by_neutral = answers[:len(texts)], iter(answers[len(texts):])
        return [original if neutral is None else combine(original, next(by_neutral))
                for original, neutral in zip(originals, neutrals, strict=True)]

    def __getattr__(self, name):  # the wrapped backend's own extras (its threshold, its close())
        return getattr(self.backend, name)
