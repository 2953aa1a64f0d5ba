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


def _resnet_to_ldm(name: str) -> str:
    for diffusers, ldm in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                           ("conv_shortcut", "skip_connection")):
        if name.startswith(diffusers + "."):
            return ldm + name[len(diffusers):]
    raise KeyError(name)


def ldm_state_dict(net) -> dict:
    """A ControlNet's weights under lllyasviel's original key names (`control_model.input_blocks...`,
    `zero_convs...`), the layout of control_v11p_sd15_canny.safetensors: the inverse of diffusers' own
    convert_controlnet_checkpoint, which the loader runs on such a file."""
    import re

    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    direct = DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"]
    per_block = net.config.layers_per_block + 1
    out = {}
    for key, value in net.state_dict().items():
        if key in direct:
            out[direct[key]] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"input_blocks.{1 + int(m[1]) * per_block + int(m[2])}.0.{_resnet_to_ldm(m[3])}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"input_blocks.{1 + int(m[1]) * per_block + int(m[2])}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
            out[f"input_blocks.{1 + int(m[1]) * per_block + per_block - 1}.0.op.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet_to_ldm(m[2])}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
            out[f"middle_block_out.0.{m[1]}"] = value
        else:
            raise KeyError(f"no original name known for {key}")
    return {f"control_model.{k}": v.contiguous() for k, v in out.items()}


def save_tiny_controlnet_ldm_file(path: Path, seed: int = 0) -> Path:
    """A single .safetensors in the original key layout, with its diffusers config as `<name>.json` beside it."""
    from safetensors.torch import save_file

    net = tiny_controlnet(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_state_dict(net), str(path))
    path.with_suffix(".json").write_text(json.dumps(dict(net.config)))
    return path
