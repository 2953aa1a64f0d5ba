"""DreamBoothConfig: one pydantic schema for the YAML file, the CLI --set overrides and the API body."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from guardforge.errors import InvalidRequest

LrSchedule = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                     "polynomial"]
Precision = Literal["32", "16-mixed", "bf16-mixed"]
ExportFormat = Literal["diffusers", "single_file", "lora_diffusers", "lora_kohya"]


class LoraOptions(BaseModel):
    """LoRA adapter shape; target modules are the attention projections, as in diffusers' LoRA scripts."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    unet_target_modules: list[str] = ["to_k", "to_q", "to_v", "to_out.0"]
    text_encoder_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "out_proj"]


class ClassImageOptions(BaseModel):
    """How the base model makes the class images; seed i is `seed + i`."""

    model_config = ConfigDict(extra="forbid")

    sampler: str = "Euler a"
    steps: int = Field(25, ge=1)
    cfg_scale: float = Field(7.0, ge=0.0)
    negative_prompt: str = ""
    seed: int = Field(0, ge=0)


class DreamBoothConfig(BaseModel):
    """Everything a DreamBooth run needs; names follow diffusers' train_dreambooth.py where they exist."""

    model_config = ConfigDict(extra="forbid")

    # Data
    base_model: str  # registry name or a diffusers folder
    instance_data_dir: Path
    instance_prompt: str = Field(..., min_length=1)  # with the identifier: "a photo of sks dog"
    class_prompt: str | None = None  # "a photo of dog"
    class_data_dir: Path | None = None  # default: <output_dir>/class_images
    num_class_images: int = Field(100, ge=0)
    class_images: ClassImageOptions = ClassImageOptions()
    with_prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0.0)  # lambda in the paper
    resolution: int = Field(512, ge=8)
    center_crop: bool = False
    random_flip: bool = False

    # What is trained
    train_text_encoder: bool = False
    mode: Literal["full", "lora"] = "full"
    lora: LoraOptions = LoraOptions()

    # Optimisation
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler: LrSchedule = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    max_steps: int = Field(400, ge=1)
    train_batch_size: int = Field(1, ge=1)  # instance examples per batch
    class_batch_size: int | None = Field(None, ge=1)  # class examples per batch; None: as many (1:1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    precision: Precision = "32"
    seed: int = Field(0, ge=0)
    snr_gamma: float | None = Field(None, gt=0)  # Min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is usual
    noise_offset: float = Field(0.0, ge=0.0)  # 0.05-0.1 lets the model learn very dark/bright images

    # Validation, checkpoints, logging
    validation_prompts: list[str] = []
    validation_interval: int = Field(100, ge=0)  # steps; 0 turns validation off
    validation_steps: int = Field(25, ge=1)  # denoising steps per validation image
    validation_seed: int = Field(0, ge=0)
    checkpoint_interval: int = Field(500, ge=1)
    checkpoints_to_keep: int = Field(2, ge=1)
    logger: Literal["tensorboard", "wandb", "csv"] = "tensorboard"

    # Where it runs
    accelerator: Literal["auto", "cpu", "gpu", "mps"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    devices: int | list[int] | Literal["auto"] = "auto"  # a count, or which GPUs: [1] is cuda:1
    num_nodes: int = Field(1, ge=1)
    dataloader_workers: int = Field(0, ge=0)

    # Output
    output_dir: Path
    export_name: str | None = None  # default: the output folder's name
    export_formats: list[ExportFormat] | None = None  # default: full -> diffusers + single_file; lora -> both LoRA

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: object) -> object:
        # YAML reads `precision: 32` as an int; Lightning's name is the string.
        return str(value) if isinstance(value, int) else value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DreamBoothConfig:
        if self.with_prior_preservation and not self.class_prompt:
            raise ValueError("with_prior_preservation needs a class_prompt such as 'a photo of dog'")
        if self.with_prior_preservation and self.num_class_images < 1:
            raise ValueError("with_prior_preservation needs num_class_images >= 1")
        if self.strategy == "fsdp" and self.accelerator != "gpu":
            raise ValueError("strategy fsdp shards over CUDA GPUs: set accelerator: gpu (Lightning's FSDP does "
                             "not run on the CPU; use ddp there)")
        if self.strategy == "fsdp" and self.mode == "lora":
            raise ValueError("strategy fsdp trains full models only: LoRA's adapters are a few MB, so use ddp (its "
                             "FSDP resume path mis-keys the optimizer state of a partly frozen model)")
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            raise ValueError("precision 16-mixed needs a GPU; on the CPU use 32 or bf16-mixed")
        lora_only = {"lora_diffusers", "lora_kohya"}
        formats = set(self.export_formats or [])
        if self.mode == "full" and formats & lora_only:
            raise ValueError(f"mode full cannot export {sorted(formats & lora_only)}; use mode: lora")
        if self.mode == "lora" and formats - lora_only:
            raise ValueError(f"mode lora exports LoRA files only, not {sorted(formats - lora_only)}")
        if self.export_name is not None and ("/" in self.export_name or "\\" in self.export_name
                                             or self.export_name.startswith(".")):
            raise ValueError("export_name must be a plain file name, without folders")
        return self

    @property
    def resolved_class_batch_size(self) -> int:
        if not self.with_prior_preservation:
            return 0
        return self.class_batch_size or self.train_batch_size

    @property
    def resolved_class_data_dir(self) -> Path:
        return self.class_data_dir or self.output_dir / "class_images"

    @property
    def resolved_export_name(self) -> str:
        return self.export_name or self.output_dir.resolve().name

    @property
    def resolved_export_formats(self) -> list[str]:
        if self.export_formats is not None:
            return list(self.export_formats)
        return ["diffusers", "single_file"] if self.mode == "full" else ["lora_diffusers", "lora_kohya"]


class TrainProgress(BaseModel):
    """One optimizer step done (or a phase change); sent to the CLI progress bar, the job queue and the UI."""

    phase: Literal["screening", "class_images", "training", "exporting", "done"]
    step: int = 0
    total: int = 0
    loss: float | None = None
    instance_loss: float | None = None
    prior_loss: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides to nested dicts; the value is YAML, so `5e-6`, `true`, `[a, b]` all work."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--set expects key=value, got {item!r}")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidRequest(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> DreamBoothConfig:
    """Read a YAML file (or start empty), apply --set overrides, validate."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidRequest(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
        data = loaded or {}
    return DreamBoothConfig.model_validate(apply_overrides(data, overrides or []))
