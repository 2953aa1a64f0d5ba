"""IP-Adapter weights and the CLIP vision encoders they read images with, offline.

Weights: one file in models/ipadapter/ holding `image_proj.*` and `ip_adapter.*` tensors (the original
ip_adapter.safetensors / A1111's single file), or a `.bin`/`.pt` state dict {"image_proj": ..., "ip_adapter": ...}
(a pickle: only with allow_pickle). Encoders: a transformers CLIPVisionModelWithProjection folder in
models/clip_vision/<name>/ (config.json + weights). What an adapter needs of the encoder and of the UNet is read from
tensor shapes and configs, so a mismatch is refused before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from guardforge.errors import InvalidRequest, UnsafeModelFormat
from guardforge.models.loading import check_loadable

if TYPE_CHECKING:
    from guardforge.models.registry import ModelEntry, ModelRegistry
    from guardforge.settings import Settings


@dataclass(frozen=True)
class AdapterShape:
    """What an IP-Adapter file needs: the width of the encoder output it projects, whether that output is the
    pooled projection (image_embeds) or the penultimate hidden states (the "plus" adapters), the UNet's
    cross-attention width, and how many cross-attention layers it patches."""

    kind: str  # "ImageProjection" | "IPAdapterPlus" | "IPAdapterFull"
    embed_dim: int
    hidden_states: bool
    cross_attention_dim: int
    layers: int


def _shape_of(names_and_shapes: dict[str, tuple[int, ...]], name: str) -> AdapterShape:
    proj = {k[len("image_proj."):]: v for k, v in names_and_shapes.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in names_and_shapes.items() if k.startswith("ip_adapter.")}
    if not proj or not ip:
        raise InvalidRequest(f"{name!r} is not an IP-Adapter: it has no image_proj and ip_adapter weights")
    if any("lora" in key for key in ip) or "perceiver_resampler.proj_in.weight" in proj:
        raise InvalidRequest(f"{name!r} is an IP-Adapter FaceID model; guardforge runs the image-prompt adapters "
                             "(ip-adapter_sd15, _plus, _full_face, ip-adapter_sdxl, _vit-h), not FaceID")
    keys = [k for k in ip if k.endswith("to_k_ip.weight")]
    if not keys:
        raise InvalidRequest(f"{name!r} has no to_k_ip weights: not an IP-Adapter diffusers can load")
    cross = ip[keys[0]][-1]
    if "proj.weight" in proj:
        return AdapterShape("ImageProjection", proj["proj.weight"][-1], False, cross, len(keys))
    if "proj.3.weight" in proj:
        return AdapterShape("IPAdapterFull", proj["proj.0.weight"][-1], True, cross, len(keys))
    if "latents" in proj and "proj_in.weight" in proj:
        return AdapterShape("IPAdapterPlus", proj["proj_in.weight"][-1], True, cross, len(keys))
    raise InvalidRequest(f"{name!r}: its image_proj layout ({', '.join(sorted(proj)[:4])}, ...) is not one "
                         "guardforge knows (ip-adapter, plus, full face)")


def adapter_shape(entry: ModelEntry, settings: Settings) -> AdapterShape:
    """The shape of an IP-Adapter entry, read from its header (safetensors) or its tensors (a pickle, allowed)."""
    if entry.kind != "ipadapter":
        raise InvalidRequest(f"{entry.name!r} is a {entry.kind}, not an IP-Adapter")
    check_loadable(entry, settings)
    if entry.format != "single_file":
        raise InvalidRequest(f"IP-Adapter {entry.name!r} is a folder; put the adapter's single file "
                             "(ip-adapter_sd15.safetensors, ip_adapter.bin, ...) in models/ipadapter/")
    if entry.path.suffix.lower() == ".safetensors":
        from guardforge.models.families import _shape, read_safetensors_header

        try:
            header = read_safetensors_header(entry.path)
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"IP-Adapter {entry.name!r} is not a readable safetensors file: {exc}") from None
        return _shape_of({k: tuple(_shape(v)) for k, v in header.items() if k != "__metadata__"}, entry.name)
    state = _read_pickle(entry)
    return _shape_of({k: tuple(v.shape) for k, v in _flat(state).items()}, entry.name)


def _read_pickle(entry: ModelEntry) -> dict:
    import torch

    # weights_only: an IP-Adapter .bin is a dict of tensors; nothing in it needs arbitrary unpickling.
    try:
        state = torch.load(entry.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's, reported as such
        raise InvalidRequest(f"IP-Adapter {entry.name!r} could not be read as a tensor state dict: {exc}") from None
    if not isinstance(state, dict):
        raise InvalidRequest(f"IP-Adapter {entry.name!r} holds a {type(state).__name__}, not a state dict")
    return state


def _flat(state: dict) -> dict:
    """{"image_proj": {...}, "ip_adapter": {...}} as one dict of prefixed names (the single file's layout)."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def load_adapter_state(entry: ModelEntry, settings: Settings) -> dict:
    """The state dict diffusers' load_ip_adapter takes: {"image_proj": {...}, "ip_adapter": {...}}."""
    adapter_shape(entry, settings)
    if entry.path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(entry.path))
    else:
        flat = _flat(_read_pickle(entry))
    state: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix in state:
            state[prefix][rest] = value
    return state


# -- encoders ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderShape:
    projection_dim: int
    hidden_size: int
    image_size: int


def encoder_shape(entry: ModelEntry) -> EncoderShape:
    if entry.kind != "clip_vision":
        raise InvalidRequest(f"{entry.name!r} is a {entry.kind}, not a CLIP vision encoder")
    if entry.format != "diffusers":
        raise InvalidRequest(f"image encoder {entry.name!r} is a single file; guardforge reads a transformers "
                             "CLIPVisionModelWithProjection folder (config.json + model.safetensors) in "
                             "models/clip_vision/<name>/")
    try:
        config = json.loads((entry.path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"image encoder {entry.name!r}: config.json is not readable: {exc}") from None
    vision = config.get("vision_config", config)  # a full CLIPModel's config nests it
    try:
        return EncoderShape(int(config.get("projection_dim", vision.get("projection_dim"))),
                            int(vision["hidden_size"]), int(vision.get("image_size", 224)))
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest(f"image encoder {entry.name!r}: config.json has no hidden_size and projection_dim; "
                             "it is not a CLIP vision model's config") from None


def encoder_width(shape: EncoderShape, adapter: AdapterShape) -> int:
    return shape.hidden_size if adapter.hidden_states else shape.projection_dim


def pick_encoder(registry: ModelRegistry, settings: Settings, adapter_name: str, adapter: AdapterShape,
                 name: str | None) -> ModelEntry:
    """The encoder `name` means, refused if its output does not fit the adapter or its files cannot be read; None:
    the first usable one in models/clip_vision/ that fits (ViT-H and ViT-bigG differ in width, so the fit tells
    them apart)."""
    if name is not None:
        entry = registry.resolve(name, kind="clip_vision")
        shape = encoder_shape(entry)
        if encoder_width(shape, adapter) != adapter.embed_dim:
            raise InvalidRequest(
                f"image encoder {entry.name!r} does not fit IP-Adapter {adapter_name!r}: the adapter reads "
                f"{adapter.embed_dim}-wide {'hidden states' if adapter.hidden_states else 'image embeddings'}, the "
                f"encoder gives {encoder_width(shape, adapter)} (ip-adapter_sd15 and _vit-h read ViT-H, "
                "ip-adapter_sdxl reads ViT-bigG)")
        check_encoder_files(entry, settings)
        return entry
    candidates = registry.list("clip_vision")
    for entry in candidates:
        try:
            if encoder_width(encoder_shape(entry), adapter) == adapter.embed_dim:
                check_encoder_files(entry, settings)
                return entry
        except (InvalidRequest, UnsafeModelFormat):
            continue
    found = ", ".join(e.name for e in candidates) or "none"
    raise InvalidRequest(
        f"IP-Adapter {adapter_name!r} needs a CLIP vision encoder giving {adapter.embed_dim}-wide "
        f"{'hidden states' if adapter.hidden_states else 'image embeddings'}; none in the models folder's "
        f"clip_vision/ fits (found: {found}). Put a transformers CLIPVisionModelWithProjection folder there, e.g. "
        "clip_vision/clip_h/ (h94/IP-Adapter's models/image_encoder) for ip-adapter_sd15")


def check_encoder_files(entry: ModelEntry, settings: Settings) -> None:
    """Refuse, before anything is queued, an encoder folder without weights, or with pickle weights alone unless
    allow_pickle."""
    suffixes = {p.suffix for p in entry.path.iterdir() if p.name.startswith(("model", "pytorch_model"))}
    if ".safetensors" in suffixes:
        return
    if ".bin" not in suffixes:
        raise InvalidRequest(f"image encoder {entry.name!r} has no weights: clip_vision/{entry.name}/ needs "
                             "model.safetensors beside its config.json")
    if not settings.allow_pickle:
        raise UnsafeModelFormat(f"image encoder {entry.name!r} has only pickle weights (pytorch_model.bin); save them "
                                "as model.safetensors, or set allow_pickle if you trust the file")


def load_encoder(entry: ModelEntry, settings: Settings, torch_dtype=None):
    """The encoder and the image processor it expects (its preprocessor_config.json, else CLIP's at its size)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    shape = encoder_shape(entry)
    check_encoder_files(entry, settings)
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    model = CLIPVisionModelWithProjection.from_pretrained(entry.path, local_files_only=True,
                                                          use_safetensors=not settings.allow_pickle or None,
                                                          **kwargs)
    if (entry.path / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(entry.path, local_files_only=True)
    else:
        processor = CLIPImageProcessor(size=shape.image_size, crop_size=shape.image_size)
    return model.eval().requires_grad_(False), processor
