"""Loading a registry entry of kind `controlnet`, offline: diffusers folders and single .safetensors files.

Single files come in two layouts: the original one (lllyasviel's control_v11p_sd15_canny.safetensors: LDM keys,
`input_blocks...`, `zero_convs...`, sometimes under `control_model.`), read by diffusers' from_single_file with
the family's shipped config; and diffusers' own keys (a folder's diffusion_pytorch_model.safetensors renamed, as
many SDXL ControlNets are published), read with a `<name>.json` config beside the file or, without one, the
family's shipped config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from guardforge.errors import InvalidRequest
from guardforge.models.loading import _dtype_kwargs, check_loadable, config_folder

if TYPE_CHECKING:
    import torch
    from diffusers import ModelMixin

    from guardforge.models.registry import ModelEntry
    from guardforge.settings import Settings

# The ControlNet classes guardforge runs, by the _class_name of a diffusers folder's config.json.
CONTROLNET_CLASSES = ("ControlNetModel",)
_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def _folder_class(entry: ModelEntry) -> str:
    try:
        return str(json.loads((entry.path / "config.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def _beside_config(entry: ModelEntry) -> Path | None:
    config = entry.path.with_suffix(".json")
    return config if config.is_file() else None


def single_file_layout(keys) -> tuple[str, str]:
    """("diffusers" | "ldm", family) of a single ControlNet file, from its tensor names and one shape."""
    from guardforge.models.families import _shape

    names = list(keys)
    layout = "diffusers" if any(k.startswith("controlnet_cond_embedding.") for k in names) else "ldm"
    family = "unknown"
    width_key = next((k for k in names if k.endswith("attn2.to_k.weight")), None)
    if width_key is not None:
        family = _WIDTH_FAMILY.get(_shape(keys[width_key])[-1], "unknown")
    return layout, family


def check_controlnet(entry: ModelEntry, settings: Settings) -> None:
    """What load_controlnet would refuse, decided without reading weights, so a request fails at submit."""
    if entry.kind != "controlnet":
        raise InvalidRequest(f"{entry.name!r} is a {entry.kind}, not a ControlNet")
    check_loadable(entry, settings)
    if entry.format == "diffusers":
        name = _folder_class(entry)
        if name not in CONTROLNET_CLASSES:
            raise InvalidRequest(f"ControlNet {entry.name!r} is a {name or 'folder without a readable config.json'}; "
                                 "guardforge runs ControlNetModel (SD 1.x and SDXL; not yet the union, SD3 or Flux "
                                 "ControlNets)")
    elif entry.path.suffix == ".safetensors" and _beside_config(entry) is None:
        from guardforge.models.families import read_safetensors_header
        from guardforge.models.loading import shipped_config_name

        try:
            _, family = single_file_layout(read_safetensors_header(entry.path))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"ControlNet {entry.name!r} is not a readable safetensors file: {exc}") from None
        try:
            shipped_config_name(family)
        except InvalidRequest:
            raise InvalidRequest(
                f"cannot tell which architecture ControlNet {entry.name!r} has (its family reads as {family!r}) and "
                f"there is no {entry.path.with_suffix('.json').name} (its diffusers config.json) beside it; "
                "put the config there, or use a diffusers folder") from None


def load_controlnet(entry: ModelEntry, settings: Settings, torch_dtype: torch.dtype | None = None) -> ModelMixin:
    """The ControlNet model of an entry, on the CPU, without network access."""
    import diffusers

    check_controlnet(entry, settings)
    if entry.format == "diffusers":
        cls = getattr(diffusers, _folder_class(entry))
        return cls.from_pretrained(entry.path, local_files_only=True, **_dtype_kwargs(torch_dtype))
    if entry.is_pickle:  # only with allow_pickle: the user chose to trust the file
        import torch

        state = torch.load(entry.path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
    else:
        from safetensors.torch import load_file

        state = load_file(str(entry.path))
    layout, family = single_file_layout(state)
    beside = _beside_config(entry)
    if layout == "diffusers":
        config = (json.loads(beside.read_text()) if beside else
                  json.loads((config_folder(family, settings) / "controlnet" / "config.json").read_text()))
        cls = getattr(diffusers, config.get("_class_name", "ControlNetModel"), None)
        if config.get("_class_name", "ControlNetModel") not in CONTROLNET_CLASSES or cls is None:
            raise InvalidRequest(f"ControlNet {entry.name!r}: its config names {config.get('_class_name')!r}; "
                                 f"guardforge runs {' and '.join(CONTROLNET_CLASSES)}")
        from accelerate import init_empty_weights

        # Built without weights, then given the file's tensors: an SDXL ControlNet's random initialisation alone
        # took most of a minute on two cores. (The caller holds the cache's reading lock: init_empty_weights
        # patches torch.nn.Module process-wide while it runs.)
        with init_empty_weights():
            model = cls.from_config(config)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise InvalidRequest(f"ControlNet {entry.name!r} does not fit its config: {len(missing)} weights missing "
                                 f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
        return model.to(dtype=torch_dtype) if torch_dtype is not None else model
    del state
    from diffusers import ControlNetModel

    if beside is not None:
        import shutil
        import tempfile

        # from_single_file reads a config folder, not a file: a throwaway folder holding the one beside the model.
        with tempfile.TemporaryDirectory(prefix="guardforge-controlnet-") as folder:
            shutil.copy(beside, Path(folder) / "config.json")
            return ControlNetModel.from_single_file(str(entry.path), config=folder, local_files_only=True,
                                                    **_dtype_kwargs(torch_dtype))
    return ControlNetModel.from_single_file(str(entry.path), config=str(config_folder(family, settings)),
                                            subfolder="controlnet", local_files_only=True,
                                            **_dtype_kwargs(torch_dtype))


_FIT_KEYS = ("cross_attention_dim", "block_out_channels", "in_channels", "addition_embed_type")


def _fit(config: dict | None, unet: bool = False) -> tuple | None:
    if not config:
        return None
    if unet:
        # The latent the ControlNet reads is the UNet's output width: a 9-channel inpainting UNet takes the
        # latent plus mask and masked image, yet SD's 4-channel ControlNets steer it.
        config = {**config, "in_channels": config.get("out_channels", config.get("in_channels"))}
    return tuple(tuple(v) if isinstance(v, list) else v for v in (config.get(k) for k in _FIT_KEYS))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def controlnet_shape(entry: ModelEntry) -> tuple | None:
    """What a ControlNet needs of the UNet it steers, from its config alone (None when it cannot be told)."""
    from guardforge.models.loading import CONFIGS_DIR, SHIPPED_CONFIGS

    if entry.format == "diffusers":
        return _fit(_read_json(entry.path / "config.json"))
    beside = _beside_config(entry)
    if beside is not None:
        return _fit(_read_json(beside))
    if entry.path.suffix != ".safetensors":
        return None
    from guardforge.models.families import read_safetensors_header

    try:
        _, family = single_file_layout(read_safetensors_header(entry.path))
    except (OSError, ValueError):
        return None
    name = SHIPPED_CONFIGS.get(family)
    return _fit(_read_json(CONFIGS_DIR / name / "controlnet" / "config.json")) if name else None


def unet_shape(checkpoint: ModelEntry) -> tuple | None:
    """The same of a checkpoint's UNet, from its configs alone (None: no UNet config to read)."""
    from guardforge.models.loading import CONFIGS_DIR, SHIPPED_CONFIGS

    if checkpoint.format == "diffusers":
        return _fit(_read_json(checkpoint.path / "unet" / "config.json"), unet=True)
    name = SHIPPED_CONFIGS.get(checkpoint.family)
    return _fit(_read_json(CONFIGS_DIR / name / "unet" / "config.json"), unet=True) if name else None


def check_fits(controlnet: ModelEntry, checkpoint: ModelEntry) -> None:
    """Refuse, from the configs alone, a ControlNet made for another architecture than the checkpoint's UNet, so
    that the request fails at the door (a 4xx) rather than in the worker; the engine checks the loaded models too."""
    theirs, ours = controlnet_shape(controlnet), unet_shape(checkpoint)
    if theirs is None or ours is None or theirs == ours:
        return
    raise InvalidRequest(
        f"ControlNet {controlnet.name!r} does not fit checkpoint {checkpoint.name!r}: it was made for a UNet with "
        f"cross-attention {theirs[0]}, blocks {list(theirs[1] or [])}, {theirs[2]} latent channels, the "
        f"checkpoint's has {ours[0]}, {list(ours[1] or [])}, {ours[2]} (an SD 1.x ControlNet needs an SD 1.x "
        "checkpoint, an SDXL one SDXL)")
