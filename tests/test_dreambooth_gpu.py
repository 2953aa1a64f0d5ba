"""DreamBooth on a CUDA GPU: FSDP (full mode), resume under FSDP, 16-bit and bf16 mixed precision.

Skipped where no CUDA device is present (CI); run on a GPU machine with
`python -m pytest -q tests/test_dreambooth_gpu.py`. On one GPU torch runs FSDP as NO_SHARD: these tests cover
the wrapping, the checkpoint gather, the resume and the unwrapped copy for validation and export, but not
sharding itself (world size > 1), which needs a machine with several GPUs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guardforge.train.dreambooth.callbacks import build_pipeline
from guardforge.train.dreambooth.run import BaseComponents, fit
from tests.test_dreambooth_train import (
    data,  # noqa: F401  (a fixture)
    run,
    straight_and_resumed_losses,
    tiny_config,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_config(root, model, **overrides):
    values = {"accelerator": "gpu", "devices": 1, "strategy": "fsdp", "max_steps": 8, "learning_rate": 1e-3,
              "train_text_encoder": True, "validation_prompts": ["a photo of sks dog"], "validation_interval": 4,
              "validation_steps": 2}
    return tiny_config(root, model, **{**values, **overrides})


def test_fsdp_full_trains_validates_and_hands_back_an_unwrapped_model(data, tiny_model_dir):
    from torch.distributed.fsdp import FullyShardedDataParallel

    root, instance, classes = data
    base = BaseComponents.from_folder(tiny_model_dir)
    unet_before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    config = gpu_config(root, tiny_model_dir, max_steps=30)
    losses = []
    module, trainer = fit(config, base, instance, classes, progress=lambda e: losses.append(e.loss))
    assert trainer.global_step == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    # The module handed back is plain (no FSDP units) and holds the trained weights.
    assert not any(isinstance(m, FullyShardedDataParallel) for m in module.modules())
    after = module.unet.state_dict()
    assert any(not torch.equal(after[k].cpu(), v) for k, v in unet_before.items())
    for step in (4, 8):
        assert (config.output_dir / "validation" / f"step-{step:05d}" / "00.png").is_file()
    image = build_pipeline(module)("a photo of sks dog", num_inference_steps=2, height=16, width=16,
                                   output_type="np").images[0]
    assert image.shape == (16, 16, 3) and np.isfinite(image).all()


def test_fsdp_resume_gives_the_same_losses(data, tiny_model_dir):
    root, instance, classes = data
    common = {"gradient_accumulation_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 2,
              "validation_prompts": [], "snr_gamma": 5.0}
    straight, stopped_and_resumed = straight_and_resumed_losses(
        gpu_config(root, tiny_model_dir, output_dir=root / "a", **common),
        gpu_config(root, tiny_model_dir, output_dir=root / "b", **common), tiny_model_dir, instance, classes)
    # GPU kernels are not bit-reproducible run to run; the CPU test holds resume to 1e-6.
    np.testing.assert_allclose(stopped_and_resumed, straight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_on_the_gpu(data, tiny_model_dir, precision, strategy):
    root, instance, classes = data
    config = tiny_config(root, tiny_model_dir, accelerator="gpu", devices=1, precision=precision, max_steps=20,
                         train_batch_size=2, strategy=strategy)
    _, trainer, losses = run(config, tiny_model_dir, instance, classes)
    assert trainer.global_step == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
