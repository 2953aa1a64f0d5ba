"""A tiny IP-Adapter for tests/tiny.py's UNet and a tiny CLIP vision encoder folder, built in-process as diffusers'
own tests build them (tests/pipelines/test_pipelines_common.py: create_ip_adapter_state_dict)."""

from __future__ import annotations

from pathlib import Path

import torch


def ip_adapter_state_dict(unet, seed: int = 0, embed_dim: int | None = None) -> dict:
    """{"image_proj": {proj.*, norm.*}, "ip_adapter": {"1.to_k_ip.weight", ...}}: the original IP-Adapter layout,
    one to_k_ip/to_v_ip pair per cross-attention layer, numbered 1, 3, 5, ... as diffusers reads them."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection

    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    widths = list(unet.config.block_out_channels)
    ip, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = widths[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(widths))[int(name[len("up_blocks.")])]
        else:
            hidden = widths[int(name[len("down_blocks.")])]
        sd = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, scale=1.0).state_dict()
        ip[f"{key_id}.to_k_ip.weight"] = sd["to_k_ip.0.weight"]
        ip[f"{key_id}.to_v_ip.weight"] = sd["to_v_ip.0.weight"]
        key_id += 2
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=embed_dim or cross,
                           num_image_text_embeds=4).state_dict()
    image_proj = {"proj.weight": proj["image_embeds.weight"], "proj.bias": proj["image_embeds.bias"],
                  "norm.weight": proj["norm.weight"], "norm.bias": proj["norm.bias"]}
    return {"image_proj": image_proj, "ip_adapter": ip}


def plus_state_dict(unet, seed: int = 0, embed_dim: int = 32) -> dict:
    """An IP-Adapter Plus (a Resampler over the encoder's penultimate hidden states, `embed_dim` wide), its
    image_proj in the original layout: diffusers' IPAdapterPlusImageProjection with its names mapped back."""
    import re

    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    state = ip_adapter_state_dict(unet, seed)
    torch.manual_seed(seed)
    # heads x 64 is the attention width diffusers reads back (to_q rows // 64); depth 4, its default.
    resampler = IPAdapterPlusImageProjection(embed_dims=embed_dim, output_dims=unet.config.cross_attention_dim,
                                             hidden_dims=64, heads=1, num_queries=4).state_dict()
    renames = [(r"\.ln0\.", ".0.norm1."), (r"\.ln1\.", ".0.norm2."), (r"\.attn\.to_q\.", ".0.to_q."),
               (r"\.attn\.to_out\.0\.", ".0.to_out."), (r"\.ff\.0\.", ".1.0."),
               (r"\.ff\.1\.net\.0\.proj\.", ".1.1."), (r"\.ff\.1\.net\.2\.", ".1.3.")]
    image_proj = {}
    for key, value in resampler.items():
        if ".attn.to_v." in key:
            continue
        if ".attn.to_k." in key:
            image_proj[key.replace(".attn.to_k.", ".0.to_kv.")] = torch.cat(
                [value, resampler[key.replace("to_k", "to_v")]])
            continue
        for pattern, name in renames:
            key = re.sub(pattern, name, key)
        image_proj[key] = value
    return {"image_proj": image_proj, "ip_adapter": state["ip_adapter"]}


def save_ip_adapter_file(path: Path, unet, seed: int = 0, embed_dim: int | None = None, plus: bool = False) -> Path:
    """As A1111's ip-adapter_sd15.safetensors: one file, `image_proj.` and `ip_adapter.` prefixes."""
    from safetensors.torch import save_file

    state = plus_state_dict(unet, seed) if plus else ip_adapter_state_dict(unet, seed, embed_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{group}.{k}": v.contiguous() for group, part in state.items() for k, v in part.items()}, str(path))
    return path


def save_ip_adapter_bin(path: Path, unet, seed: int = 0) -> Path:
    """As h94/IP-Adapter's ip-adapter_sd15.bin: a pickled {"image_proj": ..., "ip_adapter": ...}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ip_adapter_state_dict(unet, seed), path)
    return path


def save_clip_vision(folder: Path, projection_dim: int = 32, seed: int = 0) -> Path:
    """A CLIPVisionModelWithProjection folder (config.json + model.safetensors), 32 px images."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, image_size=32, patch_size=4))
    model.save_pretrained(folder)
    return folder
