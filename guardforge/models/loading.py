"""Loading a registry entry into a diffusers pipeline, offline: diffusers folders and single .safetensors files."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from guardforge.errors import InvalidRequest, UnsafeModelFormat
from guardforge.models.families import family_from_keys

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DiffusionPipeline

    from guardforge.models.registry import ModelEntry
    from guardforge.settings import Settings

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"
# Family -> the shipped config folder from_single_file reads instead of downloading one.
SHIPPED_CONFIGS = {"sd1": "sd15", "sdxl": "sdxl"}
# Where each family's configs would come from, for the message when we do not ship them.
_MISSING_CONFIGS = {
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "flux": "black-forest-labs/FLUX.1-dev",
}
_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _assets_version(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size}\n".encode())
    for name in _TOKENIZER_FILES:
        digest.update(f"{name}:{(CONFIGS_DIR / 'clip' / f'{name}.gz').stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def shipped_config_name(family: str) -> str:
    """The shipped config set for single files of `family`, or InvalidRequest saying what to do instead."""
    name = SHIPPED_CONFIGS.get(family)
    if name is None:
        repo = _MISSING_CONFIGS.get(family)
        hint = (f"guardforge does not ship the {family} configs ({repo}: model_index.json, the component "
                "configs and tokenizers)" if repo else f"the checkpoint's family is {family!r}")
        raise InvalidRequest(
            f"cannot load a single-file {family} checkpoint offline: {hint}. Use a diffusers folder instead "
            "(save one with DiffusionPipeline.save_pretrained on a connected machine, or convert with "
            "diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py) and put it in Stable-diffusion/"
        )
    return name


def check_checkpoint(entry: ModelEntry, settings: Settings, shipped_configs: bool = True) -> None:
    """Everything load_pipeline would refuse, decided from the registry entry alone (no weights read), so a
    request naming such a model fails when it is submitted rather than in the worker. `shipped_configs`
    False: the caller brings its own single-file config folder, so the family needs none of ours."""
    if entry.kind != "checkpoint":
        raise InvalidRequest(f"{entry.name!r} is a {entry.kind}, not a checkpoint")
    check_loadable(entry, settings)
    if shipped_configs and entry.format != "diffusers" and not (entry.is_pickle and entry.family == "unknown"):
        shipped_config_name(entry.family)


def check_vae(entry: ModelEntry, settings: Settings) -> None:
    """What load_vae would refuse, decided from the registry entry alone, so that a request naming such a VAE
    fails when it is submitted rather than in the worker."""
    if entry.kind != "vae":
        raise InvalidRequest(f"{entry.name!r} is a {entry.kind}, not a VAE")
    check_loadable(entry, settings)


def config_folder(family: str, settings: Settings) -> Path:
    """A local diffusers-layout config folder for `family` (configs + tokenizers, no weights).

    The package ships the JSON configs and one gzipped CLIP vocabulary; the first call unpacks them
    under settings.home/cache/configs/ so that from_single_file(config=...) never touches the network.
    """
    name = shipped_config_name(family)
    source = CONFIGS_DIR / name
    target = settings.home / "cache" / "configs" / name
    version = _assets_version(source)
    marker = target / ".version"
    complete = all((t / f).is_file() for t in target.glob("tokenizer*") for f in _TOKENIZER_FILES)
    if marker.is_file() and marker.read_text() == version and complete:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    shutil.copytree(source, staging, dirs_exist_ok=True)
    for tokenizer in staging.glob("tokenizer*"):
        for file in _TOKENIZER_FILES:
            (tokenizer / file).write_bytes(gzip.decompress((CONFIGS_DIR / "clip" / f"{file}.gz").read_bytes()))
    (staging / ".version").write_text(version)
    # Swap in the complete folder in one rename so a concurrent reader never sees half of it.
    old = None
    if target.exists():
        old = target.with_name(f".{name}-old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race with the same files
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def pickle_message(entry: ModelEntry, models_dir: Path | None = None) -> str:
    src = entry.path.name
    dst = entry.path.with_suffix(".safetensors").name
    # The folder inside the models folder: API callers see this message, and the server's paths are its own.
    folder = entry.path.parent
    if models_dir is not None and folder.is_relative_to(models_dir):
        folder = f"the models folder's {folder.relative_to(models_dir).as_posix()}/"
    return (
        f"{entry.name!r} is a pickle checkpoint ({entry.path.suffix}): unpickling can run arbitrary code hidden in "
        f"the file, so guardforge refuses it. Convert it once to safetensors, in {folder}: "
        f"python -c \"import torch, safetensors.torch as st; sd = torch.load('{src}', map_location='cpu', "
        f"weights_only=True); sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() for k, v in "
        f"sd.items() if isinstance(v, torch.Tensor)}}, '{dst}')\" (weights_only=True loads tensors and refuses "
        "code), then remove the pickle. If you trust the file, set GUARDFORGE_ALLOW_PICKLE=true."
    )


def check_loadable(entry: ModelEntry, settings: Settings) -> None:
    """Refuse pickle checkpoints unless settings.allow_pickle."""
    if entry.is_pickle and not settings.allow_pickle:
        raise UnsafeModelFormat(pickle_message(entry, settings.resolved_models_dir))


def _single_file_family(entry: ModelEntry) -> str:
    if entry.family != "unknown" or not entry.is_pickle:
        return entry.family
    # Only reached with allow_pickle: the user has chosen to trust this file.
    import torch

    state = torch.load(entry.path, map_location="cpu", mmap=True, weights_only=False)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return family_from_keys(state)


def _dtype_kwargs(torch_dtype: torch.dtype | None) -> dict:
    # diffusers renamed `torch_dtype` to `dtype` (and warns on the old name); older releases know only the old.
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": torch_dtype}
    return {"dtype": torch_dtype}


def _pipeline_class(family: str) -> type[DiffusionPipeline]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return {"sd1": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[family]


def load_vae(entry: ModelEntry, settings: Settings, family: str, torch_dtype: torch.dtype | None = None,
             config_dir: Path | None = None) -> AutoencoderKL:
    """A VAE from the VAE folder: a diffusers folder, or a single file (A1111's format) read with the VAE config
    in `config_dir`'s vae/ (by default the family's shipped one)."""
    from diffusers import AutoencoderKL

    check_loadable(entry, settings)
    if entry.format == "diffusers":
        return AutoencoderKL.from_pretrained(entry.path, local_files_only=True, **_dtype_kwargs(torch_dtype))
    config = config_dir or config_folder(family, settings)
    return AutoencoderKL.from_single_file(str(entry.path), config=str(config), subfolder="vae",
                                          local_files_only=True, **_dtype_kwargs(torch_dtype))



def _follow_hub_progress_bar_switch() -> None:
    """transformers and huggingface_hub hide their progress bars when HF_HUB_DISABLE_PROGRESS_BARS is set (the
    CLI sets it unless the user did); diffusers has no such switch for its "Loading pipeline components" bar."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():
        diffusers_logging.disable_progress_bar()


def load_pipeline(entry: ModelEntry, settings: Settings, *, torch_dtype: torch.dtype | None = None,
                  vae: ModelEntry | None = None, config_dir: Path | None = None) -> DiffusionPipeline:
    """The txt2img pipeline for a checkpoint entry, on the CPU, without network access.

    `config_dir` replaces the shipped config folder for single files (a model whose architecture is not
    the family's published one, e.g. a small test model); `vae` replaces the checkpoint's own VAE.
    """
    from diffusers import DiffusionPipeline

    _follow_hub_progress_bar_switch()
    check_checkpoint(entry, settings, shipped_configs=config_dir is None)
    if entry.format == "diffusers":
        family = entry.family
        index = (entry.path / "model_index.json").read_text()
        extra = {}
        if '"safety_checker"' in index:
            # Our guard checks every output; diffusers' own checker would only blacken images silently.
            extra = {"safety_checker": None, "requires_safety_checker": False}
        pipe = DiffusionPipeline.from_pretrained(entry.path, local_files_only=True, **_dtype_kwargs(torch_dtype),
                                                 **extra)
    else:
        family = _single_file_family(entry)
        config = config_dir or config_folder(family, settings)
        pipe = _pipeline_class(family).from_single_file(
            str(entry.path), config=str(config), local_files_only=True, **_dtype_kwargs(torch_dtype),
        )
    if vae is not None:
        # A replacement VAE must fit the checkpoint's latents. A diffusers checkpoint's own vae/config.json says
        # what they are (its scaling factor, SDXL's upcasting, a non-standard architecture), where the family's
        # shipped config is only the published one, and exists for SD 1.x and SDXL alone.
        own = entry.path if entry.format == "diffusers" and (entry.path / "vae" / "config.json").is_file() else None
        pipe.vae = load_vae(vae, settings, family, torch_dtype=torch_dtype, config_dir=own or config_dir)
        pipe.register_modules(vae=pipe.vae)
    return pipe
