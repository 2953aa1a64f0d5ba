"""Checkpoint merging as A1111's checkpoint merger does it (and per UNet block), streamed tensor by tensor."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from guardforge.errors import InvalidRequest, UnsafeModelFormat
from guardforge.models.families import _MAX_HEADER
from guardforge.models.hashing import WEIGHT_SUFFIXES, legacy_hash, weight_files
from guardforge.models.registry import KIND_FOLDERS, check_name

if TYPE_CHECKING:
    import torch

    from guardforge.models.registry import ModelEntry, ModelRegistry

MergeMode = Literal["weighted_sum", "add_difference"]
# A1111's names for the modes: its recipes and its UI say "Weighted sum" and "Add difference".
INTERP_METHODS: dict[str, str] = {"weighted_sum": "Weighted sum", "add_difference": "Add difference"}

# One name part: what A1111's own default merge names use (letters, digits, spaces, `.()+,-_`), and nothing a
# shell, a URL or Windows would read as something else. Parts may not start with `.`: the registry skips those.
_NAME_PART = re.compile(r"[\w()+\-][\w .()+,\-]*")
_MAX_NAME = 160
_MAX_REGEX = 200
# A repeated group that itself holds a repetition, the shape of catastrophic backtracking.
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[*+}][^()]*\)[*+{]")

# safetensors dtype names -> (torch dtype name, bytes per element).
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_MERGED_DTYPES = ("F64", "F32", "F16", "BF16")  # integer buffers (position ids) are copied from A, never averaged

# Block-weighted merges (the "Merge Block Weighted" extension, supermerger): one weight per UNet block, in the
# order IN00.., M00, OUT00..; SD 1.x has 25, SDXL 19. The time embedding counts as IN00 and the UNet's output
# layers as the last OUT block, as that extension counts them; everything else (text encoders, VAE, SDXL's
# label embedding) takes the base alpha.
_LDM_UNET = "model.diffusion_model."
_LDM_IN = re.compile(r"^input_blocks\.(\d+)\.")
_LDM_OUT = re.compile(r"^output_blocks\.(\d+)\.")
_DIFFUSERS_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.")
_DIFFUSERS_UP = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.")


class MergeRequest(BaseModel):
    """A merge of checkpoints of one family: `weighted_sum` A*(1-alpha) + B*alpha, or `add_difference`
    A + (B - C)*alpha, optionally with one alpha per UNet block (`block_weights`)."""

    model_config = ConfigDict(extra="forbid")

    primary: str = Field(..., min_length=1, description="Model A: its keys, dtypes and configs are the result's")
    secondary: str = Field(..., min_length=1, description="Model B")
    tertiary: str | None = Field(None, description="Model C, subtracted from B (add_difference only)")
    mode: MergeMode = "weighted_sum"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="A1111's multiplier M; the base alpha with block_weights")
    block_weights: list[float] | None = Field(
        None, description="One alpha per UNet block, IN00.. M00 OUT00.. (25 for SD 1.x, 19 for SDXL)")
    name: str | None = Field(None, max_length=_MAX_NAME, description="Output name in Stable-diffusion/; "
                             "default A1111's, e.g. '0.7(a) + 0.3(b)'")
    fp16: bool = Field(False, description="Save float32 tensors as float16 (A1111's save_as_half)")
    bake_in_vae: str | None = Field(None, description="A VAE from models/VAE/ whose weights replace the result's "
                                    "VAE (A1111's 'Bake in VAE'): a single file for single files, a folder for "
                                    "folders")
    discard_weights: str = Field("", max_length=_MAX_REGEX,
                                 description="Regular expression: tensors whose names it matches are left out")
    overwrite: bool = Field(False, description="Replace a model of that name")

    @field_validator("block_weights")
    @classmethod
    def _weights_in_range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            bad = [w for w in value if not 0.0 <= w <= 1.0]
            if bad or not value:
                raise ValueError(f"block weights are alphas between 0 and 1, not {bad or value}")
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().removesuffix(".safetensors")
        check_output_name(value)
        return value

    @field_validator("discard_weights")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"discard_weights is not a regular expression: {exc}") from None
        if _NESTED_QUANTIFIER.search(value):
            # Python's re has no time limit: `(a+)+$` against a long tensor name backtracks for ever, and API
            # callers send this pattern.
            raise ValueError("discard_weights repeats a group that repeats (like `(a+)+`), which can take "
                             "exponential time; write it without the outer repetition")
        return value

    @model_validator(mode="after")
    def _models_fit_mode(self) -> MergeRequest:
        if self.mode == "add_difference" and not self.tertiary:
            raise ValueError("add_difference needs a third model C (A + (B - C) * alpha)")
        if self.mode == "weighted_sum" and self.tertiary:
            raise ValueError("weighted_sum merges two models; a third model is for add_difference")
        return self


class MergeResult(BaseModel):
    """What a merge wrote: the registry's name and hashes of the new checkpoint, and the recipe stored in it."""

    name: str
    file: str = Field(..., description="Path inside Stable-diffusion/")
    sha256: str
    short_hash: str = Field(..., description="A1111's model hash (10 hex digits), as infotext writes it")
    family: str
    format: Literal["single_file", "diffusers"]
    merged: int = Field(..., description="Tensors computed from more than one model")
    copied: int = Field(..., description="Tensors taken from A as they are (only A has them, or not floats)")
    dropped: int = Field(..., description="Tensors of B that A lacks (left out, as A1111 does) or discarded")
    baked: int = Field(0, description="VAE tensors taken from bake_in_vae")
    recipe: dict
    elapsed_s: float


def check_output_name(name: str) -> None:
    """A merge's output name: plain name parts (subfolders allowed), nothing that leaves Stable-diffusion/."""
    try:
        check_name(name)
    except InvalidRequest:
        raise InvalidRequest(f"name {name!r} leaves Stable-diffusion/: give a plain name (a subfolder is allowed: "
                             "merges/mix)") from None
    if len(name) > _MAX_NAME:
        raise InvalidRequest(f"the name is {len(name)} characters long; at most {_MAX_NAME}")
    for part in name.split("/"):
        if not _NAME_PART.fullmatch(part):
            raise InvalidRequest(f"name {name!r}: use letters, digits, spaces and . ( ) + , - _ in each part "
                                 "(no part may start with '.' or a space)")


# -- reading and writing safetensors, one tensor at a time -----------------------------------------------------
@dataclass
class Tensors:
    """A safetensors file's header, and its tensors read one at a time with plain reads. Not mmap: every page of a
    mapped file that is read counts as the process's resident memory until unmapped, which would make a streamed
    merge look (and, for the OOM killer, be) as large as its inputs."""

    path: Path
    records: dict[str, dict]
    metadata: dict[str, str]
    data_start: int

    @classmethod
    def open(cls, path: Path) -> Tensors:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise InvalidRequest(f"{path.name} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise InvalidRequest(f"{path.name} is not a safetensors file (header of {length} bytes)")
            try:
                header = json.loads(f.read(length))
            except ValueError:
                raise InvalidRequest(f"{path.name} is not a safetensors file (its header is not JSON)") from None
        metadata = header.pop("__metadata__", None) or {}
        for key, record in header.items():
            if record.get("dtype") not in _DTYPES:
                raise InvalidRequest(f"{path.name}: tensor {key!r} has dtype {record.get('dtype')!r}, which "
                                     "guardforge does not merge")
        return cls(path, header, metadata, 8 + length)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.records[key]["shape"])

    def dtype(self, key: str) -> str:
        return self.records[key]["dtype"]

    def read(self, f, key: str) -> torch.Tensor:
        import torch

        record = self.records[key]
        start, end = record["data_offsets"]
        name, size = _DTYPES[record["dtype"]]
        shape = record["shape"]
        count = 1
        for dim in shape:
            count *= dim
        if end - start != count * size:
            raise InvalidRequest(f"{self.path.name}: tensor {key!r} has {end - start} bytes for shape {shape}")
        if count == 0:
            return torch.empty(shape, dtype=getattr(torch, name))
        f.seek(self.data_start + start)
        buffer = bytearray(end - start)
        if f.readinto(buffer) != len(buffer):
            raise InvalidRequest(f"{self.path.name} is truncated (tensor {key!r})")
        return torch.frombuffer(buffer, dtype=getattr(torch, name)).reshape(shape)


@dataclass
class Planned:
    key: str
    dtype: str  # the output's safetensors dtype
    shape: tuple[int, ...]
    make: Callable[..., torch.Tensor]  # planned: make(open files of A, B, C); written: make()


def write_streamed(path: Path, planned: list[Planned], metadata: dict[str, str]) -> None:
    """Write a safetensors file whose header is computed from shapes and dtypes first, then each tensor's bytes as
    it is made: no more than one output tensor is in memory (safetensors' save_file wants them all)."""
    import torch

    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for item in planned:
        count = 1
        for dim in item.shape:
            count *= dim
        size = count * _DTYPES[item.dtype][1]
        header[item.key] = {"dtype": item.dtype, "shape": list(item.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data that follows the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for item in planned:
            tensor = item.make().to(getattr(torch, _DTYPES[item.dtype][0])).contiguous()
            if tuple(tensor.shape) != item.shape:
                raise AssertionError(f"{item.key}: made {tuple(tensor.shape)}, planned {item.shape}")
            if tensor.numel():
                f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


# -- which alpha a tensor gets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockLayout:
    """The UNet's blocks as block-weighted merges count them: `inputs` IN blocks, one M block, `outputs` OUT."""

    inputs: int
    outputs: int
    diffusers_levels: int = 0  # diffusers names: how many down/up levels ...
    diffusers_layers: int = 0  # ... and ResNets per down level (layers_per_block)

    @property
    def labels(self) -> list[str]:
        return ([f"IN{i:02d}" for i in range(self.inputs)] + ["M00"]
                + [f"OUT{i:02d}" for i in range(self.outputs)])

    def index(self, unet_key: str, diffusers: bool) -> int | None:
        """The block weight a UNet tensor (its name inside the UNet) takes; None: the base alpha."""
        last = self.inputs + self.outputs  # OUT's last block
        if diffusers:
            per = self.diffusers_layers + 1
            if unet_key.startswith(("time_embedding.", "conv_in.")):
                return 0
            if unet_key.startswith("mid_block."):
                return self.inputs
            if unet_key.startswith(("conv_norm_out.", "conv_out.")):
                return last
            down = _DIFFUSERS_DOWN.match(unet_key)
            if down:
                level, part, j = int(down.group(1)), down.group(2), int(down.group(3))
                return (level + 1) * per if part == "downsamplers" else 1 + level * per + j
            up = _DIFFUSERS_UP.match(unet_key)
            if up:
                level, part, j = int(up.group(1)), up.group(2), int(up.group(3))
                return self.inputs + 1 + level * per + (self.diffusers_layers if part == "upsamplers" else j)
            return None
        if unet_key.startswith("time_embed."):
            return 0
        if unet_key.startswith("middle_block."):
            return self.inputs
        if unet_key.startswith("out."):
            return last
        inp = _LDM_IN.match(unet_key)
        if inp:
            return int(inp.group(1))
        out = _LDM_OUT.match(unet_key)
        if out:
            return self.inputs + 1 + int(out.group(1))
        return None


def block_layout(entry: ModelEntry) -> BlockLayout:
    """The block layout of a checkpoint's UNet, read from its header (single file) or unet/config.json."""
    if entry.format == "single_file":
        keys = Tensors.open(entry.path).records
        inputs = {int(m.group(1)) for k in keys if k.startswith(_LDM_UNET)
                  for m in [_LDM_IN.match(k[len(_LDM_UNET):])] if m}
        outputs = {int(m.group(1)) for k in keys if k.startswith(_LDM_UNET)
                   for m in [_LDM_OUT.match(k[len(_LDM_UNET):])] if m}
        if not inputs or not outputs:
            raise InvalidRequest(f"{entry.name!r} has no UNet blocks that block weights could address")
        return BlockLayout(max(inputs) + 1, max(outputs) + 1)
    try:
        config = json.loads((entry.path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        raise InvalidRequest(f"{entry.name!r} has no readable unet/config.json; block weights need a UNet") from None
    layers, levels = config.get("layers_per_block"), len(config.get("block_out_channels") or [])
    if not isinstance(layers, int) or not levels:
        raise InvalidRequest(f"{entry.name!r}: its UNet has no single layers_per_block; block weights need one")
    blocks = levels * (layers + 1)
    return BlockLayout(blocks, blocks, diffusers_levels=levels, diffusers_layers=layers)


# -- the merge -------------------------------------------------------------------------------------------------
@dataclass
class _Counts:
    merged: int = 0
    copied: int = 0
    baked: int = 0
    dropped: int = 0
    inpainting: bool = False
    instruct_pix2pix: bool = False
    missing_in_b: list[str] = field(default_factory=list)


def _channel_merge(key: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], counts: _Counts) -> bool:
    """A1111's rule for an inpainting (9 input channels) or instruct-pix2pix (8) model A merged with a plain one
    (4): only the channels both have are merged. True when that applies; InvalidRequest for other mismatches."""
    if (len(a_shape) > 1 and len(a_shape) == len(b_shape) and a_shape[:1] + a_shape[2:] == b_shape[:1] + b_shape[2:]):
        if a_shape[1] == 4 and b_shape[1] in (8, 9):
            kind = "inpainting" if b_shape[1] == 9 else "instruct-pix2pix"
            raise InvalidRequest(f"when merging an {kind} model with a normal one, A must be the {kind} model "
                                 f"({key}: A has {a_shape[1]} input channels, B {b_shape[1]})")
        if a_shape[1] in (8, 9) and b_shape[1] == 4:
            if a_shape[1] == 9:
                counts.inpainting = True
            else:
                counts.instruct_pix2pix = True
            return True
    raise InvalidRequest(f"the models do not fit together: {key} is {list(a_shape)} in A and {list(b_shape)} in B")


def _plan_file(a: Tensors, b: Tensors | None, c: Tensors | None, request: MergeRequest,
               alpha_of: Callable[[str], float], mergeable: Callable[[str], bool], counts: _Counts) -> list[Planned]:
    """Each output tensor of one file: its dtype, shape and how it is made from the open files (A, B, C), decided
    from the headers alone, so that every refusal (a shape that does not fit) comes before a byte is written."""
    import torch

    discard = re.compile(request.discard_weights) if request.discard_weights else None
    keys = sorted(a.records, key=lambda k: a.records[k]["data_offsets"][0])  # A's file order: reads run forward
    planned: list[Planned] = []
    for key in keys:
        if discard is not None and discard.search(key):
            counts.dropped += 1
            continue
        dtype = a.dtype(key)
        out_dtype = "F16" if request.fp16 and dtype == "F32" else dtype
        shape = a.shape(key)
        in_b = b is not None and key in b.records
        if not (in_b and dtype in _MERGED_DTYPES and b.dtype(key) in _MERGED_DTYPES and mergeable(key)):
            if b is not None and not in_b and mergeable(key):
                counts.missing_in_b.append(key)
            counts.copied += 1
            planned.append(Planned(key, out_dtype, shape, lambda f, key=key: a.read(f[0], key)))
            continue
        first_channels = shape != b.shape(key) and _channel_merge(key, shape, b.shape(key), counts)
        alpha = alpha_of(key)
        if request.mode == "add_difference":
            if c is None or key not in c.records:
                # A1111: B - C is zero where C lacks the tensor, so A's stays as it is.
                counts.copied += 1
                planned.append(Planned(key, out_dtype, shape, lambda f, key=key: a.read(f[0], key)))
                continue
            if c.shape(key) != b.shape(key):
                raise InvalidRequest(f"the models do not fit together: {key} is {list(b.shape(key))} in B and "
                                     f"{list(c.shape(key))} in C")

            def make(f, key=key, alpha=alpha, first_channels=first_channels) -> torch.Tensor:
                theta_a = a.read(f[0], key).float()
                diff = b.read(f[1], key).float() - c.read(f[2], key).float()
                if first_channels:
                    theta_a[:, 0:4] = theta_a[:, 0:4] + alpha * diff
                    return theta_a
                return theta_a + alpha * diff
        else:
            def make(f, key=key, alpha=alpha, first_channels=first_channels) -> torch.Tensor:
                theta_a = a.read(f[0], key).float()
                theta_b = b.read(f[1], key).float()
                if first_channels:
                    theta_a[:, 0:4] = (1 - alpha) * theta_a[:, 0:4] + alpha * theta_b
                    return theta_a
                return (1 - alpha) * theta_a + alpha * theta_b
        counts.merged += 1
        planned.append(Planned(key, out_dtype, shape, make))
    if b is not None:
        counts.dropped += sum(1 for key in b.records if key not in a.records)
    return planned


def _layout(entry: ModelEntry, models_dir: Path) -> dict[str, Path]:
    """The weight files to merge, by path inside the model ("" for a single file): safetensors only."""
    if entry.format == "single_file":
        if entry.path.suffix.lower() != ".safetensors":
            from guardforge.models.loading import pickle_message

            # Merging never unpickles, whatever allow_pickle says: the file is converted once, as for loading.
            raise UnsafeModelFormat(pickle_message(entry, models_dir))
        return {"": entry.path}
    files = {p.relative_to(entry.path).as_posix(): p for p in weight_files(entry.path)}
    pickled = [name for name in files if not name.endswith(".safetensors")]
    if pickled:
        raise UnsafeModelFormat(f"{entry.name!r} holds pickle weights ({pickled[0]}); merging reads safetensors "
                                "only: save the folder again with safe_serialization=True")
    return files


def default_name(request: MergeRequest, a: ModelEntry, b: ModelEntry, c: ModelEntry | None) -> str:
    """A1111's name for a merge: '0.7(a) + 0.3(b)' or 'a + 0.3(b - c)', from the models' own names."""
    def short(entry: ModelEntry) -> str:
        return PurePosixPath(entry.name).name

    alpha = request.alpha
    if request.mode == "weighted_sum":
        return f"{round(1 - alpha, 2)}({short(a)}) + {round(alpha, 2)}({short(b)})"
    return f"{short(a)} + {round(alpha, 2)}({short(b)} - {short(c)})"


def _json_value(value: str | None):
    # A1111 reads metadata values that hold JSON as JSON (sd_models.read_metadata_from_safetensors).
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _recipe(request: MergeRequest, entries: list[ModelEntry | None], counts: _Counts,
            inputs_metadata: list[dict[str, str]], vae_title: str | None) -> tuple[dict, dict]:
    """sd_merge_recipe and sd_merge_models as A1111's merger writes them (plus `block_weights`, which A1111's
    readers ignore), from the inputs' full sha256 and A1111's legacy hash."""
    a, b, c = entries
    recipe = {
        "type": "webui",
        "primary_model_hash": a.sha256(),
        "secondary_model_hash": b.sha256() if b else None,
        "tertiary_model_hash": c.sha256() if c else None,
        "interp_method": INTERP_METHODS[request.mode],
        "multiplier": request.alpha,
        "save_as_half": request.fp16,
        "custom_name": request.name or "",
        "config_source": 0,
        "bake_in_vae": vae_title or "None",
        "discard_weights": request.discard_weights,
        "is_inpainting": counts.inpainting,
        "is_instruct_pix2pix": counts.instruct_pix2pix,
    }
    if request.block_weights is not None:
        recipe["block_weights"] = request.block_weights
    models: dict = {}
    for entry, metadata in zip(entries, inputs_metadata, strict=True):
        if entry is None:
            continue
        models[entry.sha256()] = {
            "name": entry.path.name if entry.format == "single_file" else entry.name,
            "legacy_hash": legacy_hash(entry.path) if entry.format == "single_file" else None,
            "sd_merge_recipe": _json_value(metadata.get("sd_merge_recipe")),
        }
        nested = _json_value(metadata.get("sd_merge_models"))
        if isinstance(nested, dict):
            models.update(nested)
    return recipe, models


def merge_checkpoints(registry: ModelRegistry, request: MergeRequest) -> MergeResult:
    """Merge the request's checkpoints into Stable-diffusion/ (a .safetensors file from single files, a diffusers
    folder from folders), hash the result and have the registry list it. Refusals (InvalidRequest, ModelNotFound,
    UnsafeModelFormat) come before anything is written; the output appears in one rename, complete."""
    started = time.perf_counter()
    entries = [registry.resolve(request.primary), registry.resolve(request.secondary),
               registry.resolve(request.tertiary) if request.tertiary else None]
    a, b, c = entries
    present = [e for e in entries if e is not None]
    if len({e.format for e in present}) > 1:
        raise InvalidRequest("the models must all be single files or all diffusers folders, not "
                             + " and ".join(f"{e.name!r} ({e.format})" for e in present))
    files = [_layout(e, registry.root) if e is not None else {} for e in entries]
    families = {e.family for e in present}
    if len(families) > 1 or "unknown" in families:
        described = ", ".join(f"{label} {e.name!r} is {e.family}" for label, e in zip("ABC", present))
        raise InvalidRequest(f"merging needs checkpoints of one known family: {described}")
    layout = _checked_block_layout(a, request)
    vae, vae_title = _vae_file(registry, request.bake_in_vae, a) if request.bake_in_vae else (None, None)

    counts = _Counts()
    plans, inputs_metadata = _plan(files, a.format == "diffusers", request, layout, counts, vae)
    merged_total = counts.merged + len(counts.missing_in_b)
    if merged_total and len(counts.missing_in_b) > 0.25 * merged_total:
        raise InvalidRequest(f"{b.name!r} lacks {len(counts.missing_in_b)} of the {merged_total} tensors "
                             f"{a.name!r} has (e.g. {counts.missing_in_b[0]}): not the same architecture")

    name = request.name
    if name is None:
        name = default_name(request, a, b, c)
        name += ".inpainting" if counts.inpainting else ""
        name += ".instruct-pix2pix" if counts.instruct_pix2pix else ""
        check_output_name(name)
    root = registry.root / KIND_FOLDERS["checkpoint"]
    target = root / (name if a.format == "diffusers" else f"{name}.safetensors")
    _check_target(registry, name, target, a.format == "diffusers", request.overwrite, present)

    recipe, models = _recipe(request, entries, counts, inputs_metadata, vae_title)
    _write(plans, a, target, {"format": "pt", "sd_merge_recipe": json.dumps(recipe),
                              "sd_merge_models": json.dumps(models)})

    registry.refresh()
    entry = registry.resolve(name)
    sha = entry.sha256()  # hashed now and cached: the listing and infotext show it at once
    return MergeResult(name=entry.name, file=target.relative_to(root).as_posix(), sha256=sha, short_hash=sha[:10],
                       family=entry.family, format=entry.format, merged=counts.merged, copied=counts.copied,
                       dropped=counts.dropped, baked=counts.baked, recipe=recipe,
                       elapsed_s=time.perf_counter() - started)


def _vae_file(registry: ModelRegistry, name: str, a: ModelEntry) -> tuple[Path, str]:
    """The weights file of the VAE to bake in, and how the recipe names it (A1111: the file name): a single
    .safetensors file (LDM names) for single-file checkpoints, a diffusers VAE folder's for folders."""
    vae = registry.resolve(name, kind="vae")
    if vae.format != a.format:
        want = "a single .safetensors file" if a.format == "single_file" else "a diffusers VAE folder"
        raise InvalidRequest(f"bake_in_vae {vae.name!r} is a {vae.format.replace('_', '-')} VAE; {a.name!r} is a "
                             f"{a.format.replace('_', '-')} checkpoint, which takes {want}")
    if vae.format == "single_file":
        if vae.path.suffix.lower() != ".safetensors":
            from guardforge.models.loading import pickle_message

            raise UnsafeModelFormat(pickle_message(vae, registry.root))
        return vae.path, vae.filename
    found = [p for p in weight_files(vae.path) if p.name == "diffusion_pytorch_model.safetensors"]
    if not found:
        raise InvalidRequest(f"bake_in_vae {vae.name!r} has no diffusion_pytorch_model.safetensors")
    return found[0], vae.name


def _bake(planned: list[Planned], vae: Tensors, diffusers: bool, fp16: bool, counts: _Counts) -> list[Planned]:
    """A1111's "Bake in VAE": each VAE tensor the result has is replaced by the VAE's (in the VAE's dtype,
    float32 saved as float16 with fp16). The VAE is read as the fourth open file."""
    baked: list[Planned] = []
    replaced = 0
    for item in planned:
        source = item.key if diffusers else _ldm_vae_key(item.key, vae)
        if source is None or source not in vae.records:
            baked.append(item)
            continue
        if vae.shape(source) != item.shape:
            raise InvalidRequest(f"the VAE does not fit: {source} is {list(vae.shape(source))} in it and "
                                 f"{list(item.shape)} in the checkpoint")
        dtype = vae.dtype(source)
        replaced += 1
        baked.append(Planned(item.key, "F16" if fp16 and dtype == "F32" else dtype, item.shape,
                             lambda f, source=source: vae.read(f[3], source)))
    if not replaced:
        raise InvalidRequest(f"{vae.path.name} holds none of the checkpoint's VAE tensors (e.g. "
                             f"{next(iter(vae.records), 'nothing')!r}): not a VAE of this architecture")
    counts.baked += replaced
    return baked


def _ldm_vae_key(key: str, vae: Tensors) -> str | None:
    # A1111's VAE files hold the LDM names without the checkpoint's `first_stage_model.` prefix; some keep it.
    if not key.startswith("first_stage_model."):
        return None
    bare = key[len("first_stage_model."):]
    return bare if bare in vae.records else key


def _checked_block_layout(a: ModelEntry, request: MergeRequest) -> BlockLayout | None:
    if request.block_weights is None:
        return None
    layout = block_layout(a)
    labels = layout.labels
    if len(request.block_weights) != len(labels):
        raise InvalidRequest(f"the UNet of {a.name!r} has {len(labels)} blocks ({labels[0]}.."
                             f"{labels[layout.inputs - 1]}, M00, OUT00..{labels[-1]}): give {len(labels)} block "
                             f"weights, not {len(request.block_weights)}")
    return layout


def _plan(files: list[dict[str, Path]], diffusers: bool, request: MergeRequest, layout: BlockLayout | None,
          counts: _Counts, vae: Path | None = None) -> tuple[dict, list[dict[str, str]]]:
    """Every output file planned from the headers alone: {path inside the model: (planned tensors, the opened
    inputs, the metadata copied from them)}, and each input's own metadata (where an earlier merge's recipe is)."""

    def mergeable(key: str) -> bool:
        # A1111 merges the keys with "model" in their names: every network of an LDM checkpoint, not its
        # noise-schedule buffers (betas, alphas_cumprod). A diffusers folder holds networks only.
        return diffusers or "model" in key

    plans: dict[str, tuple[list[Planned], list[Tensors | None], dict[str, str]]] = {}
    inputs_metadata: list[dict[str, str]] = [{}, {}, {}]
    for rel, path in files[0].items():
        opened = [Tensors.open(path)] + [Tensors.open(f[rel]) if rel in f else None for f in files[1:]]

        def alpha_of(key: str, in_unet: bool = rel.startswith("unet/")) -> float:
            index = None
            if layout is not None and diffusers and in_unet:
                index = layout.index(key, diffusers=True)
            elif layout is not None and not diffusers and key.startswith(_LDM_UNET):
                index = layout.index(key[len(_LDM_UNET):], diffusers=False)
            return request.alpha if index is None else request.block_weights[index]

        planned = _plan_file(opened[0], opened[1], opened[2], request, alpha_of, mergeable, counts)
        if vae is not None and (not diffusers or rel.startswith("vae/")):
            baked = Tensors.open(vae)
            planned = _bake(planned, baked, diffusers, request.fp16, counts)
            opened.append(baked)
        metadata: dict[str, str] = {}
        for slot, tensors in enumerate(opened[:3]):
            if tensors is not None:
                metadata.update(tensors.metadata)  # A1111 copies the metadata of A, then B's, then C's over it
                if rel in ("", "unet/diffusion_pytorch_model.safetensors"):
                    inputs_metadata[slot] = tensors.metadata
        plans[rel] = (planned, opened, metadata)
    return plans, inputs_metadata


def _write(plans: dict, a: ModelEntry, target: Path, merge_metadata: dict[str, str]) -> None:
    """Write the planned files beside the target under a hidden name, then rename them into place."""
    diffusers = a.format == "diffusers"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hidden from the registry while written; per thread, since a server may run two merges at once.
    staging = target.parent / f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial"
    try:
        if diffusers:
            # Configs, tokenizer and scheduler come from A, as A1111 takes A's config; weights are merged below.
            shutil.copytree(a.path, staging, ignore=lambda folder, names: [
                n for n in names if (Path(folder) / n).is_file() and n.endswith(WEIGHT_SUFFIXES)])
        for rel, (planned, opened, metadata) in plans.items():
            out = staging / rel if diffusers else staging
            out.parent.mkdir(parents=True, exist_ok=True)
            handles = [open(t.path, "rb") if t is not None else None for t in opened]
            try:
                bound = [Planned(p.key, p.dtype, p.shape, partial(p.make, handles)) for p in planned]
                write_streamed(out, bound, {**_strings(metadata), **merge_metadata})
            finally:
                for handle in handles:
                    if handle is not None:
                        handle.close()
        _replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()


def _strings(metadata: dict) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None}


def _check_target(registry: ModelRegistry, name: str, target: Path, diffusers: bool, overwrite: bool,
                  inputs: list[ModelEntry]) -> None:
    root = registry.root / KIND_FOLDERS["checkpoint"]
    if not str(target.resolve()).startswith(str(root.resolve()) + os.sep):
        raise InvalidRequest(f"name {name!r} leaves the models folder")
    taken = [e for e in registry.list("checkpoint") if e.name == name]
    if any(e.source == "shipped" for e in taken):
        raise InvalidRequest(f"{name!r} is a model shipped with guardforge; choose another name")
    if any(e.path == a.path for e in taken for a in inputs):
        raise InvalidRequest(f"the output would replace input {name!r}; choose another name")
    others = [e for e in taken if e.path != target]
    if others:
        raise InvalidRequest(f"{name!r} is taken by {others[0].path.name}; choose another name")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise InvalidRequest(f"a checkpoint named {name!r} exists; choose another name or overwrite it "
                             "(--overwrite, \"overwrite\": true)")
    if target.exists() and target.is_dir() != diffusers:
        raise InvalidRequest(f"{target.name} exists as a {'folder' if target.is_dir() else 'file'}; choose "
                             "another name")


def _replace(staging: Path, target: Path) -> None:
    if staging.is_dir() and target.is_dir():
        old = target.parent / f".{target.name}.{os.getpid()}.{threading.get_ident()}.old"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
