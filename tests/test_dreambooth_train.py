"""DreamBooth training on tiny real SD components: the loss falls, resume is exact, LoRA and VAE stay put."""

from __future__ import annotations

from pathlib import Path
from threading import Event

import numpy as np
import pytest
import torch
from PIL import Image

from guardforge.errors import Cancelled, InvalidRequest
from guardforge.train.dreambooth.config import DreamBoothConfig
from guardforge.train.dreambooth.run import BaseComponents, fit


def make_images(folder: Path, colour: tuple[int, int, int], count: int = 3, size: int = 24) -> list[Path]:
    """Solid-ish colour squares with a stripe, so crops and flips differ but the subject is obvious."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        array = np.empty((size, size + 4 * i, 3), dtype=np.uint8)
        array[:] = colour
        array[:, : size // 4] = 255 - np.array(colour, dtype=np.uint8)
        path = folder / f"img-{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def tiny_config(root: Path, model: Path, **overrides) -> DreamBoothConfig:
    values = {
        "base_model": str(model), "instance_data_dir": root / "instance", "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of dog", "class_data_dir": root / "class", "num_class_images": 3,
        "resolution": 16, "max_steps": 6, "learning_rate": 1e-3, "output_dir": root / "out",
        "accelerator": "cpu", "logger": "csv", "checkpoint_interval": 100, "validation_prompts": [], "seed": 3,
    }
    values.update(overrides)
    return DreamBoothConfig(**values)


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[Path], list[Path]]:
    instance = make_images(tmp_path / "instance", (200, 40, 40))
    classes = make_images(tmp_path / "class", (40, 40, 200))
    return tmp_path, instance, classes


def run(config, model_dir, instance, classes, **kwargs):
    losses: list[float] = []
    module, trainer = fit(config, BaseComponents.from_folder(model_dir), instance, classes,
                          progress=lambda e: losses.append(e.loss), **kwargs)
    return module, trainer, losses


def test_loss_falls_on_a_tiny_dataset(data, tiny_model_dir):
    root, instance, classes = data
    config = tiny_config(root, tiny_model_dir, max_steps=40, train_batch_size=2)
    _, trainer, losses = run(config, tiny_model_dir, instance, classes)
    assert trainer.global_step == 40 and len(losses) == 40
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses


def straight_and_resumed_losses(straight_config, resumed_config, model_dir, instance, classes):
    """The losses of an 8-step run, and of the same run cancelled after step 4 and resumed from `latest`."""
    _, _, straight = run(straight_config, model_dir, instance, classes)
    cancel, interrupted = Event(), []

    def stop_at_half(event):
        interrupted.append(event.loss)
        if event.step == 4:
            cancel.set()

    with pytest.raises(Cancelled, match="step 4/8"):
        fit(resumed_config, BaseComponents.from_folder(model_dir), instance, classes, progress=stop_at_half,
            cancel=cancel)
    assert len(interrupted) == 4
    _, trainer, resumed = run(resumed_config, model_dir, instance, classes, resume="latest")
    assert trainer.global_step == 8
    assert len(straight) == 8 and len(interrupted + resumed) == 8
    return straight, interrupted + resumed


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_gives_the_same_losses(data, tiny_model_dir, mode):
    root, instance, classes = data
    # Accumulation, warm-up and a cosine schedule: every piece of state a resume must bring back.
    # LoRA dropout draws from the global RNG, so the RNG states in the checkpoint matter too.
    common = {"max_steps": 8, "gradient_accumulation_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 2,
              "random_flip": True, "noise_offset": 0.05, "snr_gamma": 5.0, "train_text_encoder": True,
              "mode": mode, "lora": {"rank": 4, "alpha": 4, "dropout": 0.1},
              "learning_rate": 1e-3 if mode == "full" else 1e-2}
    straight, stopped_and_resumed = straight_and_resumed_losses(
        tiny_config(root, tiny_model_dir, output_dir=root / "a", **common),
        tiny_config(root, tiny_model_dir, output_dir=root / "b", **common), tiny_model_dir, instance, classes)
    np.testing.assert_allclose(stopped_and_resumed, straight, rtol=0, atol=1e-6)


def test_lora_trains_only_lora_and_the_vae_never_changes(data, tiny_model_dir):
    root, instance, classes = data
    base = BaseComponents.from_folder(tiny_model_dir)
    before = {f"{part}.{k}": v.clone() for part in ("unet", "vae", "text_encoder")
              for k, v in getattr(base, part).state_dict().items()}
    config = tiny_config(root, tiny_model_dir, mode="lora", train_text_encoder=True, max_steps=4,
                         learning_rate=1e-2)
    module, _ = fit(config, base, instance, classes)

    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(name.startswith("text_encoder.") for name in trainable)
    after = {f"{part}.{k}": v for part in ("unet", "vae", "text_encoder")
             for k, v in getattr(module, part).state_dict().items()}
    lora_keys = [k for k in after if "lora_" in k]
    assert any(not torch.equal(after[k], 0 * after[k]) for k in lora_keys if "lora_B" in k)  # LoRA learnt
    # Base weights appear under PEFT's base_layer names once wrapped; strip that to compare with the base.
    for key, value in after.items():
        if "lora_" in key:
            continue
        original = before[key.replace(".base_layer", "")]
        assert torch.equal(value, original), key
    assert not module.vae.training  # kept in eval mode although Lightning called train()


def test_full_mode_trains_unet_but_never_the_vae(data, tiny_model_dir):
    root, instance, classes = data
    base = BaseComponents.from_folder(tiny_model_dir)
    vae_before = {k: v.clone() for k, v in base.vae.state_dict().items()}
    unet_before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    te_before = {k: v.clone() for k, v in base.text_encoder.state_dict().items()}
    module, _ = fit(tiny_config(root, tiny_model_dir, max_steps=3), base, instance, classes)
    assert all(torch.equal(v, vae_before[k]) for k, v in module.vae.state_dict().items())
    assert all(torch.equal(v, te_before[k]) for k, v in module.text_encoder.state_dict().items())
    assert any(not torch.equal(v, unet_before[k]) for k, v in module.unet.state_dict().items())
    assert not module.vae.training and not module.text_encoder.training


def test_validation_images_go_to_disk_and_tensorboard(data, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, instance, classes = data
    config = tiny_config(root, tiny_model_dir, max_steps=4, logger="tensorboard", validation_interval=2,
                         validation_steps=2, validation_prompts=["a photo of sks dog", "sks dog swimming"])
    withheld = []

    def screen(images):  # the guard's role: here it withholds the second prompt's image
        withheld.append(len(images))
        return [images[0], None]

    fit(config, BaseComponents.from_folder(tiny_model_dir), instance, classes, screen=screen)
    assert withheld == [2, 2]
    for step in (2, 4):
        folder = config.output_dir / "validation" / f"step-{step:05d}"
        assert sorted(p.name for p in folder.iterdir()) == ["00.png"]
        assert Image.open(folder / "00.png").size == (16, 16)
    events = EventAccumulator(str(config.output_dir / "logs"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("validation/00")] == [2, 4]
    assert "validation/01" not in events.Tags()["images"]
    assert len(events.Scalars("train/loss")) == 4


def test_both_losses_are_logged_and_add_up(data, tiny_model_dir):
    import csv

    root, instance, classes = data
    config = tiny_config(root, tiny_model_dir, max_steps=3, prior_loss_weight=0.25)
    _, _, reported = run(config, tiny_model_dir, instance, classes)
    with (config.output_dir / "logs" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert [int(row["step"]) for row in rows] == [0, 1, 2]
    for row, progress_loss in zip(rows, reported, strict=True):
        total, instance_loss, prior = (float(row[f"train/{k}"]) for k in ("loss", "instance_loss", "prior_loss"))
        assert instance_loss > 0 and prior > 0
        assert total == pytest.approx(instance_loss + 0.25 * prior, rel=1e-6)
        assert total == pytest.approx(progress_loss, rel=1e-6)  # the CLI bar shows what the logger holds


def test_checkpoints_to_keep_and_resume_from_a_path(data, tiny_model_dir):
    root, instance, classes = data
    config = tiny_config(root, tiny_model_dir, max_steps=5, checkpoint_interval=1, checkpoints_to_keep=2)
    run(config, tiny_model_dir, instance, classes)
    folder = config.output_dir / "checkpoints"
    # The newest two interval checkpoints survive, plus last.ckpt for `--resume latest`.
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step-000004.ckpt", "step-000005.ckpt"]

    # A named checkpoint (not `latest`) continues from its own step: steps 5..7 run again from step 4.
    longer = config.model_copy(update={"max_steps": 7, "output_dir": root / "longer"})
    steps = []
    _, trainer = fit(longer, BaseComponents.from_folder(tiny_model_dir), instance, classes,
                     progress=lambda event: steps.append(event.step), resume=folder / "step-000004.ckpt")
    assert steps == [5, 6, 7] and trainer.global_step == 7
    with pytest.raises(InvalidRequest, match="no checkpoint file"):
        fit(longer, BaseComponents.from_folder(tiny_model_dir), instance, classes, resume=root / "nope.ckpt")


def test_centre_crop_takes_the_middle_and_random_crop_moves():
    from guardforge.train.dreambooth.data import ImageTransform

    # 16 rows x 48 columns: the middle 16 columns white, the sides black.
    array = np.zeros((16, 48, 3), dtype=np.uint8)
    array[:, 16:32] = 255
    image = Image.fromarray(array)
    centre = ImageTransform(16, center_crop=True)
    for seed in range(5):
        assert torch.equal(centre(image, torch.Generator().manual_seed(seed)), torch.ones(3, 16, 16))
    randomly = ImageTransform(16)
    crops = {float(randomly(image, torch.Generator().manual_seed(seed)).mean()) for seed in range(8)}
    assert len(crops) > 1 and min(crops) < 1.0
