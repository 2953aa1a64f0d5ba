"""Textual inversion embeddings: A1111's `embeddings/` folder, used by name in the prompt or negative prompt.

An embedding is used when its name (the file's name without extension, as A1111 names it) appears in either text
as a word. For one request the engine loads the embeddings the texts use into the pipeline's tokenizer(s) and text
encoder(s) with diffusers' load_textual_inversion, as tokens of their own (`<ti-name>`, and `<ti-name>_1`, ... for
an embedding of several vectors), and unloads them in a `finally`, so the next request sees the base vocabulary.
The texts get each name spelt out as its tokens before they are encoded (as diffusers' maybe_convert_prompt does),
so weighting `(name:1.2)` and long-prompt chunks count every vector, as A1111's do.

Files: A1111's `.pt` (a dict with `string_to_param`), read with `torch.load(weights_only=True)`, which takes tensors,
strings and numbers and no code (a file that needs more is a pickle: refused unless allow_pickle); `.safetensors`
with `emb_params` (SD 1.x/2.x) or `clip_l` and `clip_g` (SDXL); diffusers' single-tensor `.bin`/`.pt`/`.safetensors`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardforge.errors import InvalidRequest, UnsafeModelFormat

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from guardforge.models.registry import ModelEntry, ModelRegistry


def embedding_name(entry: ModelEntry) -> str:
    """The word a prompt uses: the file's stem (a subfolder groups files, as in A1111, but is not part of it)."""
    return entry.name.rsplit("/", 1)[-1]


def embeddings_in(registry: ModelRegistry, *texts: str) -> list[ModelEntry]:
    """The embeddings the texts name, each once, in the folder's order. A name is a whole word of the text
    (A1111 matches it as the tokens it encodes to); the safe file wins over a pickle of the same name."""
    found: dict[str, ModelEntry] = {}
    for entry in sorted(registry.list("embedding"), key=lambda e: e.is_pickle):
        name = embedding_name(entry)
        if name in found:
            continue
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        if any(pattern.search(text) for text in texts):
            found[name] = entry
    return list(found.values())


def ti_hashes(registry: ModelRegistry, prompt: str, negative_prompt: str) -> str:
    """A1111's "TI hashes" infotext value: `name: first 12 hex digits of the file's SHA-256, ...`."""
    from guardforge.engine.prompts import extract_lora_tags

    used = embeddings_in(registry, extract_lora_tags(prompt)[0], negative_prompt)
    return ", ".join(f"{embedding_name(e).replace(':', '').replace(',', '')}: {e.sha256()[:12]}" for e in used)


@dataclass
class Embedding:
    """One embedding's vectors, per text encoder: "" for SD 1.x/2.x's one, "clip_l" and "clip_g" for SDXL."""

    name: str
    vectors: dict[str, torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width (SDXL: both encoders' widths added)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    @property
    def count(self) -> int:
        """A1111's `vectors`: tokens the embedding takes in a prompt."""
        return int(next(iter(self.vectors.values())).shape[0])


def _as_matrix(value: Any, what: str) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        raise InvalidRequest(f"embedding {what}: not a matrix of vectors")
    return value.detach().reshape(-1, value.shape[-1]).float()


def read_embedding(entry: ModelEntry, allow_pickle: bool) -> Embedding:
    """The vectors of an embedding file; InvalidRequest for a file that holds none, UnsafeModelFormat for one
    that could only be read by running its pickle."""
    import torch

    name = embedding_name(entry)
    path = entry.path
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data: Any = load_file(str(path))
    else:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything but tensors, containers and plain values
            if not allow_pickle:
                raise UnsafeModelFormat(
                    f"embedding {entry.name!r} ({path.suffix}) holds more than tensors and plain values, so reading "
                    f"it would run its pickle; convert it to .safetensors or set allow_pickle: true "
                    f"({type(exc).__name__})") from None
            data = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(data, dict):
        raise InvalidRequest(f"embedding {entry.name!r} is not a dict of tensors")
    extra: dict[str, Any] = {}
    if "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": _as_matrix(data["clip_l"], name), "clip_g": _as_matrix(data["clip_g"], name)}
    elif "string_to_param" in data:  # A1111's own training output
        params = data["string_to_param"]
        vectors = {"": _as_matrix(next(iter(params.values())) if isinstance(params, dict) and params else None,
                                  name)}
        extra = {k: data.get(k) for k in ("step", "sd_checkpoint", "sd_checkpoint_name")}
        extra = {k: v if isinstance(v, (int, str)) else None for k, v in extra.items()}
    elif "emb_params" in data:
        vectors = {"": _as_matrix(data["emb_params"], name)}
    elif len(data) == 1:  # diffusers' {token: vector}
        vectors = {"": _as_matrix(next(iter(data.values())), name)}
    else:
        raise InvalidRequest(f"embedding {entry.name!r} has none of string_to_param, emb_params, clip_l/clip_g")
    if len({v.shape[0] for v in vectors.values()}) != 1:
        raise InvalidRequest(f"embedding {entry.name!r}: clip_l and clip_g hold different numbers of vectors")
    return Embedding(name, vectors, **extra)


def _encoders(pipe: DiffusionPipeline) -> dict[str, tuple[Any, Any]]:
    """The pipeline's CLIP tokenizer and text encoder pairs under the names embedding files give them."""
    first = (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))
    second = (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))
    if second[1] is not None and getattr(pipe, "text_encoder_3", None) is None:
        return {"clip_l": first, "clip_g": second}
    return {"": first}


def fits(embedding: Embedding, widths: dict[str, int]) -> bool:
    """Whether the embedding's vectors are as wide as the text encoders it would go into."""
    return set(embedding.vectors) == set(widths) and all(
        int(v.shape[-1]) == widths[key] for key, v in embedding.vectors.items())


def check_fit(entries: list[ModelEntry], widths: dict[str, int], allow_pickle: bool) -> list[Embedding]:
    """The embeddings read; InvalidRequest naming the first made for text encoders of other widths."""
    embeddings = [read_embedding(entry, allow_pickle) for entry in entries]
    for embedding in embeddings:
        if not fits(embedding, widths):
            have = ", ".join(f"{k or 'text encoder'} {v}" for k, v in widths.items())
            raise InvalidRequest(f"embedding {embedding.name!r} ({embedding.shape} wide) was made for another model "
                                 f"family than this one ({have})")
    return embeddings


def encoder_widths(pipe: DiffusionPipeline) -> dict[str, int]:
    return {key: int(encoder.get_input_embeddings().weight.shape[-1])
            for key, (_, encoder) in _encoders(pipe).items() if encoder is not None}


def widths_from_configs(folder) -> dict[str, int]:
    """encoder_widths read from a diffusers folder's config files, without loading the model."""
    import json
    from pathlib import Path

    def hidden(part: str) -> int | None:
        path = Path(folder) / part / "config.json"
        return int(json.loads(path.read_text()).get("hidden_size", 0)) if path.is_file() else None

    first, second = hidden("text_encoder"), hidden("text_encoder_2")
    if second and not (Path(folder) / "text_encoder_3").is_dir():
        return {"clip_l": first or 0, "clip_g": second}
    return {"": first or 0}


def listing(entries: list[ModelEntry], widths: dict[str, int], allow_pickle: bool) -> dict[str, dict]:
    """A1111's /sdapi/v1/embeddings: {"loaded": {name: {...}}, "skipped": {...}}, loaded being those that fit a
    model of these encoder widths. A file that cannot be read safely is in neither, as A1111 leaves out files it
    fails to load."""
    from guardforge.errors import GuardforgeError

    answer: dict[str, dict] = {"loaded": {}, "skipped": {}}
    for entry in entries:
        try:
            embedding = read_embedding(entry, allow_pickle)
        except (GuardforgeError, OSError, ValueError):
            continue
        answer["loaded" if fits(embedding, widths) else "skipped"].setdefault(embedding.name, {
            "step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
            "sd_checkpoint_name": embedding.sd_checkpoint_name, "shape": embedding.shape, "vectors": embedding.count})
    return answer


def _token(name: str) -> str:
    """The token an embedding is loaded as: not its name, which may be a word the tokenizer has already (CLIP's
    vocabulary holds "bad", "style", ...) or a part of longer words the tokenizer would split it out of."""
    return f"<ti-{name}>"


def _tokens(name: str, count: int) -> list[str]:
    """diffusers' tokens for an embedding of `count` vectors: token, token_1, token_2, ..."""
    return [_token(name)] + [f"{_token(name)}_{i}" for i in range(1, count)]


def spell_out(text: str, embeddings: list[Embedding]) -> str:
    """The text with each embedding's name, as a word, written as its tokens (all of them, one per vector)."""
    for embedding in embeddings:
        pattern = re.compile(rf"(?<![\w-]){re.escape(embedding.name)}(?![\w-])")
        text = pattern.sub(" ".join(_tokens(embedding.name, embedding.count)), text)
    return text


@contextmanager
def applied_embeddings(pipe: DiffusionPipeline, entries: list[ModelEntry],
                       allow_pickle: bool) -> Iterator[list[Embedding]]:
    """Load the embeddings into the pipeline's tokenizers and text encoders for one request; always unload."""
    if not entries:
        yield []
        return
    encoders = _encoders(pipe)
    if any(tokenizer is None or encoder is None for tokenizer, encoder in encoders.values()) or not hasattr(
            pipe, "load_textual_inversion"):
        raise InvalidRequest(f"{type(pipe).__name__} takes no textual inversion embeddings (SD 1.x/2.x and SDXL do)")
    embeddings = check_fit(entries, encoder_widths(pipe), allow_pickle)
    loaded: list[tuple[str, list[str]]] = []
    # Loading resizes each text encoder's token embeddings (transformers swaps the module's weight tensor, or the
    # module); the original tensor goes back afterwards, untouched, so the next request's encoder is the one it was
    # (diffusers' unload alone cuts the matrix to the tokenizer's length, which may be below the model's vocabulary).
    originals = {key: (encoder.get_input_embeddings(), encoder.get_input_embeddings().weight.data,
                       encoder.config.vocab_size) for key, (_, encoder) in encoders.items()}
    try:
        for embedding in embeddings:
            tokens = _tokens(embedding.name, embedding.count)
            for key, vectors in embedding.vectors.items():
                tokenizer, encoder = encoders[key]
                loaded.append((key, tokens))  # before loading: a half-loaded one is unloaded too
                pipe.load_textual_inversion(vectors.to(encoder.dtype), token=tokens[0], tokenizer=tokenizer,
                                            text_encoder=encoder)
        yield embeddings
    finally:
        for key, tokens in reversed(loaded):
            tokenizer, encoder = encoders[key]
            present = [t for t in tokens if t in tokenizer.get_vocab()]
            if present:
                pipe.unload_textual_inversion(present, tokenizer=tokenizer, text_encoder=encoder)
        for key in {key for key, _ in loaded}:
            encoder = encoders[key][1]
            module, weight, vocab_size = originals[key]
            module.weight.data = weight
            module.num_embeddings = weight.shape[0]
            encoder.set_input_embeddings(module)
            encoder.config.vocab_size = vocab_size
