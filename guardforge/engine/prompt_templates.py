"""A request's texts as each of its images reads them: its styles merged in, then its dynamic prompts expanded with
that image's seed (engine/styles.py, engine/dynamic_prompts.py)."""

from __future__ import annotations

from typing import NamedTuple

from guardforge.engine import dynamic_prompts
from guardforge.engine.dynamic_prompts import Wildcards
from guardforge.engine.request import GenerationRequest
from guardforge.engine.styles import PromptStyle, apply_styles


class Expansion(NamedTuple):
    """One image's request: its texts final (no style left to apply, no variant left to choose), its seeds still the
    whole request's. `template` and `negative_template`: the text before dynamic expansion, where expansion
    changed it (sd-dynamic-prompts' infotext keys `Template` and `Negative Template`)."""

    request: GenerationRequest
    template: str | None = None
    negative_template: str | None = None

    def infotext_params(self) -> dict[str, str]:
        return {key: value for key, value in (("Template", self.template),
                                              ("Negative Template", self.negative_template)) if value is not None}


def styled(request: GenerationRequest, styles: dict[str, PromptStyle]) -> GenerationRequest:
    """The request with its styles merged into its prompt and negative prompt, and into hires fix's own texts where
    it has them (A1111 styles those too), its `styles` emptied; the request itself when it names none.
    InvalidRequest names an unknown style."""
    if not request.styles:
        return request
    prompt, negative = apply_styles(styles, request.styles, request.prompt, request.negative_prompt)
    update: dict = {"prompt": prompt, "negative_prompt": negative, "styles": []}
    hires = request.hires
    if hires is not None and (hires.prompt, hires.negative_prompt) != (None, None):
        # Only the texts hires fix has of its own: one left out stays None, so that it reads the first pass's text
        # as that image expanded it, not an expansion of its own.
        hires_prompt, hires_negative = apply_styles(styles, request.styles, hires.prompt or "",
                                                    hires.negative_prompt or "")
        update["hires"] = hires.model_copy(update={
            "prompt": None if hires.prompt is None else hires_prompt,
            "negative_prompt": None if hires.negative_prompt is None else hires_negative})
    return request.model_copy(update=update)


def _texts(request: GenerationRequest) -> dict[str, str]:
    """The request's texts that dynamic prompts may hold, by the field they go back to."""
    texts = {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
    if request.hires is not None:
        texts.update({f"hires.{key}": value for key in ("prompt", "negative_prompt")
                      if (value := getattr(request.hires, key)) is not None})
    return texts


def is_dynamic(request: GenerationRequest) -> bool:
    return any(dynamic_prompts.is_dynamic(text) for text in _texts(request).values())


def check(request: GenerationRequest, styles: dict[str, PromptStyle], wildcards: Wildcards) -> GenerationRequest:
    """Refuse now what expanding the request would refuse for any seed (an unknown style, a missing wildcard, an
    unbalanced brace); returns the styled request (its templates unexpanded)."""
    request = styled(request, styles)
    for name, text in _texts(request).items():
        try:
            dynamic_prompts.check(text, wildcards)
        except ValueError as exc:
            raise type(exc)(f"{name}: {exc}") from None
    return request


def expand(request: GenerationRequest, seeds: list[int], styles: dict[str, PromptStyle],
           wildcards: Wildcards) -> list[Expansion]:
    """One Expansion per seed (per image): styles first, so that a style may carry variants and wildcards too, then
    each text expanded with the image's seed."""
    request = styled(request, styles)
    texts = _texts(request)
    if not any(dynamic_prompts.is_dynamic(text) for text in texts.values()):
        return [Expansion(request)] * len(seeds)
    expansions = []
    for seed in seeds:
        expanded = {}
        for name, text in texts.items():
            try:
                expanded[name] = dynamic_prompts.expand(text, seed, wildcards, stream=name)
            except ValueError as exc:
                raise type(exc)(f"{name}: {exc}") from None
        update: dict = {"prompt": expanded["prompt"], "negative_prompt": expanded["negative_prompt"]}
        if request.hires is not None:
            update["hires"] = request.hires.model_copy(update={
                key: expanded[f"hires.{key}"] for key in ("prompt", "negative_prompt") if f"hires.{key}" in expanded})
        changed = [texts[name] if expanded[name] != texts[name] else None for name in ("prompt", "negative_prompt")]
        expansions.append(Expansion(request.model_copy(update=update), *changed))
    return expansions
