"""A1111 prompt syntax: `<lora:name:w>` tags, `(word:1.2)`/`(word)`/`[word]` weights via compel, BREAK, clip skip."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

# A1111's extra-network syntax (modules/extra_networks.py): `<lora:` then `:`-separated items, the first the name.
# Its Lora extension reads the next two as the text-encoder weight and the UNet weight (the UNet's defaults to
# the text encoder's), `te=` and `unet=` by name, and a fourth, `dyn=`, as a rank limit.
_LORA_TAG = re.compile(r"<lora:([^>]+)>", re.IGNORECASE)

# A1111's attention grammar (modules/prompt_parser.py): escapes, brackets, `:weight)` and plain text.
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.VERBOSE)
_ROUND = 1.1  # (word) multiplies attention by 1.1, [word] divides by it, as in A1111
_SQUARE = 1 / 1.1
# A1111's re_break: BREAK as a word, with the spaces around it, ends the 75-token chunk being filled.
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


@dataclass(frozen=True)
class LoraTag:
    """`weight` is A1111's first weight, the text encoder's, and also the UNet's unless `unet_weight` is set."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None

    @property
    def unet(self) -> float:
        return self.weight if self.unet_weight is None else self.unet_weight


def _lora_weight(tag: str, what: str, text: str | None, default: float) -> float:
    if text is None or not text.strip():
        return default
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{tag}: the {what} weight {text.strip()!r} must be a number, "
                             "e.g. <lora:name:0.8> or <lora:name:0.8:0.5> (text encoder, then UNet)") from None


def _lora_tag(body: str) -> LoraTag:
    tag = f"<lora:{body}>"
    name, *items = body.split(":")
    if not name.strip():
        raise InvalidRequest(f"{tag}: the LoRA's name is missing, e.g. <lora:name:0.8>")
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            named[key.strip()] = value
        else:
            positional.append(item)
    if len(positional) > 2 or "dyn" in named:
        raise InvalidRequest(f"{tag}: guardforge takes a text-encoder and a UNet weight, "
                             "not A1111's dyn (rank limit); drop the rest")
    te = _lora_weight(tag, "text-encoder", named.get("te", positional[0] if positional else None), 1.0)
    unet = _lora_weight(tag, "UNet", named.get("unet", positional[1] if len(positional) > 1 else None), te)
    return LoraTag(name.strip(), te, None if unet == te else unet)


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove `<lora:...>` tags from a prompt; returns the prompt without them and the tags in order."""
    tags: list[LoraTag] = []

    def take(match: re.Match[str]) -> str:
        tags.append(_lora_tag(match.group(1)))
        return ""

    return _LORA_TAG.sub(take, prompt), tags


def _parse(text: str, breaks: bool) -> list[list[Any]]:
    """A1111's parse_prompt_attention as [text, weight] fragments, unmerged; with `breaks`, each BREAK is a
    [None, 1.0] marker, which no bracket weights (A1111 turns a BREAK inside brackets into a weighted word)."""
    fragments: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if fragment[0] is not None:
                fragment[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                # A1111 fails the generation here with Python's float() error; we refuse the request up front.
                raise InvalidRequest(f"the attention weight in '{_around(text, match)}' is not a number: "
                                     f"{weight!r}; write weights like (word:1.2)") from None
            multiply(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply(round_open.pop(), _ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), _SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(token) if breaks else [token]):
                if index:
                    fragments.append([None, 1.0])
                fragments.append([part, 1.0])
    # Brackets left open apply to the end of the prompt, as in A1111.
    for start in round_open:
        multiply(start, _ROUND)
    for start in square_open:
        multiply(start, _SQUARE)
    return fragments


def _around(text: str, match: re.Match[str]) -> str:
    start = text.rfind("(", 0, match.start())
    return text[max(start, match.start() - 40):match.end()]


def _merged(fragments: list[list[Any]]) -> list[tuple[str, float]]:
    merged: list[list[Any]] = []
    for fragment in fragments:
        if merged and merged[-1][1] == fragment[1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(list(fragment))
    return [(text_, float(weight)) for text_, weight in merged] or [("", 1.0)]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """A1111's weighting: `(a:1.3)`, `(a)` x1.1, `[a]` /1.1, nested brackets multiply, `\\(` is literal.

    Returns fragments with their weight, adjacent fragments of equal weight merged. BREAK stays in the text
    (see prompt_chunks). A weight that is not a number, `(a:1.2.3)`, raises InvalidRequest.
    """
    return _merged(_parse(text, breaks=False))


def prompt_chunks(text: str) -> list[list[tuple[str, float]]]:
    """The prompt as A1111 encodes it: one parse_prompt_attention list per BREAK-separated part, each of which
    starts a new 75-token chunk. As in A1111, BREAK at the very end adds no chunk; anywhere else an empty part
    is an empty chunk."""
    parts: list[list[list[Any]]] = [[]]
    for fragment in _parse(text, breaks=True):
        if fragment[0] is None:
            parts.append([])
        else:
            parts[-1].append(fragment)
    if len(parts) > 1 and not "".join(text_ for text_, _ in parts[-1]).strip():
        parts.pop()
    return [_merged(part) for part in parts]


def plain_text(prompt: str) -> str:
    """The prompt with weighting syntax removed, for encoders compel does not drive (T5, Gemma)."""
    return "".join(text for text, _ in parse_prompt_attention(prompt))


@dataclass
class PromptEmbeds:
    """Keyword arguments for a diffusers pipeline call in place of prompt / negative_prompt strings."""

    kwargs: dict[str, Any]


def _provider_class():
    from compel.embeddings_provider import EmbeddingsProvider

    class LayerEmbeddingsProvider(EmbeddingsProvider):
        """compel's provider reading the hidden state A1111 reads: `hidden_states[-layer]`, optionally normed.

        compel offers only the last and penultimate layers; A1111's clip skip goes up to 12, so this override
        of compel's one encoding hook picks any layer and keeps the rest of compel (chunking, weighting).
        """

        def __init__(self, *args: Any, layer: int = 1, normalize: bool = True, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.layer = layer
            self.normalize = normalize

        def _encode_token_ids_to_embeddings(self, token_ids: torch.Tensor,
                                            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            if self.layer == 1 and self.normalize:
                return self.text_encoder(token_ids, attention_mask, return_dict=True).last_hidden_state
            output = self.text_encoder(token_ids, attention_mask, output_hidden_states=True, return_dict=True)
            hidden = output.hidden_states[-self.layer]
            return _final_layer_norm(self.text_encoder)(hidden) if self.normalize else hidden

    return LayerEmbeddingsProvider


def _is_clip(text_encoder: Any) -> bool:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return isinstance(text_encoder, (CLIPTextModel, CLIPTextModelWithProjection))


def _final_layer_norm(text_encoder: Any) -> Any:
    # transformers 5 dropped CLIPTextModel's `text_model` wrapper; CLIPTextModelWithProjection keeps it.
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _check_clip_skip(text_encoder: Any, layer: int) -> None:
    layers = text_encoder.config.num_hidden_layers
    if layer > layers:
        raise InvalidRequest(f"clip_skip reads layer -{layer} but this text encoder has only {layers} layers")


def _encode(provider: Any, prompt: str, device: Any) -> torch.Tensor:
    # Each BREAK part is encoded on its own (compel splits a part of over 75 tokens into 77-token chunks, as
    # A1111 does) and the parts are laid end to end, so each starts a chunk of its own.
    import torch

    return torch.cat([
        provider.get_embeddings_for_weighted_prompt_fragments(
            text_batch=[[text for text, _ in fragments]],
            fragment_weights_batch=[[weight for _, weight in fragments]],
            device=device,
        )
        for fragments in prompt_chunks(prompt)
    ], dim=1)


def _first_chunk_text(prompt: str) -> str:
    # A1111's SDXL pooled output is that of the first chunk: the text before the first BREAK.
    return "".join(text for text, _ in prompt_chunks(prompt)[0])


def _pad_pair(provider: Any, positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Long prompts are encoded in 77-token chunks; the shorter side is padded with empty-prompt chunks,
    # as A1111 does, so that conditional and unconditional batches have the same length.
    from compel import Compel

    padded = Compel._pad_conditioning_tensors_to_same_length([positive, negative], provider.empty_z)
    return padded[0], padded[1]


class PromptEncoder:
    """Embeddings for an SD 1.x/2.x or SDXL pipeline's (prompt, negative prompt) pairs, or plain strings for other
    families. Each text is encoded once however many pairs it is in (prompt editing pairs texts step by step).

    Texts must already be free of `<lora:...>` tags."""

    def __init__(self, pipe: DiffusionPipeline, clip_skip: int, device: Any):
        tokenizer = getattr(pipe, "tokenizer", None)
        text_encoder = getattr(pipe, "text_encoder", None)
        tokenizer_2 = getattr(pipe, "tokenizer_2", None)
        text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        no_t5 = getattr(pipe, "text_encoder_3", None) is None
        provider_cls = _provider_class()
        common = {"truncate": False, "device": device}
        self.device = device
        self.providers: list[Any] = []
        self.pooled: Any = None  # the provider whose pooled output SDXL reads
        self._texts: dict[str, tuple[list[Any], Any]] = {}
        if _is_clip(text_encoder) and _is_clip(text_encoder_2) and no_t5:
            # SDXL: both encoders' penultimate layer un-normalised (clip skip 1); higher clip skip goes deeper.
            layer = clip_skip + 1
            _check_clip_skip(text_encoder, layer)
            _check_clip_skip(text_encoder_2, layer)
            self.providers = [provider_cls(tokenizer, text_encoder, layer=layer, normalize=False, **common),
                              provider_cls(tokenizer_2, text_encoder_2, layer=layer, normalize=False, **common)]
            self.pooled = self.providers[1]
        elif text_encoder is None and _is_clip(text_encoder_2) and no_t5:
            # SDXL's refiner has only the second encoder: read as the base reads it (penultimate layer
            # un-normalised, pooled output of the first chunk).
            layer = clip_skip + 1
            _check_clip_skip(text_encoder_2, layer)
            self.providers = [provider_cls(tokenizer_2, text_encoder_2, layer=layer, normalize=False, **common)]
            self.pooled = self.providers[0]
        elif _is_clip(text_encoder) and text_encoder_2 is None:
            # SD 1.x / 2.x: A1111 reads hidden_states[-clip_skip] through the final layer norm.
            _check_clip_skip(text_encoder, clip_skip)
            self.providers = [provider_cls(tokenizer, text_encoder, layer=clip_skip, normalize=True, **common)]

    def _encoded(self, text: str) -> tuple[list[Any], Any]:
        if text not in self._texts:
            pooled = None
            if self.pooled is not None:
                pooled = self.pooled.get_pooled_embeddings([_first_chunk_text(text)], device=self.device)
            self._texts[text] = ([_encode(provider, text, self.device) for provider in self.providers], pooled)
        return self._texts[text]

    def pair(self, prompt: str, negative_prompt: str) -> PromptEmbeds:
        if not self.providers:
            # SD3, Flux and others: their T5 encoders take no A1111 weights; send the text without the syntax.
            return PromptEmbeds({"prompt": plain_text(prompt), "negative_prompt": plain_text(negative_prompt) or None})
        import torch

        positive, pooled = self._encoded(prompt)
        negative, negative_pooled = self._encoded(negative_prompt)
        padded = [_pad_pair(provider, p, n) for provider, p, n in zip(self.providers, positive, negative, strict=True)]
        kwargs = {"prompt_embeds": torch.cat([p for p, _ in padded], dim=-1),
                  "negative_prompt_embeds": torch.cat([n for _, n in padded], dim=-1)}
        if self.pooled is not None:
            kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
        return PromptEmbeds(kwargs)


def encode_prompts(pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int,
                   device: Any) -> PromptEmbeds:
    """Embeddings for an SD 1.x/2.x or SDXL pipeline, or plain strings for other families.

    `prompt` must already be free of `<lora:...>` tags.
    """
    return PromptEncoder(pipe, clip_skip, device).pair(prompt, negative_prompt)
