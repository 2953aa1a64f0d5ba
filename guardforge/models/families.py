"""Which model family a checkpoint belongs to, from safetensors header keys or diffusers folder configs."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

Family = Literal["sd1", "sd2", "sdxl", "sd3", "flux", "unknown"]
FAMILIES: tuple[Family, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux", "unknown")

# Safetensors headers are small; anything claiming more than this is not a safetensors file.
_MAX_HEADER = 100 * 1024 * 1024

# Cross-attention width of the UNet tells SD 1.x (CLIP ViT-L, 768) from SD 2.x (OpenCLIP ViT-H, 1024).
_SD_ATTN2_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_CROSS_ATTENTION_FAMILY: dict[int, Family] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor names -> {dtype, shape, data_offsets}, read from the header alone (no tensor is loaded)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise ValueError(f"{path} has an implausible safetensors header of {length} bytes")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def family_from_keys(header: Mapping[str, object]) -> Family:
    """Family of a single-file checkpoint (or LoRA) from its tensor names; shapes when names are shared.

    `header` maps tensor names to safetensors header records ({"shape": [...]}) or to tensors.
    """
    keys = list(header)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("double_blocks.") or has("model.diffusion_model.double_blocks.") or has("lora_unet_double_blocks"):
        return "flux"
    if has("model.diffusion_model.joint_blocks.") or has("joint_blocks."):
        return "sd3"
    # SDXL base has CLIP-L as embedder 0 and OpenCLIP bigG as embedder 1; the refiner only the latter at 0.
    if (has("conditioner.embedders.1.") or has("conditioner.embedders.0.model.") or has("lora_te2_")
            or has("text_encoder_2.")):
        return "sdxl"
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    if _SD_ATTN2_KEY in header:
        width = _shape(header[_SD_ATTN2_KEY])[-1]
        return _CROSS_ATTENTION_FAMILY.get(width, "unknown")
    return _lora_family(header)


_LORA_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight")


def _lora_family(header: Mapping[str, object]) -> Family:
    """A LoRA's family from the input width of the layers it adapts (kohya or diffusers/PEFT names)."""
    for key, record in header.items():
        # Cross-attention keys take the text width: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL.
        if "attn2" in key and "to_k" in key and key.endswith(_LORA_DOWN):
            return _CROSS_ATTENTION_FAMILY.get(_shape(record)[-1], "unknown")
    for key, record in header.items():
        # Text encoder only: CLIP ViT-L (768) is SD 1.x, OpenCLIP ViT-H (1024) SD 2.x.
        if (key.startswith(("lora_te_", "text_encoder.")) and "q_proj" in key and key.endswith(_LORA_DOWN)):
            return {768: "sd1", 1024: "sd2"}.get(_shape(record)[-1], "unknown")
    return "unknown"


def _shape(record: object) -> list[int]:
    if isinstance(record, Mapping):
        return list(record.get("shape", [0]))
    return list(getattr(record, "shape", [0]))


def family_of_file(path: Path) -> Family:
    """Family of a .safetensors file; pickle files are not opened here (unpickling can run code)."""
    if path.suffix != ".safetensors":
        return "unknown"
    try:
        return family_from_keys(read_safetensors_header(path))
    except (OSError, ValueError):
        return "unknown"


def _config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def family_from_folder(folder: Path) -> Family:
    """Family of a diffusers folder from model_index.json, the UNet's cross-attention width or the transformer."""
    index = _config(folder / "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    if "Flux" in pipeline:
        return "flux"
    if "StableDiffusion3" in pipeline:
        return "sd3"
    if "XL" in pipeline:
        return "sdxl"
    transformer = str(_config(folder / "transformer" / "config.json").get("_class_name", ""))
    if transformer.startswith("Flux"):
        return "flux"
    if transformer.startswith("SD3"):
        return "sd3"
    # A bare component folder (a VAE or ControlNet) has its own config.json instead of a unet/ subfolder.
    unet = _config(folder / "unet" / "config.json") or _config(folder / "config.json")
    width = unet.get("cross_attention_dim")
    if isinstance(width, list):
        width = width[0] if width else None
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    if isinstance(width, int) and width in _CROSS_ATTENTION_FAMILY:
        return _CROSS_ATTENTION_FAMILY[width]
    # A Stable Diffusion pipeline at another width (a small model trained from scratch, like tiny-shapes)
    # still has SD 1.x's architecture: one CLIP text encoder, no added conditioning.
    if pipeline.startswith("StableDiffusion") or unet.get("_class_name") == "ControlNetModel":
        return "sd1"  # a ControlNet of SD 1.x's architecture at that width too (tiny-shapes-canny)
    return "unknown"
