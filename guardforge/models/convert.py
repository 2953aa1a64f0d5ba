"""Diffusers -> original Stable Diffusion (LDM / SGM) state dicts: the single-file layout A1111 and ComfyUI load.

The inverse of diffusers' single_file_utils conversions (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint), written for any UNet depth and width so that
small models (tiny-shapes, test models) round-trip as well as SD 1.5. It follows diffusers'
scripts/convert_diffusers_to_original_stable_diffusion.py, with that script's fixed SD 1.5 block counts
replaced by the ones read from the model's config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# SDXL (Stability's generative-models layout): CLIP ViT-L as embedder 0, OpenCLIP bigG as embedder 1.
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# Inside a ResNet block, diffusers -> LDM names.
_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _unet_prefixes(unet: UNet2DConditionModel) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(diffusers prefix, LDM prefix, renames inside) for every block of this UNet's config."""
    config = unet.config
    per_block = config.layers_per_block
    if not isinstance(per_block, int):
        raise ValueError("UNets with a different layers_per_block per level have no LDM layout")
    levels = len(config.block_out_channels)
    table: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("time_embedding.linear_1.", "time_embed.0.", []),
        ("time_embedding.linear_2.", "time_embed.2.", []),
        ("add_embedding.linear_1.", "label_emb.0.0.", []),
        ("add_embedding.linear_2.", "label_emb.0.2.", []),
        ("conv_in.", "input_blocks.0.0.", []),
        ("conv_norm_out.", "out.0.", []),
        ("conv_out.", "out.2.", []),
        ("mid_block.attentions.0.", "middle_block.1.", []),
    ]
    for j in range(2):
        table.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.", _UNET_RESNET))
    for i in range(levels):
        for j in range(per_block):
            ldm = 1 + i * (per_block + 1) + j
            table.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{ldm}.0.", _UNET_RESNET))
            table.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{ldm}.1.", []))
        if i < levels - 1:
            down = (i + 1) * (per_block + 1)
            table.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{down}.0.op.", []))
        has_attention = hasattr(unet.up_blocks[i], "attentions")
        for j in range(per_block + 1):
            ldm = i * (per_block + 1) + j
            table.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{ldm}.0.", _UNET_RESNET))
            table.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{ldm}.1.", []))
        if i < levels - 1:
            # The upsampler follows the last resnet, after its attention when the level has one.
            last = i * (per_block + 1) + per_block
            slot = 2 if has_attention else 1
            table.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{last}.{slot}.conv.", []))
    return table


def _vae_prefixes(vae: AutoencoderKL) -> list[tuple[str, str, list[tuple[str, str]]]]:
    levels = len(vae.config.block_out_channels)
    table: list[tuple[str, str, list[tuple[str, str]]]] = []
    for part in ("encoder", "decoder"):
        table += [(f"{part}.conv_norm_out.", f"{part}.norm_out.", []),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION)]
        for j in range(2):
            table.append((f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", _VAE_RESNET))
    for i in range(levels):
        table.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", _VAE_RESNET))
        table.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", []))
        # The LDM decoder numbers its levels from the lowest resolution up, diffusers from the top down.
        table.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.", _VAE_RESNET))
        table.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.", []))
    return table


def _check_plain(state: dict[str, torch.Tensor], what: str) -> None:
    # PEFT-wrapped layers (base_layer / lora_A / lora_B) have no single-file name; merged weights do.
    wrapped = next((k for k in state if ".base_layer." in k or ".lora_" in k), None)
    if wrapped is not None:
        raise ValueError(f"the {what} still holds LoRA layers ({wrapped!r}); merge them first "
                         "(peft: model.merge_and_unload(); diffusers: pipe.fuse_lora() then unload_lora_weights())")


def _rename(state: dict[str, torch.Tensor], table, what: str) -> dict[str, torch.Tensor]:
    _check_plain(state, what)
    # Longest prefix first, so "mid_block.resnets.0." wins over a shorter prefix of the same key.
    table = sorted(table, key=lambda row: len(row[0]), reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for old, new, inner in table:
            if key.startswith(old):
                rest = key[len(old):]
                for a, b in inner:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
                out[new + rest] = tensor
                break
        else:
            if "." in key and key.split(".")[0] in ("conv_in", "conv_out", "quant_conv", "post_quant_conv",
                                                     "encoder", "decoder") and what == "vae":
                out[key] = tensor  # same name in both layouts
            else:
                raise ValueError(f"no LDM name for {what} tensor {key!r}")
    return out


def unet_to_original(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    state = unet.state_dict()
    return {UNET_PREFIX + k: v for k, v in _rename(state, _unet_prefixes(unet), "unet").items()}


def vae_to_original(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    renamed = _rename(vae.state_dict(), _vae_prefixes(vae), "vae")
    out = {}
    for key, tensor in renamed.items():
        # The LDM VAE's mid-block attention uses 1x1 convolutions where diffusers uses linear layers.
        if ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[VAE_PREFIX + key] = tensor
    return out


def text_encoder_to_original(text_encoder: CLIPTextModel, prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """SD 1.x keeps Hugging Face's CLIP names (as of transformers 4: `text_model.` first) under one prefix."""
    out = {}
    state = text_encoder.state_dict()
    _check_plain(state, "text encoder")
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        # transformers >= 5.6 flattened CLIPTextModel; the single-file layout keeps the older names.
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[prefix + key] = tensor
    return out


_OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def open_clip_to_original(text_encoder: CLIPTextModelWithProjection,
                          prefix: str = SDXL_OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP -> OpenCLIP names: fused q/k/v in_proj, `resblocks`, a transposed text_projection."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()
             if not k.endswith("position_ids")}
    _check_plain(state, "text encoder 2")
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for part in ("weight", "bias"):
            qkv = [state.pop(f"{src}self_attn.{p}_proj.{part}") for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{part}"] = torch.cat(qkv, dim=0)
    for key in list(state):
        if not key.startswith("encoder.layers."):
            raise ValueError(f"no OpenCLIP name for text encoder tensor {key!r}")
        layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
        for a, b in _OPEN_CLIP_LAYER:
            if rest.startswith(a):
                out[f"transformer.resblocks.{layer}.{b}{rest[len(a):]}"] = state.pop(key)
                break
        else:
            raise ValueError(f"no OpenCLIP name for text encoder tensor {key!r}")
    return {prefix + k: v for k, v in out.items()}


def diffusers_to_original_sd(unet: UNet2DConditionModel, vae: AutoencoderKL,
                             text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """An SD 1.x-layout state dict (contiguous tensors, ready for safetensors.torch.save_file)."""
    state = {**unet_to_original(unet), **vae_to_original(vae), **text_encoder_to_original(text_encoder)}
    return {k: v.detach().contiguous() for k, v in state.items()}


def diffusers_to_original_sdxl(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                               text_encoder_2: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """An SDXL-layout state dict: the UNet and VAE as in SD 1.x, the text encoders under `conditioner.`."""
    state = {**unet_to_original(unet), **vae_to_original(vae),
             **text_encoder_to_original(text_encoder, SDXL_CLIP_PREFIX), **open_clip_to_original(text_encoder_2)}
    return {k: v.detach().contiguous() for k, v in state.items()}
