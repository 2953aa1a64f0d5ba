"""FSDP for DreamBooth: one unit per block, and checkpoints gathered from the trained weights alone."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy


def unwrapped_name(name: str) -> str:
    # FSDP units and activation-checkpoint wrappers insert these into parameter names, not into state dicts.
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


class TrainedWeightsFSDP(FSDPStrategy):
    """Lightning's FSDP, whose checkpoint state dict holds the trained weights only, gathered to rank 0.

    Checkpoints never need the frozen weights (they are the base model's), and torch's full-state-dict
    hooks miss a unit whose weights are all frozen (the root unit under LoRA: conv_in, the embeddings):
    after a grad-enabled forward its parameters are plain tensors, so the hook finds them absent and fails.
    Gathering through summon_full_params and reading the trainable parameters avoids both.
    """

    def lightning_module_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(self.model, writeback=False, rank0_only=True):
            if self.global_rank != 0:
                return {}
            return {unwrapped_name(name): p.detach().to("cpu", copy=True)
                    for name, p in self.lightning_module.named_parameters() if p.requires_grad}


def fsdp_strategy() -> TrainedWeightsFSDP:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    # One FSDP unit per transformer, ResNet and CLIP layer: weights are gathered a block at a time.
    # use_orig_params lets frozen and trained weights (the VAE, LoRA's base layers) share a unit.
    return TrainedWeightsFSDP(auto_wrap_policy={BasicTransformerBlock, ResnetBlock2D, CLIPEncoderLayer},
                              state_dict_type="full", use_orig_params=True)
