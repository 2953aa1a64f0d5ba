"""The Llama Guard 4 hazard taxonomy (S1..S14), plus the custom categories a policy may add."""

from __future__ import annotations

import re
from dataclasses import dataclass

CODE_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")


@dataclass(frozen=True)
class Category:
    """One hazard category: its code (S1..S14 or a custom code), short name and what it covers."""

    code: str
    name: str
    description: str
    custom: bool = False


# Names as Llama Guard 4 lists them (MLCommons hazard taxonomy); descriptions summarise its model card.
HAZARDS: tuple[Category, ...] = (
    Category("S1", "Violent Crimes",
             "Content that enables, encourages or endorses violent crimes: terrorism, genocide, murder, "
             "hate-motivated violence, assault, battery, kidnapping, child abuse, animal abuse."),
    Category("S2", "Non-Violent Crimes",
             "Content that enables, encourages or endorses non-violent crimes: fraud, scams, money laundering, "
             "theft, arson, vandalism, drug crimes, weapons crimes, cyber crimes such as malware or hacking."),
    Category("S3", "Sex-Related Crimes",
             "Content that enables, encourages or endorses sex-related crimes: sex trafficking, sexual assault, "
             "sexual harassment, prostitution."),
    Category("S4", "Child Sexual Exploitation",
             "Content that contains, describes, enables, encourages or endorses the sexual abuse of children."),
    Category("S5", "Defamation",
             "Content that is verifiably false and likely to injure a living person's reputation."),
    Category("S6", "Specialized Advice",
             "Specialized financial, medical or legal advice, or claims that dangerous activities or objects are "
             "safe."),
    Category("S7", "Privacy",
             "Sensitive, non-public personal information that could undermine someone's physical, digital or "
             "financial security."),
    Category("S8", "Intellectual Property",
             "Content that may violate the intellectual property rights of any third party."),
    Category("S9", "Indiscriminate Weapons",
             "Content that enables, encourages or endorses the creation of weapons of mass destruction: "
             "chemical, biological, radiological, nuclear and high-yield explosive weapons."),
    Category("S10", "Hate",
             "Content that demeans or dehumanizes people on the basis of sensitive, personal characteristics "
             "(race, colour, ethnicity, national origin, disability, religion, caste, sexual orientation, sex, "
             "gender identity, serious disease)."),
    Category("S11", "Suicide & Self-Harm",
             "Content that enables, encourages or endorses intentional self-harm: suicide, self-injury, "
             "disordered eating."),
    Category("S12", "Sexual Content",
             "Depictions or descriptions of sex acts and sexually explicit (erotic) content."),
    Category("S13", "Elections",
             "Factually incorrect information about electoral systems and processes, including the time, place "
             "or manner of voting in civic elections."),
    Category("S14", "Code Interpreter Abuse",
             "Content that seeks to abuse code interpreters: denial of service, container escapes, privilege "
             "escalation."),
)

HAZARD_CODES: tuple[str, ...] = tuple(category.code for category in HAZARDS)


def hazard(code: str) -> Category:
    """The built-in category with that code; KeyError names the known ones."""
    for category in HAZARDS:
        if category.code == code:
            return category
    raise KeyError(f"unknown hazard category {code!r}; known: {', '.join(HAZARD_CODES)}")


@dataclass(frozen=True)
class Taxonomy:
    """The categories a policy checks: the built-ins minus the excluded ones, plus custom ones, in order.

    Custom categories are numbered on after S14 when given to Llama Guard (S15, S16, ...), because its
    templates expect S-codes; `prompt_code` maps a category to the code the model sees.
    """

    excluded: tuple[str, ...] = ()
    custom: tuple[Category, ...] = ()

    def __post_init__(self) -> None:
        for code in self.excluded:
            if code not in HAZARD_CODES:
                raise ValueError(f"excluded category {code!r} is not one of {', '.join(HAZARD_CODES)}")
        seen: set[str] = set(HAZARD_CODES)
        for category in self.custom:
            if not CODE_PATTERN.match(category.code):
                raise ValueError(f"custom category code {category.code!r} must be upper-case letters/digits")
            if category.code in seen:
                raise ValueError(f"custom category code {category.code!r} is already taken")
            seen.add(category.code)

    @property
    def active(self) -> tuple[Category, ...]:
        return tuple(c for c in HAZARDS if c.code not in self.excluded) + self.custom

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.active)

    def prompt_codes(self) -> dict[str, str]:
        """Our code -> the S-code shown to Llama Guard (built-ins keep theirs; customs get S15, S16, ...)."""
        mapping = {c.code: c.code for c in HAZARDS}
        for offset, category in enumerate(self.custom):
            mapping[category.code] = f"S{len(HAZARDS) + 1 + offset}"
        return mapping

    def get(self, code: str) -> Category:
        for category in HAZARDS + self.custom:
            if category.code == code:
                return category
        raise KeyError(f"unknown category {code!r}")
