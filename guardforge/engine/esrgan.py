"""ESRGAN-family super-resolution networks, read from a state dict the way spandrel reads them.

spandrel (the loader A1111, ComfyUI and chaiNNer share) needs torchvision, which guardforge does not install, so
the two architectures the ESRGAN/ and RealESRGAN/ folders hold in practice are written here:

- RRDBNet: ESRGAN in its original key layout (`model.0.weight`, `model.1.sub.N.RDB1.conv1.0.weight`, ...), in
  old BasicSR/mmsr's (`RRDB_trunk.N.RDB1.conv1`, `trunk_conv`, `upconv1`, `HRconv`: BSRGAN and its kin) and in
  BasicSR's (`conv_first`, `body.N.rdb1.conv1`, `conv_up1`, ...), which Real-ESRGAN x4plus, x4plus-anime-6B and
  x2plus use. x2plus (and 1x models) unshuffle their input into 4 (16) times the channels: conv_first says so.
- SRVGGNetCompact: Real-ESRGAN's small "realesr-general-x4v3" / "realesr-animevideov3" models.

Block count, widths, channels and scale all come from the tensors' names and shapes, never from the file name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from guardforge.errors import InvalidRequest

_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_NEW_BODY = re.compile(r"^body\.(\d+)\.rdb\d\.conv\d\.weight$")
_NEW_UP = re.compile(r"^conv_up(\d+)\.weight$")
_VGG_BODY = re.compile(r"^body\.(\d+)\.weight$")
# mmsr's names (A1111's "new" ESRGAN layout) -> BasicSR's.
_MMSR_NAMES = ((re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\."), r"body.\1.rdb\2."),
               (re.compile(r"^trunk_conv\."), "conv_body."), (re.compile(r"^upconv(\d+)\."), r"conv_up\1."),
               (re.compile(r"^HRconv\."), "conv_hr."))


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc)
        self.rdb2 = ResidualDenseBlock(nf, gc)
        self.rdb3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """BasicSR's RRDBNet: `upsamples` nearest x2 steps, after an optional pixel unshuffle of the input."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, nb: int, gc: int, upsamples: int, unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(in_nc * unshuffle * unshuffle, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        for index in range(1, upsamples + 1):
            self.add_module(f"conv_up{index}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.upsamples = upsamples
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for index in range(1, self.upsamples + 1):
            up = getattr(self, f"conv_up{index}")
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact net: convolutions with PReLU, a pixel shuffle, plus the nearest-upscaled input."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, num_conv: int, scale: int):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_nc, nf, 3, 1, 1), nn.PReLU(nf)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(nf)]
        layers.append(nn.Conv2d(nf, out_nc * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


@dataclass(frozen=True)
class Architecture:
    """What a state dict holds: enough to build the network and to say its scale without building it."""

    name: str  # "ESRGAN" (RRDBNet) or "SRVGGNetCompact"
    scale: int
    in_nc: int
    out_nc: int
    nf: int
    blocks: int  # RRDB blocks, or SRVGGNetCompact's middle convolutions
    gc: int = 0
    unshuffle: int = 1
    upsamples: int = 0


def _shape(value: Any) -> tuple[int, ...]:
    """A tensor's shape, or a safetensors header record's (so a model's scale is read without its weights)."""
    if isinstance(value, Mapping):
        return tuple(value["shape"])
    return tuple(value.shape)


def _old_to_new(state: Mapping[str, Any]) -> dict[str, Any]:
    """ESRGAN's original layout in BasicSR's names. The top-level indexes follow its Sequential: 0 conv_first,
    1 the trunk (RRDBs then its conv), then per x2 step an upsample, a conv and an activation (3, 6, ...), then
    the HR conv and, two further, the last conv."""
    tops = sorted({int(m.group(1)) for key in state if (m := _OLD_TOP.match(key))})
    if not tops or tops[0] != 0 or (tops[-1] - 4) % 3:
        raise InvalidRequest("an ESRGAN state dict (model.N keys) whose layer indexes fit no ESRGAN layout")
    upsamples = (tops[-1] - 4) // 3
    names = {0: "conv_first", 3 * upsamples + 2: "conv_hr", 3 * upsamples + 4: "conv_last"}
    names.update({3 * k: f"conv_up{k}" for k in range(1, upsamples + 1)})
    trunk = [int(m.group(1)) for key in state if (m := re.match(r"^model\.1\.sub\.(\d+)\.weight$", key))]
    converted: dict[str, Any] = {}
    for key, value in state.items():
        if match := _OLD_RDB.match(key):
            block, rdb, conv, kind = match.groups()
            converted[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif match := re.match(r"^model\.1\.sub\.(\d+)\.(weight|bias)$", key):
            converted[f"conv_body.{match.group(2)}"] = value
        elif (match := _OLD_TOP.match(key)) and int(match.group(1)) in names:
            converted[f"{names[int(match.group(1))]}.{match.group(2)}"] = value
        else:
            raise InvalidRequest(f"an ESRGAN state dict with a tensor no ESRGAN layout has: {key!r}")
    if len(set(trunk)) != 1:
        raise InvalidRequest("an ESRGAN state dict whose trunk has no single closing convolution")
    return converted


def _mmsr_to_new(key: str) -> str:
    for pattern, replacement in _MMSR_NAMES:
        key, found = pattern.subn(replacement, key)
        if found:
            break
    return key


def _rrdb_architecture(state: Mapping[str, Any]) -> Architecture:
    first = _shape(state["conv_first.weight"])
    last = _shape(state["conv_last.weight"])
    nf, out_nc = first[0], last[0]
    in_channels = first[1]
    # Real-ESRGAN x2plus unshuffles by 2 (4x the channels), 1x models by 4 (16x); an RGB-in, RGB-out net
    # otherwise has as many input channels as output ones.
    ratio = in_channels / out_nc
    unshuffle = {1: 1, 4: 2, 16: 4}.get(int(ratio)) if ratio.is_integer() else None
    if unshuffle is None:
        raise InvalidRequest(f"an RRDBNet with {in_channels} input and {out_nc} output channels: no known layout")
    blocks = 1 + max(int(m.group(1)) for key in state if (m := _NEW_BODY.match(key)))
    upsamples = len([key for key in state if _NEW_UP.match(key)])
    scale_num = 2 ** upsamples
    if scale_num % unshuffle:
        raise InvalidRequest(f"an RRDBNet that unshuffles by {unshuffle} but upsamples only x{scale_num}")
    return Architecture("ESRGAN", scale_num // unshuffle, out_nc, out_nc, nf, blocks,
                        gc=_shape(state["body.0.rdb1.conv1.weight"])[0], unshuffle=unshuffle, upsamples=upsamples)


def _vgg_architecture(state: Mapping[str, Any]) -> Architecture:
    convs = sorted(int(m.group(1)) for key in state if (m := _VGG_BODY.match(key)) and len(_shape(state[key])) == 4)
    if len(convs) < 2 or convs != list(range(0, convs[-1] + 1, 2)):
        raise InvalidRequest("an SRVGGNetCompact state dict whose layers are not conv, PReLU, conv, ...")
    first, last = _shape(state["body.0.weight"]), _shape(state[f"body.{convs[-1]}.weight"])
    in_nc, nf = first[1], first[0]
    scale = math.isqrt(last[0] // in_nc)
    if scale * scale * in_nc != last[0]:
        raise InvalidRequest(f"an SRVGGNetCompact whose last layer's {last[0]} channels are no square scale of "
                             f"{in_nc}")
    return Architecture("SRVGGNetCompact", scale, in_nc, in_nc, nf, len(convs) - 2)


def unwrap(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights inside the wrappers trainers save them in (BasicSR's params_ema / params, a state_dict)."""
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state.get(key), Mapping):
            return state[key]
    return state


def architecture_of(state: Mapping[str, Any]) -> tuple[Architecture, Mapping[str, Any]]:
    """The architecture a state dict holds and the state dict in the names the built network uses.
    InvalidRequest when it is none of the ESRGAN family's."""
    state = unwrap(state)
    if "model.0.weight" in state and any(_OLD_RDB.match(key) for key in state):
        state = _old_to_new(state)
    elif "trunk_conv.weight" in state:
        state = {_mmsr_to_new(key): value for key, value in state.items()}
    try:
        if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
            return _rrdb_architecture(state), state
        if "body.0.weight" in state and "body.1.weight" in state and len(_shape(state["body.1.weight"])) == 1:
            return _vgg_architecture(state), state
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # a layout cut short or reshaped
        raise InvalidRequest(f"an ESRGAN-family state dict with a missing or misshapen layer ({exc})") from None
    raise InvalidRequest("not an ESRGAN-family model: neither RRDBNet (ESRGAN, Real-ESRGAN) nor SRVGGNetCompact "
                         "tensors found")


def build_network(state: Mapping[str, Any]) -> tuple[nn.Module, Architecture]:
    """The network with the state dict's weights loaded (strictly: every tensor used, none missing)."""
    arch, state = architecture_of(state)
    if arch.name == "ESRGAN":
        net: nn.Module = RRDBNet(arch.in_nc, arch.out_nc, arch.nf, arch.blocks, arch.gc, arch.upsamples,
                                 arch.unshuffle)
    else:
        net = SRVGGNetCompact(arch.in_nc, arch.out_nc, arch.nf, arch.blocks, arch.scale)
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InvalidRequest(f"the {arch.name} weights do not fit the layout read from them: "
                             f"{' '.join(first[:2])[:300]}") from None
    return net.eval().requires_grad_(False), arch
