"""The DreamBooth LightningModule: instance loss + lambda x class-prior loss (Ruiz et al. 2022), nothing else.

Devices, precision, accumulation, clipping, checkpointing and logging belong to the Lightning Trainer.
"""

from __future__ import annotations

import random
from functools import partial

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from guardforge.train.dreambooth.config import DreamBoothConfig
from guardforge.train.dreambooth.data import STREAM, generator_for, global_rows
from guardforge.train.dreambooth.fsdp import unwrapped_name


class DreamBoothModule(L.LightningModule):
    """UNet (and optionally the text encoder) learn the subject; the VAE is frozen and stays in eval mode.

    Components come in already loaded (the base model's); `tokenizer` and `inference_scheduler` are kept
    only so that validation and export can rebuild a pipeline from the weights being trained.
    """

    def __init__(self, config: DreamBoothConfig, *, unet, vae, text_encoder, tokenizer, noise_scheduler,
                 inference_scheduler=None):
        super().__init__()
        self.config = config
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.noise_scheduler = noise_scheduler
        self.inference_scheduler = inference_scheduler or noise_scheduler
        # Checkpoints hold only what is trained (see on_save_checkpoint), so loading is not strict.
        self.strict_loading = False
        self._pending_rng: dict | None = None

        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(config.train_text_encoder and config.mode == "full")
        if config.mode == "lora":
            self._add_lora_adapters()
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self.vae.eval()

    def _add_lora_adapters(self) -> None:
        from peft import LoraConfig

        lora = self.config.lora
        self.unet.requires_grad_(False)
        # add_adapter leaves only the LoRA matrices trainable; the base weights stay frozen and untouched.
        self.unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                         init_lora_weights="gaussian", target_modules=lora.unet_target_modules))
        if self.config.train_text_encoder:
            self.text_encoder.add_adapter(LoraConfig(
                r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, init_lora_weights="gaussian",
                target_modules=lora.text_encoder_target_modules))

    def train(self, mode: bool = True) -> DreamBoothModule:
        # Lightning calls train() on the whole module at fit start; frozen parts must stay in eval mode.
        super().train(mode)
        self.vae.eval()
        if not self.config.train_text_encoder:
            self.text_encoder.eval()
        return self

    # The method -------------------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        pixel_values, input_ids = batch["pixel_values"], batch["input_ids"]
        num_instance = int(batch["num_instance"])
        # Noise, timesteps and the VAE sample come from (seed, micro-step), drawn for the whole global batch and
        # sliced to this rank's rows: exact on resume, and the same per step on any number of processes.
        generator = generator_for(self.config.seed, STREAM, "noise", int(batch["micro_step"]), device=self.device)
        world_size = self._trainer.world_size if self._trainer is not None else 1  # a module used alone is one process
        rows = global_rows(self.global_rank, world_size, num_instance,
                           pixel_values.shape[0] - num_instance, device=self.device)
        num_global = len(rows) * world_size

        def draw(sample, *shape, dtype):
            return sample((num_global, *shape), generator=generator, device=self.device, dtype=dtype)[rows]

        with torch.no_grad():
            posterior = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
            # diffusers' latent_dist.sample(generator), with the draw made for the global batch
            epsilon = draw(torch.randn, *posterior.mean.shape[1:], dtype=posterior.mean.dtype)
            latents = (posterior.mean + posterior.std * epsilon) * self.vae.config.scaling_factor

        noise = draw(torch.randn, *latents.shape[1:], dtype=latents.dtype)
        if self.config.noise_offset:
            # Offset noise (Guttenberg 2023): a per-channel constant shift, so the mean brightness is learnt too.
            noise = noise + self.config.noise_offset * draw(torch.randn, latents.shape[1], 1, 1,
                                                            dtype=latents.dtype)
        timesteps = draw(partial(torch.randint, 0, self.noise_scheduler.config.num_train_timesteps),
                         dtype=torch.int64)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)

        # Instance and class examples share one forward pass (diffusers' train_dreambooth.py does the same).
        encoder_hidden_states = self.text_encoder(input_ids)[0]
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]

        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"DreamBooth cannot train prediction_type {prediction_type!r}")

        per_example = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.config.snr_gamma is not None:
            per_example = per_example * self._min_snr_weights(timesteps, prediction_type)

        instance_loss = per_example[:num_instance].mean()
        loss = instance_loss
        out = {"instance_loss": instance_loss.detach()}
        if num_instance < per_example.shape[0]:
            prior_loss = per_example[num_instance:].mean()
            loss = instance_loss + self.config.prior_loss_weight * prior_loss
            out["prior_loss"] = prior_loss.detach()

        batch_size = per_example.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in out.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return {"loss": loss, **out}

    def _min_snr_weights(self, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v."""
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps).float()
        clipped = torch.clamp(snr, max=self.config.snr_gamma)
        return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        c = self.config
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                      weight_decay=c.adam_weight_decay, eps=c.adam_epsilon)
        # Lightning steps the schedule once per optimizer step, so warm-up and length are in optimizer steps.
        schedule = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.lr_warmup_steps,
                                 num_training_steps=c.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # Checkpoints: only trained weights, plus every RNG state ---------------------------------------------

    def trainable_names(self) -> set[str]:
        """State-dict names of the trained parameters, as a full (gathered) state dict spells them."""
        return {unwrapped_name(name) for name, p in self.named_parameters() if p.requires_grad}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val and self.config.strategy == "fsdp":
            # Each rank holds a shard: only FSDP's own clip_grad_norm_ sees the global norm.
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen VAE (and the frozen base weights under LoRA) are the base model's: no need to copy them.
        # Filter what the strategy gathered rather than calling state_dict() again: under FSDP that call is
        # collective and shard-shaped.
        names = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        checkpoint["dreambooth_config"] = self.config.model_dump(mode="json")
        checkpoint["global_batch"] = self.global_batch()

    def global_batch(self) -> dict[str, int]:
        """Instance and class examples per micro-step over all processes: what a resume must keep to continue
        exactly, whatever the number of processes (data.py)."""
        world = self.trainer.world_size
        return {"instance": self.config.train_batch_size * world,
                "class": self.config.resolved_class_batch_size * world}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("global_batch")
        if saved is not None and saved != self.global_batch():
            from lightning.pytorch.utilities import rank_zero_warn

            def said(batch: dict[str, int]) -> str:
                return f"{batch['instance']} instance + {batch['class']} class examples"

            rank_zero_warn(f"resuming with a global batch of {said(self.global_batch())} (train_batch_size x "
                           f"processes); the checkpoint was trained with {said(saved)}: training goes on, but not as "
                           "the first run would have. Set train_batch_size so that the global batch is the same.")
        # Applied at the first batch after resume: the loader and Trainer set-up draw random numbers in between.
        self._pending_rng = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        states, self._pending_rng = self._pending_rng, None
        if states:
            torch.set_rng_state(states["torch"])
            np.random.set_state(_numpy_state_from_plain(states["numpy"]))
            random.setstate(states["python"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])


# Lightning loads checkpoints with torch.load(weights_only=True): numpy arrays are not allowed, plain lists are.
def _numpy_state_to_plain(state: tuple) -> list:
    name, keys, position, has_gauss, cached_gaussian = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)]


def _numpy_state_from_plain(plain: list) -> tuple:
    name, keys, position, has_gauss, cached_gaussian = plain
    return name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian
