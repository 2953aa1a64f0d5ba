"""Exports into the models folder: a diffusers folder, an original-layout single file, LoRA (diffusers, kohya).

Files land in <models>/Stable-diffusion/ and <models>/Lora/, where the registry finds them on refresh,
with the names A1111, ComfyUI and diffusers users expect.
"""

from __future__ import annotations

from pathlib import Path

import torch

from guardforge.errors import InvalidRequest

# -- LoRA --------------------------------------------------------------------------------------------------

def lora_state_dicts(unet, text_encoder) -> tuple[dict, dict | None]:
    """PEFT-format LoRA weights of the UNet and (when it has an adapter) the text encoder."""
    from peft.utils import get_peft_model_state_dict

    unet_layers = get_peft_model_state_dict(unet)
    te_layers = get_peft_model_state_dict(text_encoder) if getattr(text_encoder, "peft_config", None) else None
    return unet_layers, te_layers


def to_kohya(unet_layers: dict, te_layers: dict | None, alpha: float) -> dict[str, torch.Tensor]:
    """kohya-ss keys: lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha (dots -> underscores)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, layers in (("lora_unet", unet_layers), ("lora_te", te_layers or {})):
        for key, value in layers.items():
            module, _, kind = key.rpartition(".lora_")
            if prefix == "lora_te" and not module.startswith("text_model."):
                # transformers >= 5.6 flattened CLIPTextModel; kohya names keep the older text_model. path.
                module = "text_model." + module
            name = f"{prefix}_{module.replace('.', '_')}"
            if kind == "A.weight":
                out[f"{name}.lora_down.weight"] = value.contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(alpha))
            elif kind == "B.weight":
                out[f"{name}.lora_up.weight"] = value.contiguous()
            else:
                raise InvalidRequest(f"cannot express LoRA weight {key!r} in kohya format")
    return out


# -- Writing -----------------------------------------------------------------------------------------------

def export_targets(models_dir: Path, name: str) -> dict[str, Path]:
    """Where each export format of `name` is written in the models folder."""
    checkpoints, loras = models_dir / "Stable-diffusion", models_dir / "Lora"
    return {"diffusers": checkpoints / name, "single_file": checkpoints / f"{name}.safetensors",
            "lora_diffusers": loras / f"{name}-diffusers", "lora_kohya": loras / f"{name}.safetensors"}


def export_all(module, formats: list[str], models_dir: Path, name: str, *, alpha: float = 4.0,
               overwrite: bool = True) -> dict[str, Path]:
    """Write each format; returns format -> path. `module` is the trained DreamBoothModule."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from guardforge.models.convert import diffusers_to_original_sd
    from guardforge.train.dreambooth.callbacks import build_pipeline

    targets = export_targets(models_dir, name)
    for fmt in formats:
        if targets[fmt].exists() and not overwrite:
            raise InvalidRequest(f"{targets[fmt].relative_to(models_dir)} exists in the models folder; "
                                 "choose another export_name")
    metadata = {"guardforge": "dreambooth", "name": name}
    written: dict[str, Path] = {}
    with torch.no_grad():
        if "diffusers" in formats:
            build_pipeline(module).save_pretrained(targets["diffusers"], safe_serialization=True)
            written["diffusers"] = targets["diffusers"]
        if "single_file" in formats:
            state = diffusers_to_original_sd(module.unet, module.vae, module.text_encoder)
            state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            targets["single_file"].parent.mkdir(parents=True, exist_ok=True)
            save_file(state, str(targets["single_file"]), metadata=metadata)
            written["single_file"] = targets["single_file"]
        if {"lora_diffusers", "lora_kohya"} & set(formats):
            unet_layers, te_layers = lora_state_dicts(module.unet, module.text_encoder)
            unet_layers = {k: v.detach().to("cpu") for k, v in unet_layers.items()}
            te_layers = {k: v.detach().to("cpu") for k, v in te_layers.items()} if te_layers else None
            if "lora_diffusers" in formats:
                from diffusers.utils import convert_state_dict_to_diffusers

                StableDiffusionPipeline.save_lora_weights(
                    targets["lora_diffusers"], unet_lora_layers=convert_state_dict_to_diffusers(unet_layers),
                    text_encoder_lora_layers=convert_state_dict_to_diffusers(te_layers) if te_layers else None,
                    # The adapter configs carry lora_alpha; without them the loader assumes alpha == rank.
                    unet_lora_adapter_metadata=module.unet.peft_config["default"].to_dict(),
                    text_encoder_lora_adapter_metadata=(
                        module.text_encoder.peft_config["default"].to_dict() if te_layers else None),
                    safe_serialization=True)
                written["lora_diffusers"] = targets["lora_diffusers"]
            if "lora_kohya" in formats:
                targets["lora_kohya"].parent.mkdir(parents=True, exist_ok=True)
                save_file(to_kohya(unet_layers, te_layers, alpha), str(targets["lora_kohya"]),
                          metadata={**metadata, "ss_network_dim": str(module.config.lora.rank),
                                    "ss_network_alpha": str(alpha)})
                written["lora_kohya"] = targets["lora_kohya"]
    return written
