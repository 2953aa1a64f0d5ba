"""The tiny-shapes training code (guardforge_build/shapes/), run for a few steps at toy width."""

from __future__ import annotations

import json
import logging

import torch

from guardforge_build.shapes.config import ShapesTrainConfig
from guardforge_build.shapes.train import train_tiny_shapes
from guardforge_build.shapes.vae import reconstruction_loss


def test_reconstruction_loss_weights_object_pixels_up():
    x = torch.full((1, 3, 8, 8), -1.0)
    x[:, :, 3:5, 3:5] = 1.0  # a 2x2 "object" on a flat background (the corner pixel is background)
    on_background, on_object = x.clone(), x.clone()
    on_background[:, :, 0, 7] += 0.5
    on_object[:, :, 3, 3] -= 0.5
    plain = [reconstruction_loss(r, x, 0.0) for r in (on_background, on_object)]
    weighted = [reconstruction_loss(r, x, 9.0) for r in (on_background, on_object)]
    assert torch.isclose(plain[0], plain[1])
    assert torch.isclose(plain[0], torch.nn.functional.l1_loss(on_background, x)
                         + torch.nn.functional.mse_loss(on_background, x))
    assert torch.isclose(weighted[0], plain[0])
    assert torch.isclose(weighted[1], 10 * plain[1])


def toy_config(tmp_path, unet_steps: int) -> ShapesTrainConfig:
    return ShapesTrainConfig.model_validate({
        "work_dir": str(tmp_path / "work"), "export_dir": str(tmp_path / "export"), "threads": 1,
        "vae": {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "latent_channels": 4, "n_images": 16,
                "batch_size": 8, "object_weight": 9.0, "max_steps": 2, "decoder_max_steps": 2},
        "unet": {"block_out_channels": [8, 16], "attention_levels": [False, True], "attention_head_dim": 4,
                 "text_hidden_size": 16, "text_layers": 1, "text_heads": 2, "n_images": 16, "batch_size": 8,
                 "warmup_steps": 1, "max_steps": unet_steps, "export_every_n_steps": 1000,
                 "ema_decay": 0.9},
        "sample_decoder": {"n_samples": 4, "steps": 2, "sample_batch": 2, "n_images": 8, "batch_size": 4,
                           "max_steps": 2},
    })


def test_one_command_trains_every_stage_exports_a_pipeline_and_resumes(tmp_path, caplog):
    from diffusers import StableDiffusionPipeline

    report = train_tiny_shapes(toy_config(tmp_path, unet_steps=2))
    assert report["vae_steps"] == 2 and report["unet_steps"] == 2 and report["decoder_steps"] == 2
    assert report["sample_decoder_steps"] == 2
    samples = torch.load(tmp_path / "work" / "decoder-samples.pt")
    assert samples["latents"].shape == (4, 4, 16, 16) and samples["images"].shape == (4, 3, 64, 64)
    # The export takes the last decoder stage's VAE.
    exported = (tmp_path / "export" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert exported == (tmp_path / "work" / "vae-sampled" / "diffusion_pytorch_model.safetensors").read_bytes()
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "export"), local_files_only=True)
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size == 16
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)

    # A longer budget with --resume continues the UNet from its checkpoint rather than starting over;
    # the finished VAE and decoder stages are not run again.
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        resumed = train_tiny_shapes(toy_config(tmp_path, unet_steps=4), resume=True)
    assert "Restored all states from the checkpoint" in caplog.text
    assert resumed["unet_steps"] == 4
    assert "vae_steps" not in resumed and "decoder_steps" not in resumed and "sample_decoder_steps" not in resumed
    assert json.loads((tmp_path / "work" / "unet_report.json").read_text())["unet_steps"] == 4


def test_sampled_scenes_state_every_attribute_and_never_a_held_out_pair():
    """The sample-decoder stage pairs each sample with its scene's true image: that is only right when the caption
    fixes the image, and the held-out pairs must stay unseen."""
    from guardforge.train.shapes import data
    from guardforge.train.shapes.detector import detect
    from guardforge_build.shapes.sample_decoder import fully_described_scenes

    scenes = fully_described_scenes(200, seed=3)
    assert len({caption for _, caption in scenes}) > 150
    for scene, caption in scenes:
        (obj,) = scene.objects
        assert (obj.colour, obj.shape) not in data.HELD_OUT and obj.colour != scene.background
        words = caption.split()
        assert {obj.size, obj.colour, obj.shape, scene.background} <= set(words), caption
        assert any(phrase in caption for phrase in data._POSITION_PHRASES[obj.position]), caption
        found = detect(data.render(scene))
        assert (found.colour, found.shape, found.position, found.size) == (obj.colour, obj.shape, obj.position,
                                                                           obj.size)


def test_pair_batches_draw_the_asked_share_from_each_pool():
    from guardforge_build.shapes.sample_decoder import PairDataModule

    first = (torch.zeros(10, 1), torch.zeros(10, 1))
    second = (torch.ones(990, 1), torch.ones(990, 1))
    torch.manual_seed(0)
    drawn = torch.cat([latents for latents, _ in PairDataModule(first, second, 0.5, 50).train_dataloader()])
    assert len(drawn) == 1000
    assert 0.4 < float((drawn == 0).float().mean()) < 0.6  # 1% of the pool, half of the draws


def test_bad_sample_decoder_settings_are_refused_before_anything_runs():
    import pytest
    from pydantic import ValidationError

    for bad, message in (({"sample_fraction": 2}, "less than or equal to 1"), ({"cfg_range": [5, 1]}, "low <= high"),
                         ({"n_samples": 0}, "greater than or equal to 1"), ({"bogus": 1}, "Extra inputs")):
        with pytest.raises(ValidationError, match=message):
            ShapesTrainConfig.model_validate({"sample_decoder": bad})


def test_a_config_without_export_dir_does_not_export_into_the_shipped_model():
    default = ShapesTrainConfig.model_validate({}).export_dir
    assert "assets" not in default.parts and default.parts[0] == "runs", default
