"""LoRA at inference: resolve `<lora:name:te:unet>` tags in the models folder, apply them for one request, remove them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from guardforge.engine.prompts import LoraTag
from guardforge.errors import InvalidRequest, UnsafeModelFormat

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from guardforge.models.registry import ModelEntry, ModelRegistry


def merge_tags(tags: list[LoraTag]) -> list[LoraTag]:
    """One entry per LoRA: a LoRA named twice is applied once with the summed weights (LoRA deltas add up),
    the text encoder's and the UNet's each summed on its own."""
    weights: dict[str, tuple[float, float]] = {}
    for tag in tags:
        te, unet = weights.get(tag.name, (0.0, 0.0))
        weights[tag.name] = (te + tag.weight, unet + tag.unet)
    return [LoraTag(name, te, None if unet == te else unet) for name, (te, unet) in weights.items()]


def resolve_loras(registry: ModelRegistry, tags: list[LoraTag], allow_pickle: bool) -> list[tuple[ModelEntry, LoraTag]]:
    """Registry entries of kind `lora` for the tags, each with its merged tag; checked before anything is loaded."""
    resolved = []
    for tag in merge_tags(tags):
        entry = registry.resolve(tag.name, kind="lora")
        if entry.is_pickle and not allow_pickle:
            raise UnsafeModelFormat(
                f"LoRA {entry.name!r} is a pickle file ({entry.path.suffix}), which can run code when loaded; "
                "convert it to .safetensors or set allow_pickle: true")
        resolved.append((entry, tag))
    return resolved


def _component_weights(pipe: DiffusionPipeline, adapter: str, tag: LoraTag) -> dict[str, float]:
    """diffusers' per-component adapter weights: text encoders get the tag's text-encoder weight, the denoiser
    (unet or transformer) its UNet weight. Only parts the adapter has weights for are named, since diffusers
    warns about the others."""
    parts = [part for part, adapters in pipe.get_list_adapters().items() if adapter in adapters]
    return {part: tag.weight if part.startswith("text_encoder") else tag.unet for part in parts}


def _load(pipe: DiffusionPipeline, entry: ModelEntry, adapter_name: str) -> None:
    if not hasattr(pipe, "load_lora_weights"):
        raise InvalidRequest(f"{type(pipe).__name__} cannot load LoRA weights")
    if entry.path.is_dir():
        pipe.load_lora_weights(str(entry.path), adapter_name=adapter_name)
    else:
        pipe.load_lora_weights(str(entry.path.parent), weight_name=entry.path.name, adapter_name=adapter_name)


@contextmanager
def applied_loras(pipe: DiffusionPipeline, loras: list[tuple[ModelEntry, LoraTag]]) -> Iterator[list[str]]:
    """Load each LoRA as its own adapter, activate them all with their weights, and always remove them.

    The pipeline is shared between requests, so the removal runs in `finally`: the next request sees the
    base weights whether this one finished, failed or was cancelled.
    """
    if not loras:
        yield []
        return
    had_adapters = bool(getattr(pipe, "get_list_adapters", dict)())
    names: list[str] = []
    try:
        for index, (entry, _tag) in enumerate(loras):
            name = f"gf_request_{index}"
            names.append(name)  # before loading: a half-loaded adapter is removed too
            _load(pipe, entry, name)
        pipe.set_adapters(names, adapter_weights=[_component_weights(pipe, name, tag)
                                                  for name, (_, tag) in zip(names, loras, strict=True)])
        yield names
    finally:
        if names:
            if had_adapters:
                # Someone else's adapters stay; only ours go.
                present = {n for adapters in pipe.get_list_adapters().values() for n in adapters}
                ours = [n for n in names if n in present]
                if ours:
                    pipe.delete_adapters(ours)
            else:
                # Restores the original modules, not just zero-weight LoRA wrappers around them.
                pipe.unload_lora_weights()
