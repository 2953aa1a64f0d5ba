"""Class images for prior preservation, made by the base model and screened like any output (the caller's
`generate_class_image`, see services.py).

Image i is made with seed `seed + i`. When the guard blocks it (or would blur it: a blurred image is no
class example), the next candidate seed for that index is `seed + i + k * count`, k = 1, 2, ... so that
candidates never collide with another index's seed. Files are named by index (class-00007.png); those on
disk are reused, so a re-run only fills the gaps and gives the same files. manifest.json records the recipe
(prompt, model, size, sampler settings, base seed), the seed behind every file and the seeds the guard
refused. Files the manifest does not list are the user's own class images and are reused as they are; files it
lists under another recipe are refused rather than silently mixed into this run's prior.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event

from guardforge.engine.request import GenerationRequest
from guardforge.errors import Cancelled, GuardforgeError, InvalidRequest
from guardforge.train.dreambooth.services import GenerateClassImage, ModelHash

MANIFEST = "manifest.json"
MAX_TRIES_PER_IMAGE = 8


def class_image_name(index: int) -> str:
    return f"class-{index:05d}.png"


@dataclass
class ClassImageReport:
    paths: list[Path]
    generated: list[int] = field(default_factory=list)  # indices made in this call
    reused: list[int] = field(default_factory=list)
    refused_seeds: dict[int, list[int]] = field(default_factory=dict)  # index -> seeds the guard blocked


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a torn write: the images themselves are still valid, only the record is lost
    return {"images": {}, "refused": {}}


def _check_recipe(folder: Path, manifest: dict, recipe: dict) -> None:
    """Refuse class images this module made under another recipe: they would teach the wrong prior."""
    recorded = manifest.get("recipe")
    ours = [name for name in manifest["images"] if (folder / name).is_file()]
    if recorded is None or recorded == recipe or not ours:
        return
    changed = ", ".join(f"{key} {recorded.get(key)!r} -> {recipe[key]!r}" for key in recipe
                        if recorded.get(key) != recipe[key])
    raise InvalidRequest(f"{folder} holds {len(ours)} class images made with other settings ({changed}); "
                         "set class_data_dir to another folder, or delete them to have them remade")


def _write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(folder / MANIFEST)


def ensure_class_images(generate_class_image: GenerateClassImage, model_hash: ModelHash, *, folder: Path,
                        count: int, prompt: str, model: str, resolution: int, seed: int = 0,
                        sampler: str = "Euler a", steps: int = 25, cfg_scale: float = 7.0, negative_prompt: str = "",
                        on_image: Callable[[int, int], None] | None = None,
                        cancel: Event | None = None) -> ClassImageReport:
    """Make sure class-00000.png .. class-{count-1}.png exist in `folder`; generate only the missing ones."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder)
    # The model's content hash too: a model replaced under the same name makes other class images. (A
    # diffusers folder given by path is not in the registry; its images can only be the user's own.)
    from_folder = (Path(model) / "model_index.json").is_file()
    recipe = {"prompt": prompt, "negative_prompt": negative_prompt, "model": model,
              "model_hash": None if from_folder else model_hash(model),
              "resolution": resolution, "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale, "seed": seed}
    _check_recipe(folder, manifest, recipe)
    if manifest.get("recipe") not in (None, recipe):  # the old recipe's files are all gone: forget them
        manifest = {"images": {}, "refused": {}}
    manifest["recipe"] = recipe
    report = ClassImageReport(paths=[folder / class_image_name(i) for i in range(count)])
    for index, path in enumerate(report.paths):
        if path.is_file():
            report.reused.append(index)
            continue
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"class image generation cancelled at {index}/{count}; re-run to continue")
        refused = []
        for attempt in range(MAX_TRIES_PER_IMAGE):
            candidate = seed + index + attempt * count
            request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, model=model,
                                        sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=candidate,
                                        width=resolution, height=resolution)
            image = generate_class_image(request)
            if image is not None:
                tmp = path.with_suffix(".tmp.png")
                image.save(tmp)
                tmp.replace(path)  # a file named by index is always complete
                manifest["images"][path.name] = candidate
                break
            refused.append(candidate)
        else:
            raise GuardforgeError(f"the guard refused {MAX_TRIES_PER_IMAGE} class images in a row for index "
                                  f"{index} (seeds {refused}); the class prompt {prompt!r} looks unsafe")
        if refused:
            manifest["refused"][path.name] = refused
            report.refused_seeds[index] = refused
        _write_manifest(folder, manifest)
        report.generated.append(index)
        if on_image is not None:
            on_image(index + 1, count)
    return report
