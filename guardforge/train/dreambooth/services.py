"""What DreamBooth training asks of the rest of guardforge, as narrow typed callables the caller hands in.

Training sits below the Studio (DESIGN.md, layers): it gets these, never the Studio. The Studio builds them
from its registry, pipeline cache, guard and `generate` with `DreamBoothServices.from_parts`; tests build them
from small functions of their own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from guardforge.engine.request import GenerationRequest, GenerationResult
from guardforge.errors import GuardforgeError


@dataclass
class BaseComponents:
    """The base model's parts, in float32 on the CPU, owned by this run (never the cache's shared copies)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any

    @classmethod
    def from_pipeline(cls, pipeline) -> BaseComponents:
        import torch

        parts = {name: getattr(pipeline, name) for name in ("unet", "vae", "text_encoder")}
        # Training writes the weights: copy, so the generation cache keeps serving the untouched base model.
        parts = {name: copy.deepcopy(module).to("cpu", dtype=torch.float32) for name, module in parts.items()}
        return cls(**parts, tokenizer=pipeline.tokenizer, scheduler=copy.deepcopy(pipeline.scheduler))

    @classmethod
    def from_folder(cls, folder: Path) -> BaseComponents:
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False)
        return cls(unet=pipeline.unet, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                   tokenizer=pipeline.tokenizer, scheduler=pipeline.scheduler)


# base_model (a diffusers folder path or a registry name) -> its parts, for this run alone.
LoadBase = Callable[[str], BaseComponents]
# A class-image request -> the image the base model made, screened as any output; None where the guard withheld
# it (blocked, or blurred: a blur is no class example). Raises GuardforgeError when the guard blocks the prompt.
GenerateClassImage = Callable[[GenerationRequest], Image.Image | None]
# A registry name -> the model's short content hash (a model replaced under its old name makes another prior).
ModelHash = Callable[[str], str]
# Image files and prompts -> None when all may be trained on; GuardforgeError naming what the guard blocked.
ScreenTrainingData = Callable[[list[Path], list[str]], None]
# Images -> each one as it may be shown (None where the guard withheld it).
ScreenOutputs = Callable[[list[Image.Image]], list[Image.Image | None]]
# Exports written into the models folder (format -> path) -> the model names they are now listed under.
RegisterExports = Callable[[dict[str, Path]], dict[str, str]]


@dataclass(frozen=True)
class DreamBoothServices:
    """All that train_dreambooth may ask of the rest of guardforge."""

    load_base: LoadBase
    generate_class_image: GenerateClassImage
    model_hash: ModelHash
    screen_training_data: ScreenTrainingData
    screen_outputs: ScreenOutputs
    register_exports: RegisterExports
    models_dir: Path  # where exports are written, for the registry to list

    @classmethod
    def from_parts(cls, *, registry, pipelines, guard, generate: Callable[..., GenerationResult], models_dir: Path,
                   device: str | None = None, replica: int = 0) -> DreamBoothServices:
        """The services of a Studio's parts. `device` and `replica` pick the model copy (a worker's own) that
        makes the class images and from which a single-file base is copied."""
        return cls(
            load_base=partial(load_base, registry, pipelines, device=device, replica=replica),
            generate_class_image=partial(generate_class_image, generate, device=device, replica=replica),
            model_hash=lambda name: registry.resolve(name).short_hash(),
            screen_training_data=partial(screen_training_data, guard),
            screen_outputs=partial(screen_outputs, guard),
            register_exports=partial(register_exports, registry),
            models_dir=models_dir)


def load_base(registry, pipelines, name: str, *, device: str | None = None, replica: int = 0) -> BaseComponents:
    """A diffusers folder path, or a registry name (diffusers folder or single file via the model loader).

    A single file comes through the worker's own cached copy (`device`, `replica`), copied under its lock: the
    copy must not race a generation on that pipeline, nor load into another worker's slot."""
    path = Path(name)
    if (path / "model_index.json").is_file():
        return BaseComponents.from_folder(path)
    entry = registry.resolve(name)
    if entry.format == "diffusers":
        return BaseComponents.from_folder(entry.path)
    loaded = pipelines.get(entry.name, device=device, replica=replica)
    with loaded.lock:
        return BaseComponents.from_pipeline(loaded.pipeline)


def generate_class_image(generate: Callable[..., GenerationResult], request: GenerationRequest, *,
                         device: str | None = None, replica: int = 0) -> Image.Image | None:
    """One class image through `generate` (the Studio's: prompt and output guarded), not saved to the outputs."""
    result = generate(request, save=False, device=device, replica=replica)
    if result.blocked:
        raise GuardforgeError(f"the guard blocked the class prompt {request.prompt!r}; choose another class_prompt")
    image = result.images[0]
    return image.pil if image.action in ("allow", "flag") else None


def screen_training_data(guard, image_paths: list[Path], prompts: list[str]) -> None:
    """Every image (instance, or class images found on disk) and prompt through the guard before any step; a
    block stops the job, naming why."""
    from guardforge.train.dreambooth.data import load_rgb

    images = [(path.name, load_rgb(path)) for path in image_paths]
    verdicts = guard.check_training_data(images, prompts)
    names = [path.name for path in image_paths] + [f"prompt {prompt!r}" for prompt in prompts]
    blocked = [f"{name} ({', '.join(verdict.violated) or verdict.error or 'unsafe'})"
               for name, verdict in zip(names, verdicts) if verdict.action == "block"]
    if blocked:
        raise GuardforgeError(f"the guard blocked the training data, nothing was trained: {'; '.join(blocked)}")


def screen_outputs(guard, images: list[Image.Image]) -> list[Image.Image | None]:
    verdicts = guard.check_output_images(images)
    return [guard.enforce(image, verdict) for image, verdict in zip(images, verdicts, strict=True)]


def register_exports(registry, exports: dict[str, Path]) -> dict[str, str]:
    """Rescan the models folder, so the exports are listed without a restart, and name each one."""
    registry.refresh()
    by_path = {entry.path.resolve(): entry.name for entry in registry.list()}
    return {fmt: by_path[path.resolve()] for fmt, path in exports.items() if path.resolve() in by_path}
