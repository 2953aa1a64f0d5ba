"""The tiny-shapes ControlNet's training code (guardforge_build/shapes/controlnet.py): its data and its step."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from guardforge.engine.controlnet_preprocessors import detect as detect_control

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect
from guardforge_build.shapes.controlnet import (
    ControlNetModule,
    ControlNetTrainConfig,
    build_controlnet,
    canny_edges,
    make_control_dataset,
    random_scene,
    train_controlnet,
)

POSITION_WORDS = {"left", "right", "top", "bottom", "centre", "center", "middle"}


def _colour_changes(image: np.ndarray) -> np.ndarray:
    """Pixels with a neighbour (8-connected) of another colour: where an edge can be."""
    flat = image.astype(np.int32) @ np.array([1, 256, 65536])
    return (ndimage.maximum_filter(flat, size=3) != flat) | (ndimage.minimum_filter(flat, size=3) != flat)


def test_edges_are_cv2_canny_of_the_rgb_scene_and_trace_its_objects():
    import cv2

    cfg = ControlNetTrainConfig(n_images=60, upscaled_edge_rate=0.0)
    images, edges, captions, scenes = make_control_dataset(cfg, seed=5)
    for image, edge, scene in zip(images, edges, scenes, strict=True):
        assert np.array_equal(edge, cv2.Canny(image, 100, 200))  # sd-webui-controlnet's canny, defaults
        product = detect_control(Image.fromarray(image), "canny", resolution=64).image
        assert np.array_equal(np.asarray(product)[:, :, 0], edge)
        on = edge > 0
        assert on.any()
        # Every edge pixel lies where the scene changes colour, and the edges enclose each object's place.
        assert not (on & ~_colour_changes(image)).any()
        if len(scene.objects) == 1:
            ys, xs = np.nonzero(on)
            cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
            px, py = data.POSITIONS[scene.objects[0].position]
            assert abs(cx - px) <= 2 and abs(cy - py) <= 2


def test_edges_made_at_a_processor_resolution_stay_on_the_objects_outline():
    rng = random.Random(0)
    for _ in range(8):
        scene, _, _ = random_scene(rng, two_object_rate=0.0, drop_position_rate=1.0)
        image = np.asarray(data.render(scene))
        plain = canny_edges(image)
        for resolution in (128, 512):
            upscaled = canny_edges(image, resolution=resolution)
            assert upscaled.shape == (64, 64, 3) and upscaled.dtype == np.uint8
            assert (upscaled[:, :, 0] == upscaled[:, :, 2]).all()
            # Shrunk to 64x64 and cut back to black and white (as the product fits a map to the output size),
            # the edges stay within two pixels of the outline cv2.Canny finds at 64x64.
            assert set(np.unique(upscaled)) <= {0, 255}
            near = ndimage.binary_dilation(plain[:, :, 0] > 0, iterations=2)
            weight = upscaled[:, :, 0].astype(float)
            assert weight.sum() > 0 and weight[near].sum() / weight.sum() > 0.97


def test_captions_drop_the_position_at_the_configured_rate_and_describe_the_scene():
    rng = random.Random(1)
    stated = []
    for _ in range(2000):
        scene, caption, say_position = random_scene(rng, two_object_rate=0.25, drop_position_rate=0.75)
        words = set(caption.replace(",", "").split())
        assert bool(words & POSITION_WORDS) == say_position, caption
        for obj in scene.objects:
            assert obj.colour in words and obj.shape in words and (obj.colour, obj.shape) not in data.HELD_OUT
        stated.append(say_position)
    assert 0.22 < np.mean(stated) < 0.28
    # Places are uniform for single objects: the centre is no more likely than another place.
    singles = [random_scene(rng, 0.0, 1.0)[0].objects[0].position for _ in range(2000)]
    counts = {p: singles.count(p) for p in data.POSITIONS}
    assert min(counts.values()) > 330 and max(counts.values()) < 470, counts
    assert all(random_scene(rng, 0.25, 1.0)[2] is False for _ in range(200))
    assert all(random_scene(rng, 0.25, 0.0)[2] is True for _ in range(200))


def test_dataset_is_reproducible_and_its_scenes_are_what_the_detector_reads():
    cfg = ControlNetTrainConfig(n_images=30, two_object_rate=0.0, upscaled_edge_rate=0.5)
    first, second = make_control_dataset(cfg, seed=3), make_control_dataset(cfg, seed=3)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    for image, scene in zip(first[0], first[3], strict=True):
        found = detect(image, shapes=data.SHAPES)
        (obj,) = scene.objects
        assert (found.colour, found.shape, found.position) == (obj.colour, obj.shape, obj.position)


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    from tests.tiny import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("cn-base") / "tiny-sd")


def toy_config(tmp_path, base, steps: int) -> ControlNetTrainConfig:
    # The toy VAE halves the image once (64x64 -> 32x32), so the conditioning embedding downsamples once.
    return ControlNetTrainConfig(base_model=base, work_dir=tmp_path / "work", export_dir=tmp_path / "export",
                                 n_images=24, batch_size=8, conditioning_channels=[8, 16], warmup_steps=1,
                                 max_steps=steps, export_every_n_steps=1000)


def test_training_step_changes_the_controlnet_and_leaves_the_unet_frozen(tmp_path, toy_base):
    import lightning as L

    from guardforge_build.shapes.controlnet import ControlDataModule, load_frozen

    torch.manual_seed(0)
    cfg = toy_config(tmp_path, toy_base, steps=3)
    vae, unet, text_encoder, tokenizer, noise_scheduler = load_frozen(toy_base)
    controlnet = build_controlnet(unet, cfg.conditioning_channels)
    datamodule = ControlDataModule(cfg, vae, text_encoder, tokenizer, seed=0)
    datamodule.setup()
    module = ControlNetModule(cfg, controlnet, unet, noise_scheduler, datamodule.empty_state)
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    controlnet_before = {k: v.clone() for k, v in controlnet.state_dict().items()}
    # A fresh ControlNet adds nothing: its output convolutions start at zero.
    latents, edges, states = next(iter(datamodule.train_dataloader()))
    assert torch.isfinite(module.loss(latents, edges, states))
    down, mid = controlnet(latents, torch.tensor([500] * len(latents)), states,
                           controlnet_cond=edges.float().expand(-1, 3, -1, -1) / 255, return_dict=False)
    assert all(not r.any() for r in down) and not mid.any()

    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule)
    assert trainer.global_step == 3
    assert np.isfinite(float(trainer.callback_metrics["controlnet/loss"]))
    assert all(torch.equal(unet_before[k], v) for k, v in unet.state_dict().items())
    assert all(not p.requires_grad for p in unet.parameters())
    changed = [k for k, v in controlnet.state_dict().items() if not torch.equal(controlnet_before[k], v)]
    assert any("controlnet_down_blocks" in k for k in changed) and any("controlnet_cond_embedding" in k
                                                                      for k in changed)
    # Only the ControlNet is optimised.
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in controlnet.parameters()}


def test_one_command_trains_and_exports_a_controlnet_diffusers_loads(tmp_path, toy_base):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from PIL import Image

    report = train_controlnet(toy_config(tmp_path, toy_base, steps=2))
    assert report["controlnet_steps"] == 2 and np.isfinite(report["controlnet_final_loss"])
    exported = ControlNetModel.from_pretrained(str(tmp_path / "export"), local_files_only=True)
    assert (tmp_path / "export" / "diffusion_pytorch_model.safetensors").exists()
    assert list(exported.config.conditioning_embedding_out_channels) == [8, 16]
    plain = StableDiffusionPipeline.from_pretrained(str(toy_base), local_files_only=True)
    pipe = StableDiffusionControlNetPipeline(**plain.components, controlnet=exported)
    edges = Image.fromarray(canny_edges(np.asarray(data.render(random_scene(random.Random(0), 0, 1)[0]))))
    image = pipe("a red circle", image=edges, num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_config_refuses_unknown_keys_and_bad_rates(tmp_path):
    from pydantic import ValidationError

    (tmp_path / "bad.yaml").write_text("max_step: 10\n")
    with pytest.raises(ValidationError, match="max_step"):
        ControlNetTrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValidationError):
        ControlNetTrainConfig(drop_position_rate=1.5)
