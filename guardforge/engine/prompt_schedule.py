"""A1111's prompt editing `[from:to:when]` and alternation `[a|b]`: per-step prompt schedules, and the step-end
callback that switches a pass's embeddings to the scheduled prompt of the next step."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from guardforge.engine.prompts import PromptEmbeds, PromptEncoder
    from guardforge.engine.request import GenerationRequest
    from guardforge.models.registry import ModelEntry

# The terminals of A1111's lark grammar (modules/prompt_parser.py's schedule_parser): `plain` is any run of
# characters but `\ [ ] ( ) : |`, a backslash escaping the next one (not a newline: lark's `.`), and NUMBER is
# lark's SIGNED_NUMBER.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_NUMBER = r"[+-]?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)"
_WHEN = re.compile(rf"\s*({_NUMBER})\s*]")

Node = Union[str, "Scheduled", "Alternate", list]


@dataclass
class Scheduled:
    """`[before:after:when]`; `before` is None for `[after:when]`. `when` is the number as typed."""

    before: Node | None
    after: Node
    when: str


@dataclass
class Alternate:
    options: list[Node]


class _NoMatch(Exception):
    pass


# Brackets nested deeper than this make the whole prompt plain text (A1111's parser would hit Python's recursion
# limit and fail the generation); it keeps this parser's recursion, and _text's, far from that limit.
MAX_NESTING = 100


class _Parser:
    """A1111's grammar by recursive descent. A bracket at a given position parses the same wherever it is reached
    from, so each one's result is kept: a text of unclosed brackets, retried as literal text from each, stays linear
    in its length."""

    def __init__(self, text: str):
        self.text = text
        self.depth = 0
        self.brackets: dict[int, tuple[Node, int] | None] = {}

    def prompt(self, i: int) -> tuple[list[Node], int]:
        """A1111's `prompt` rule from i: plain text and bracket constructs, up to a character it cannot take."""
        text, items = self.text, []
        while i < len(text):
            if text[i] in "([":
                try:
                    node, i = self.bracket(i)
                except _NoMatch:
                    break
                items.append(node)
                continue
            match = _PLAIN.match(text, i)
            if match is None:
                break
            items.append(match.group(0))
            i = match.end()
        return items, i

    def bracket(self, i: int) -> tuple[Node, int]:
        if i not in self.brackets:
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise _TooDeep
            try:
                self.brackets[i] = self._bracket(i)
            except _NoMatch:
                self.brackets[i] = None
            finally:
                self.depth -= 1
        found = self.brackets[i]
        if found is None:
            raise _NoMatch
        return found

    def _bracket(self, i: int) -> tuple[Node, int]:
        """`(a)`, `(a:b)`, `[a]` (kept as typed: attention, read later), `[a:b:when]`, `[b:when]` or `[a|b|...]`."""
        text = self.text
        first, j = self.prompt(i + 1)
        ahead = text[j:j + 1]
        if text[i] == "(":
            if ahead == ")":
                return ["(", *first, ")"], j + 1
            if ahead == ":":
                second, k = self.prompt(j + 1)
                if text[k:k + 1] == ")":
                    return ["(", *first, ":", *second, ")"], k + 1
            raise _NoMatch
        if ahead == "]":
            return ["[", *first, "]"], j + 1
        if ahead == "|":
            options: list[Node] = [first]
            while text[j:j + 1] == "|":
                option, j = self.prompt(j + 1)
                options.append(option)
            if text[j:j + 1] != "]":
                raise _NoMatch
            return Alternate(options), j + 1
        if ahead == ":":
            when = _WHEN.match(text, j + 1)
            if when is not None:
                return Scheduled(None, first, when.group(1)), when.end()
            second, k = self.prompt(j + 1)
            if text[k:k + 1] == ":":
                when = _WHEN.match(text, k + 1)
                if when is not None:
                    return Scheduled(first, second, when.group(1)), when.end()
        raise _NoMatch


class _TooDeep(Exception):
    pass


def parse(text: str) -> list[Node] | None:
    """The prompt as A1111's schedule grammar reads it, or None where that grammar fails (a `|` outside brackets,
    a lone trailing backslash) or brackets nest over MAX_NESTING deep: the whole prompt is then read as typed at
    every step, as A1111 reads a prompt its grammar fails on. Outside any bracket, a bracket or colon that starts
    no construct is text, as A1111's `start` rule reads it."""
    parser = _Parser(text)
    items: list[Node] = []
    i = 0
    try:
        while True:
            found, i = parser.prompt(i)
            items.extend(found)
            if i >= len(text):
                return items
            if text[i] not in "[]():":
                return None
            items.append(text[i])
            i += 1
    except _TooDeep:
        return None


def _nodes(tree: Any):
    if isinstance(tree, list):
        for node in tree:
            yield from _nodes(node)
    elif isinstance(tree, Scheduled):
        yield tree
        yield from _nodes(tree.before)
        yield from _nodes(tree.after)
    elif isinstance(tree, Alternate):
        yield tree
        yield from _nodes(tree.options)


def edits(text: str) -> bool:
    """Whether the text has prompt editing or alternation, whatever the step count."""
    tree = parse(text)
    return tree is not None and any(True for _ in _nodes(tree))


def _text(tree: Any, step: int, whens: dict[int, int]) -> str:
    if tree is None:
        return ""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, list):
        return "".join(_text(node, step, whens) for node in tree)
    if isinstance(tree, Scheduled):
        return _text(tree.before if step <= whens[id(tree)] else tree.after, step, whens)
    return _text(tree.options[(step - 1) % len(tree.options)], step, whens)


def prompt_schedule(text: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's get_learned_conditioning_prompt_schedules for one prompt: [(until_step, prompt)], steps counted
    from 1, each prompt used up to and including its step.

    `when` with a decimal point is a fraction of the steps, without one a step number, clamped to the steps; a
    `when` below 1 means `after` from the start. For hires fix's second pass (`hires_steps` given, `steps` the
    first pass's), step numbers go on counting from the first pass (`[a:b:25]` after a 20-step first pass
    switches at the second pass's step 5) and fractions from 1.0 to 2.0 span the second pass."""
    tree = parse(text)
    if tree is None:
        return [(hires_steps or steps, text)]
    if hires_steps is None:
        int_offset, float_offset, total = 0, 0.0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps
    whens: dict[int, int] = {}
    points = {total}
    for node in _nodes(tree):
        if isinstance(node, Scheduled):
            value = float(node.when)
            value = (value - float_offset) * total if "." in node.when else value - int_offset
            # int() of an infinite `when` (1e999) would raise: it is past every step, or before the first.
            whens[id(node)] = min(total, int(value)) if math.isfinite(value) else (total if value > 0 else 0)
            if whens[id(node)] >= 1:
                points.add(whens[id(node)])
        else:
            points.update(range(1, total + 1))
    return [(step, _text(tree, step, whens)) for step in sorted(points)]


def text_at(schedule: list[tuple[int, str]], index: int) -> str:
    """The prompt A1111's sampler reads at denoising step `index` (counted from 0): the first entry whose step is
    at or after it (its reconstruct_cond_batch), so step 0 and step 1 both read the entry of step 1."""
    for until, text in schedule:
        if index <= until:
            return text
    return schedule[-1][1]


@dataclass(frozen=True)
class PassTexts:
    """The prompt and negative prompt of one denoising pass, scheduled: `steps` and `hires_steps` as
    prompt_schedule takes them, `runs` the denoising steps the pass runs (counted from 0 against the schedule)."""

    prompt: str
    negative_prompt: str
    steps: int
    runs: int
    hires_steps: int | None = None

    def pairs(self) -> list[tuple[str, str]]:
        """(prompt, negative prompt) at each step the pass runs."""
        positive = prompt_schedule(self.prompt, self.steps, self.hires_steps)
        negative = prompt_schedule(self.negative_prompt, self.steps, self.hires_steps)
        return [(text_at(positive, i), text_at(negative, i)) for i in range(max(self.runs, 1))]


def pass_texts(request: GenerationRequest, scheduler_config: dict, prompt: str) -> list[PassTexts]:
    """The request's passes (the first, then hires fix's second if it runs), scheduled as the engine runs them.
    `prompt`: the request's prompt without its `<lora:...>` tags; `scheduler_config`: the model's.

    As in A1111, a schedule counts the sampler's denoising steps (a second-order sampler's are about twice the
    steps asked); img2img and inpaint lay the schedule over the request's steps and read it from the start over
    the steps the strength runs; the second pass's schedule is laid over the steps it runs."""
    from guardforge.engine.hires import pass_steps
    from guardforge.engine.prompts import extract_lora_tags

    first = pass_steps(scheduler_config, request.sampler, request.schedule, request.steps)
    runs = first if request.mode == "txt2img" else pass_steps(
        scheduler_config, request.sampler, request.schedule, request.steps, request.denoising_strength)
    passes = [PassTexts(prompt, request.negative_prompt, first, runs)]
    hires = request.hires
    if hires is not None and int((hires.steps or request.steps) * hires.denoising_strength) >= 1:
        second = pass_steps(scheduler_config, hires.sampler or request.sampler, hires.schedule or request.schedule,
                            hires.steps or request.steps, hires.denoising_strength)
        hires_prompt = prompt if hires.prompt is None else extract_lora_tags(hires.prompt)[0]
        negative = request.negative_prompt if hires.negative_prompt is None else hires.negative_prompt
        passes.append(PassTexts(hires_prompt, negative, first, second, hires_steps=second))
    return passes


def scheduled_pairs(request: GenerationRequest, scheduler_config: dict) -> list[tuple[str, str]]:
    """Every (prompt, negative prompt) pair the engine encodes for a request whose texts edit or alternate, in
    order, each once; [] for a request without either (the typed texts are all it reads)."""
    from guardforge.engine.prompts import extract_lora_tags

    if not request_edits(request):
        return []
    prompt = extract_lora_tags(request.prompt)[0]
    pairs = [pair for texts in pass_texts(request, scheduler_config, prompt) for pair in texts.pairs()]
    return list(dict.fromkeys(pairs))


def guarded_pairs(request: GenerationRequest, entry: ModelEntry) -> list[tuple[str, str]]:
    """scheduled_pairs for a request on the model `entry`, counted on the scheduler config in its files, before
    the model loads (the guard reads these before anything runs). InvalidRequest where the model cannot edit, or
    where a scheduled text has a weight that does not parse (`(a:[1.2|1.2.3])` reads `(a:1.2.3)` at step 2), as
    for a typed one."""
    import json

    from guardforge.engine.prompts import prompt_chunks
    from guardforge.models.loading import CONFIGS_DIR, shipped_config_name

    if not request_edits(request):
        return []
    check_prompt_editing(request, entry.family)
    path = Path(entry.path) / "scheduler" / "scheduler_config.json"
    if entry.format != "diffusers" or not path.is_file():  # a single file loads with the family's shipped configs
        path = CONFIGS_DIR / shipped_config_name(entry.family) / "scheduler" / "scheduler_config.json"
    pairs = scheduled_pairs(request, json.loads(path.read_text()))
    for text in dict.fromkeys(text for pair in pairs for text in pair):
        prompt_chunks(text)
    return pairs


def request_edits(request: GenerationRequest) -> bool:
    hires = request.hires
    texts = [request.prompt, request.negative_prompt]
    if hires is not None:
        texts += [hires.prompt or "", hires.negative_prompt or ""]
    return any(edits(text) for text in texts)


def check_prompt_editing(request: GenerationRequest, family: str) -> None:
    """Refuse before the model loads prompt editing on a model whose prompts are not CLIP embeddings the pipeline
    takes step by step (SD3, Flux)."""
    if family in ("sd3", "flux") and request_edits(request):
        raise InvalidRequest(f"prompt editing ([from:to:when], [a|b]) needs an SD 1.x, SD 2.x or SDXL model, not "
                             f"{family}; write the prompt without them, or escape the brackets as \\[ \\]")


# SDXL pipelines whose denoising loop takes prompt_embeds back from the step callback but not add_text_embeds
# (diffusers 0.42's SDXL ControlNet inpainting): the pooled half of a switch would be lost.
_POOLED_KEPT = ("StableDiffusionXLControlNetInpaintPipeline",)


def _batched(tensor: Any, count: int) -> Any:
    return tensor.repeat(count, *([1] * (tensor.dim() - 1)))


class PassConditioning:
    """One pass's embeddings: those of its first step, to call the pipeline with (`kwargs`), and, when its texts
    change from step to step, a step-end callback that hands the pipeline the next step's.

    Each distinct (prompt, negative prompt) pair is encoded once, before the pass, by `encoder` (the compel path:
    weights, BREAK, clip skip, SDXL's pooled embeddings). In the denoising loop diffusers' SD and SDXL pipelines
    (ControlNet's included) hold `prompt_embeds` (and SDXL's `add_text_embeds`) as [negative rows, positive rows]
    under classifier-free guidance, each repeated per image, and take them back from the callback's result."""

    def __init__(self, encoder: PromptEncoder, texts: PassTexts, spell: Callable[[str], str] = lambda text: text,
                 offset: int = 0):
        # `offset`: the steps another pipeline ran before this one (a refiner's steps count on from the base's).
        pairs = texts.pairs()
        self.steps = pairs[offset:] or pairs[-1:]
        self.embeds: dict[tuple[str, str], PromptEmbeds] = {}
        for pair in dict.fromkeys(self.steps):
            self.embeds[pair] = encoder.pair(spell(pair[0]), spell(pair[1]))
        self.scheduled = len(self.embeds) > 1
        if self.scheduled and "prompt_embeds" not in self.embeds[self.steps[0]].kwargs:
            raise InvalidRequest("prompt editing ([from:to:when], [a|b]) needs an SD 1.x, SD 2.x or SDXL model; "
                                 "this one takes its prompt as text")

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.embeds[self.steps[0]].kwargs

    def step_kwargs(self, callback: Callable, pipe: DiffusionPipeline | None = None) -> dict[str, Any]:
        """The pipeline's callback arguments: `callback` alone, or chained after the switch of embeddings.
        InvalidRequest where `pipe` would not take the switched embeddings back."""
        if not self.scheduled:
            return {"callback_on_step_end": callback}
        inputs = ["latents", "prompt_embeds"]
        if "pooled_prompt_embeds" in self.kwargs:
            inputs.append("add_text_embeds")
            if pipe is not None and any(cls.__name__ in _POOLED_KEPT for cls in type(pipe).__mro__):
                raise InvalidRequest(f"prompt editing ([from:to:when], [a|b]) does not run on diffusers' "
                                     f"{type(pipe).__name__}: it keeps the first step's pooled embeddings; "
                                     "leave the edits or the ControlNet units out of this inpainting")

        def chained(pipe: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
            return callback(pipe, step, timestep, self.switch(pipe, step, timestep, kwargs))

        return {"callback_on_step_end": chained, "callback_on_step_end_tensor_inputs": inputs}

    def switch(self, pipe: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        """At the end of step `step`, the embeddings of step `step + 1` where its texts differ."""
        import torch

        following = step + 1
        if following >= len(self.steps) or self.steps[following] == self.steps[step]:
            return kwargs
        embeds = self.embeds[self.steps[following]].kwargs
        guided = pipe.do_classifier_free_guidance
        for key, positive, negative in (("prompt_embeds", "prompt_embeds", "negative_prompt_embeds"),
                                        ("add_text_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")):
            if key not in kwargs:
                continue
            current = kwargs[key]
            count = current.shape[0] // (2 if guided else 1)
            rows = _batched(embeds[positive], count)
            if guided:
                rows = torch.cat([_batched(embeds[negative], count), rows])
            kwargs[key] = rows.to(device=current.device, dtype=current.dtype)
        return kwargs
