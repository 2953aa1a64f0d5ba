"""Tiny ESRGAN-family state dicts with random weights, written key by key in the layouts real files use (not from
guardforge's own classes, so the loader is tested against the layouts, not against itself)."""

from __future__ import annotations

from pathlib import Path

import torch


def rrdb_state(nf: int = 8, nb: int = 2, gc: int = 4, upsamples: int = 2, unshuffle: int = 1, layout: str = "new",
               seed: int = 0, in_nc: int = 3) -> dict[str, torch.Tensor]:
    """RRDBNet weights: `layout` "new" is BasicSR's (Real-ESRGAN x4plus / x2plus), "old" ESRGAN's original
    (RRDB_ESRGAN_x4.pth and the community models of its era), "mmsr" old BasicSR's (BSRGAN). Same seed, same
    tensors in every layout."""
    generator = torch.Generator().manual_seed(seed)
    new: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        new[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator) * (1.0 / (3 * cin ** 0.5))
        new[f"{name}.bias"] = torch.randn(cout, generator=generator) * 0.01

    conv("conv_first", in_nc * unshuffle * unshuffle, nf)
    for block in range(nb):
        for rdb in (1, 2, 3):
            for k in range(1, 6):
                conv(f"body.{block}.rdb{rdb}.conv{k}", nf + (k - 1) * gc, gc if k < 5 else nf)
    conv("conv_body", nf, nf)
    for up in range(1, upsamples + 1):
        conv(f"conv_up{up}", nf, nf)
    conv("conv_hr", nf, nf)
    conv("conv_last", nf, in_nc)
    if layout == "new":
        return new
    if layout == "mmsr":
        renamed = {}
        for key, value in new.items():
            name, kind = key.rsplit(".", 1)
            if name.startswith("body."):
                _, block, rdb, conv_name = name.split(".")
                name = f"RRDB_trunk.{block}.RDB{rdb[3:]}.{conv_name}"
            else:
                name = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}.get(name, name.replace("conv_up", "upconv"))
            renamed[f"{name}.{kind}"] = value
        return renamed
    # ESRGAN's Sequential: 0 conv, 1 ShortcutBlock(RRDBs..., conv), then [upsample, conv, lrelu] per x2,
    # then the HR conv, an lrelu and the last conv.
    top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{nb}", "conv_hr": f"model.{3 * upsamples + 2}",
           "conv_last": f"model.{3 * upsamples + 4}"}
    top.update({f"conv_up{up}": f"model.{3 * up}" for up in range(1, upsamples + 1)})
    old = {}
    for key, value in new.items():
        name, kind = key.rsplit(".", 1)
        if name.startswith("body."):
            _, block, rdb, conv_name = name.split(".")
            old[f"model.1.sub.{block}.RDB{rdb[3:]}.{conv_name}.0.{kind}"] = value
        else:
            old[f"{top[name]}.{kind}"] = value
    return old


def srvgg_state(nf: int = 8, num_conv: int = 2, scale: int = 4, seed: int = 0, zero: bool = False,
                in_nc: int = 3) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact weights (realesr-general-x4v3's layout): body.0 conv, body.1 PReLU, ..., last conv."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    channels = [in_nc] + [nf] * (num_conv + 1) + [in_nc * scale * scale]
    index = 0
    for layer, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        weight = torch.randn(cout, cin, 3, 3, generator=generator) * 0.1
        state[f"body.{index}.weight"] = torch.zeros_like(weight) if zero else weight
        state[f"body.{index}.bias"] = torch.zeros(cout)
        index += 1
        if layer < num_conv + 1:
            state[f"body.{index}.weight"] = torch.full((cout,), 0.25)
            index += 1
    return state


def write_safetensors(path: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
