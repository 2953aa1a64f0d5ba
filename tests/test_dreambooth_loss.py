"""The DreamBooth loss against the formulas written out by hand: targets, Min-SNR weights, offset noise, lambda.

The reference below uses only the scheduler's alphas_cumprod table and plain tensor arithmetic, never
diffusers' add_noise / get_velocity / compute_snr, so a wrong formula in the module cannot cancel out.
"""

from __future__ import annotations

import pytest
import torch

from guardforge.train.dreambooth.data import generator_for, tokenize
from guardforge.train.dreambooth.module import DreamBoothModule
from guardforge.train.dreambooth.run import BaseComponents
from tests.test_dreambooth_train import tiny_config

NUM_INSTANCE = 2
MICRO_STEP = 7


def module_for(base: BaseComponents, config, prediction_type: str) -> DreamBoothModule:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(base.scheduler.config, prediction_type=prediction_type)
    return DreamBoothModule(config, unet=base.unet, vae=base.vae, text_encoder=base.text_encoder,
                            tokenizer=base.tokenizer, noise_scheduler=scheduler)


def a_batch(tokenizer) -> dict:
    pixels = torch.rand((4, 3, 16, 16), generator=torch.Generator().manual_seed(11)) * 2 - 1
    ids = torch.stack([tokenize(tokenizer, "a photo of sks dog")] * NUM_INSTANCE
                      + [tokenize(tokenizer, "a photo of dog")] * (4 - NUM_INSTANCE))
    return {"pixel_values": pixels, "input_ids": ids, "num_instance": NUM_INSTANCE, "micro_step": MICRO_STEP}


@torch.no_grad()
def loss_by_hand(module: DreamBoothModule, batch: dict, *, prediction_type: str, snr_gamma: float | None,
                 noise_offset: float, prior_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # The same random draws, in the same order, as the module makes them (that order is part of resume).
    generator = generator_for(module.config.seed, 0, "noise", MICRO_STEP)
    x0 = module.vae.encode(batch["pixel_values"]).latent_dist.sample(generator=generator)
    x0 = x0 * module.vae.config.scaling_factor
    eps = torch.randn(x0.shape, generator=generator)
    if noise_offset:
        eps = eps + noise_offset * torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=generator)
    t = torch.randint(0, 1000, (x0.shape[0],), generator=generator)

    alpha_bar = module.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    # v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022, eq. 9 with alpha^2 = alpha_bar).
    target = eps if prediction_type == "epsilon" else alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    prediction = module.unet(x_t, t, module.text_encoder(batch["input_ids"])[0]).sample
    per_example = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        snr = (alpha_bar / (1 - alpha_bar)).flatten()
        # Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma)/SNR on the epsilon loss, /(SNR + 1) on the v loss.
        denominator = snr if prediction_type == "epsilon" else snr + 1
        per_example = per_example * torch.clamp(snr, max=snr_gamma) / denominator
    instance = per_example[:NUM_INSTANCE].mean()
    prior = per_example[NUM_INSTANCE:].mean()
    return instance + prior_weight * prior, instance, prior


# With an offset the batch draws timesteps whose SNRs (16.2, 1.1, 6.9, 0.04) both gammas clamp.
@pytest.mark.parametrize("prediction_type, snr_gamma, noise_offset", [
    ("epsilon", None, 0.0),
    ("epsilon", 5.0, 0.1),
    ("v_prediction", None, 0.0),
    ("v_prediction", 1.0, 0.05),
])
def test_training_loss_is_the_formula(tmp_path, tiny_model_dir, prediction_type, snr_gamma, noise_offset):
    base = BaseComponents.from_folder(tiny_model_dir)
    config = tiny_config(tmp_path, tiny_model_dir, snr_gamma=snr_gamma, noise_offset=noise_offset,
                         prior_loss_weight=0.5)
    module = module_for(base, config, prediction_type)
    module.eval()  # same forward as training here (no dropout in the tiny model), and no trainer attached
    batch = a_batch(base.tokenizer)

    with pytest.warns(UserWarning, match="self.log"):  # Lightning warns that no trainer is attached to log to
        out = module.training_step(batch, 0)
    loss, instance, prior = loss_by_hand(module, batch, prediction_type=prediction_type, snr_gamma=snr_gamma,
                                         noise_offset=noise_offset, prior_weight=0.5)
    torch.testing.assert_close(out["instance_loss"], instance, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["prior_loss"], prior, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss"].detach(), loss, rtol=1e-5, atol=1e-7)


def test_the_reference_tells_the_settings_apart(tmp_path, tiny_model_dir):
    """Each option changes the loss, so agreement above is not agreement between two ignored settings."""
    base = BaseComponents.from_folder(tiny_model_dir)
    config = tiny_config(tmp_path, tiny_model_dir)
    module = module_for(base, config, "epsilon")
    batch = a_batch(base.tokenizer)
    plain = loss_by_hand(module, batch, prediction_type="epsilon", snr_gamma=None, noise_offset=0.0,
                         prior_weight=1.0)[0]
    # gamma 0.1 is below the SNR of two of this batch's four timesteps, so the clamp is active.
    for changed in ({"prediction_type": "v_prediction"}, {"snr_gamma": 0.1}, {"noise_offset": 0.1},
                    {"prior_weight": 0.5}):
        options = {"prediction_type": "epsilon", "snr_gamma": None, "noise_offset": 0.0, "prior_weight": 1.0,
                   **changed}
        assert abs(float(loss_by_hand(module, batch, **options)[0] - plain)) > 1e-4, changed
