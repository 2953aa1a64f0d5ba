"""DreamBoothConfig: YAML + --set overrides, validation messages, the shipped example configs, batch layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from guardforge.errors import InvalidRequest
from guardforge.train.dreambooth.config import DreamBoothConfig, load_config
from guardforge.train.dreambooth.data import DreamBoothBatches, ImageTransform
from tests.test_dreambooth_train import make_images

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "db.yaml"
    path.write_text(text)
    return path


BASE = """
base_model: tiny-sd
instance_data_dir: data/dog
instance_prompt: a photo of sks dog
class_prompt: a photo of dog
output_dir: runs/dog
precision: 32
lora:
  rank: 8
"""


def test_yaml_and_set_overrides(tmp_path):
    config = load_config(write_yaml(tmp_path, BASE), [
        "learning_rate=2e-6", "lora.alpha=16", "mode=lora", "validation_prompts=[a sks dog, a sks dog swimming]",
        "snr_gamma=5", "with_prior_preservation=false", "devices=2"])
    assert config.learning_rate == 2e-6 and config.mode == "lora"
    assert config.lora.rank == 8 and config.lora.alpha == 16.0
    assert config.validation_prompts == ["a sks dog", "a sks dog swimming"]
    assert config.snr_gamma == 5.0 and config.with_prior_preservation is False and config.devices == 2
    assert config.precision == "32"  # YAML's int 32 is Lightning's "32"
    assert config.resolved_class_batch_size == 0
    assert config.resolved_export_formats == ["lora_diffusers", "lora_kohya"]
    assert config.resolved_class_data_dir == Path("runs/dog/class_images")


@pytest.mark.parametrize(("override", "message"), [
    (["nonsense=1"], "nonsense"),
    (["resolution=500"], "multiple of 8"),
    (["class_prompt=null"], "class_prompt"),
    (["export_formats=[lora_kohya]"], "use mode: lora"),
    (["precision=64"], "precision"),
    (["export_name=../escape"], "plain file name"),
    (["accelerator=cpu", "precision=16-mixed"], "needs a GPU"),
    (["strategy=fsdp"], "strategy fsdp shards over CUDA GPUs: set accelerator: gpu"),
    (["strategy=fsdp", "accelerator=gpu", "mode=lora", "export_formats=null"], "fsdp trains full models only"),
])
def test_invalid_configs_say_what_is_wrong(tmp_path, override, message):
    with pytest.raises(ValidationError, match=message):
        load_config(write_yaml(tmp_path, BASE), override)


def test_malformed_set_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="key=value"):
        load_config(write_yaml(tmp_path, BASE), ["learning_rate"])
    with pytest.raises(InvalidRequest, match="not a section"):
        load_config(write_yaml(tmp_path, BASE), ["lora.rank.x=1"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("dreambooth-*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    config = load_config(path)
    assert isinstance(config, DreamBoothConfig)


def test_batches_hold_instance_and_class_examples_in_ratio(tmp_path):
    instance = make_images(tmp_path / "i", (255, 0, 0), count=3)
    classes = make_images(tmp_path / "c", (0, 0, 255), count=5)
    ids_i, ids_c = torch.full((77,), 1), torch.full((77,), 2)
    dataset = DreamBoothBatches(instance, classes, instance_batch_size=2, class_batch_size=4,
                                transform=ImageTransform(16, random_flip=True), instance_input_ids=ids_i,
                                class_input_ids=ids_c, seed=0)
    seen_instance = set()
    for step, batch in zip(range(3), dataset):
        assert batch["micro_step"] == step and batch["num_instance"] == 2
        assert batch["pixel_values"].shape == (6, 3, 16, 16)
        assert (batch["input_ids"][:2] == 1).all() and (batch["input_ids"][2:] == 2).all()
        # Red instance images first, blue class images after: the rows are what the ids say they are.
        red, blue = batch["pixel_values"][:, 0].mean((1, 2)), batch["pixel_values"][:, 2].mean((1, 2))
        assert (red[:2] > blue[:2]).all() and (blue[2:] > red[2:]).all()
        seen_instance.update(dataset._pick("instance", instance, 2, step))
    assert seen_instance == set(instance)  # a shuffled pass covers every image before repeating
    # A batch is a pure function of the step: a loader started at step 2 (a resume) sees the same batch.
    resumed = DreamBoothBatches(instance, classes, instance_batch_size=2, class_batch_size=4,
                                transform=ImageTransform(16, random_flip=True), instance_input_ids=ids_i,
                                class_input_ids=ids_c, seed=0, start_step=2)
    assert torch.equal(next(iter(resumed))["pixel_values"], dataset.batch(2)["pixel_values"])


@pytest.mark.parametrize(("device", "expected"), [
    ("cuda:1", ("gpu", [1])), ("cuda", ("gpu", [0])), ("cpu", ("cpu", 1)), ("mps", ("mps", 1)),
    ("xpu:0", ("auto", 1)), ("auto", ("auto", 1)),
])
def test_a_server_job_trains_on_its_workers_device(tmp_path, device, expected):
    from guardforge.train.dreambooth.remote import confine

    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "dog").mkdir(parents=True)
    config = DreamBoothConfig(base_model="tiny-sd", instance_data_dir="dog", instance_prompt="a sks dog",
                              with_prior_preservation=False, output_dir="run")
    confined = confine(config, owner="alice", data_dir=data, runs_dir=runs, max_steps=1000, max_resolution=1024,
                       max_class_images=100, device=device)
    assert (confined.accelerator, confined.devices) == expected
