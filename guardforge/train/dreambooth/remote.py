"""A DreamBooth config from a remote caller, confined: its folders, its device and its size.

A config that arrives through the API names folders on the server, so every path is checked before it is
used (at submit time, and again when the job starts, since folders can change in between):

- `instance_data_dir` must be inside the training-data folder (`training.data_dir`, default
  `<home>/training-data`); a relative path is taken from there.
- `class_data_dir`, when given, must be inside the training-data folder (relative: from there) or inside the
  caller's own runs folder. Missing class images are generated into it, as on the CLI.
- `output_dir` (checkpoints, logs, validation images, class images by default) must be inside the caller's
  own runs folder `<training.runs_dir>/<owner>` (default `<home>/training-runs/<owner>`); a relative path is
  taken from there. One caller cannot touch another's runs.
- `base_model` must be a model name from the registry, not a path.
- Exports go to the models folder under `export_name`, which must not name a model file that exists already:
  a remote caller adds models, it never replaces one.

Symbolic links are followed before the check, so a link cannot lead out of a folder. The server trains on
its own single device: multi-device settings belong to `guardforge train dreambooth`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from guardforge.errors import InvalidRequest, PathEscape
from guardforge.train.dreambooth.config import DreamBoothConfig
from guardforge.train.dreambooth.export import export_targets

OWNER_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def owner_runs_dir(runs_dir: Path, owner: str) -> Path:
    if not OWNER_PATTERN.fullmatch(owner):
        raise InvalidRequest(f"owner {owner!r} cannot name a runs folder")
    return runs_dir / owner


def _resolve(path: Path, base: Path, what: str) -> Path:
    """`path` made absolute (relative ones from `base`) with symlinks and `..` resolved."""
    try:
        return (path if path.is_absolute() else base / path).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # NUL bytes, symlink loops
        raise InvalidRequest(f"{what}: not a usable path ({exc})") from None


def _inside(path: Path, roots: dict[str, Path]) -> bool:
    return any(path.is_relative_to(root.resolve()) for root in roots.values())


def confine(config: DreamBoothConfig, *, owner: str, data_dir: Path, runs_dir: Path, max_steps: int,
            max_resolution: int, max_class_images: int, device: str = "auto") -> DreamBoothConfig:
    """The config with absolute, checked paths and one device; InvalidRequest (422) naming what is wrong.

    `device` is the device of the worker that runs the job (cpu, cuda:1, mps; auto: wherever Lightning finds).

    The export name is checked separately (`check_export_name`), once everything else is known to be right.
    """
    own_runs = owner_runs_dir(runs_dir, owner)
    name = config.base_model
    if "/" in name or "\\" in name or name.startswith(".") or Path(name).is_absolute():
        raise PathEscape(f"base_model {name!r}: give the name of a model in the models folder, not a path")

    if config.max_steps > max_steps:
        raise InvalidRequest(f"max_steps={config.max_steps} is over this server's limit of {max_steps}")
    if config.resolution > max_resolution:
        raise InvalidRequest(f"resolution={config.resolution} is over this server's limit of {max_resolution}")
    if config.with_prior_preservation and config.num_class_images > max_class_images:
        raise InvalidRequest(f"num_class_images={config.num_class_images} is over this server's limit of "
                             f"{max_class_images}")
    if config.strategy != "auto" or config.num_nodes != 1 or config.devices not in ("auto", 1):
        raise InvalidRequest("the server trains on its one device: leave strategy, devices and num_nodes at "
                             "their defaults (multi-device runs are for `guardforge train dreambooth`)")

    instance = _resolve(config.instance_data_dir, data_dir, "instance_data_dir")
    if not _inside(instance, {"training-data": data_dir}):
        raise PathEscape(f"instance_data_dir {str(config.instance_data_dir)!r} leaves the training-data folder "
                         "(training.data_dir); give a folder inside it, relative to it")
    class_dir = None
    if config.class_data_dir is not None:
        class_dir = _resolve(config.class_data_dir, data_dir, "class_data_dir")
        if not _inside(class_dir, {"training-data": data_dir, "runs": own_runs}):
            raise PathEscape(f"class_data_dir {str(config.class_data_dir)!r} leaves the training-data folder and "
                             "your runs folder")
    output = _resolve(config.output_dir, own_runs, "output_dir")
    if not _inside(output, {"runs": own_runs}) or output == own_runs.resolve():
        raise PathEscape(f"output_dir {str(config.output_dir)!r} leaves your runs folder; give a folder name "
                         "such as 'sks-dog', relative to it")

    accelerator, devices = lightning_device(device, config.accelerator)
    values = {**config.model_dump(), "instance_data_dir": instance, "class_data_dir": class_dir,
              "output_dir": output, "devices": devices, "accelerator": accelerator}
    try:  # validated again: the server's device may make a setting impossible (16-mixed on the CPU)
        return DreamBoothConfig.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequest(f"on this server: {exc.errors()[0]['msg']}") from None


def lightning_device(device: str, asked: str = "auto") -> tuple[str, int | list[int]]:
    """Lightning's (accelerator, devices) for a torch device name: the job trains where its worker runs."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return "gpu", [int(index or 0)]
    if kind in ("cpu", "mps"):
        return kind, 1
    return asked, 1  # auto, or a device Lightning has no accelerator name for (xpu): its own choice


def check_export_name(config: DreamBoothConfig, models_dir: Path) -> None:
    """Refuse an export name whose files exist: through the API a model is added, never replaced."""
    targets = export_targets(models_dir, config.resolved_export_name)
    taken = [targets[fmt] for fmt in config.resolved_export_formats if targets[fmt].exists()]
    if taken:
        where = ", ".join(str(path.relative_to(models_dir)) for path in taken)
        raise InvalidRequest(f"export_name {config.resolved_export_name!r} is taken ({where} exists in the models "
                             "folder); choose another export_name")
