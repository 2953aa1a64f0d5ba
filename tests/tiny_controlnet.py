"""A tiny real ControlNetModel for tests/tiny.py's UNet, built in-process as diffusers' own tests build theirs."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_controlnet(seed: int = 0):
    """A ControlNetModel matching tests/tiny.py's UNet (blocks 32/64, cross-attention 32, 4 latent channels).

    A ControlNet starts with zero convolutions (it changes nothing until trained); these get random weights, as
    diffusers' tests give theirs, so that the control image visibly steers the tiny model.
    """
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32, conditioning_embedding_out_channels=(16, 32),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return net


def save_tiny_controlnet(folder: Path, seed: int = 0) -> Path:
    """A diffusers ControlNet folder (config.json + diffusion_pytorch_model.safetensors)."""
    tiny_controlnet(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_controlnet_file(path: Path, seed: int = 0) -> Path:
    """A single .safetensors in diffusers' key layout, with its config as `<name>.json` beside it."""
    from safetensors.torch import save_file

    net = tiny_controlnet(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(dict(net.config)))
    return path
