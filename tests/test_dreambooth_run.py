"""DreamBooth end to end through the Studio and the CLI: screen, class images, train, export, generate."""

from __future__ import annotations

import numpy as np
import yaml

from guardforge.engine.request import GenerationRequest
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from tests.test_dreambooth_guard import RedIsUnsafe, WordIsUnsafe
from tests.test_dreambooth_train import make_images, tiny_config


def pixels(studio, prompt: str, model: str = "tiny-sd") -> np.ndarray:
    result = studio.generate(GenerationRequest(prompt=prompt, model=model, seed=5, steps=3, width=16, height=16),
                             save=False)
    return np.asarray(result.images[0].pil, dtype=np.int16)


def test_studio_train_dreambooth_lora_end_to_end(gf_home, tmp_path):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=gf_home),
                    guard=Guard(load_policy("default"), text_backend=WordIsUnsafe(), image_backend=RedIsUnsafe()))
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    config = tiny_config(tmp_path, "tiny-sd", class_data_dir=None, num_class_images=2, mode="lora",
                         train_text_encoder=True, max_steps=4, learning_rate=5e-2, export_name="sks-dog",
                         validation_prompts=["a photo of sks dog"], validation_interval=2, validation_steps=2,
                         class_images={"steps": 2, "seed": 0})
    events = []
    result = studio.train_dreambooth(config, progress=events.append)

    phases = list(dict.fromkeys(e.phase for e in events))
    assert phases == ["screening", "class_images", "training", "exporting", "done"]
    assert [e.step for e in events if e.phase == "training"] == [1, 2, 3, 4]
    assert result.steps == 4 and result.class_images_generated == 2 and result.final_loss is not None
    assert sorted(p.name for p in (config.output_dir / "class_images").glob("*.png")) == [
        "class-00000.png", "class-00001.png"]
    assert (config.output_dir / "validation" / "step-00004" / "00.png").is_file()
    models = gf_home / "models" / "Lora"
    assert result.exports == {"lora_diffusers": models / "sks-dog-diffusers",
                              "lora_kohya": models / "sks-dog.safetensors"}
    # In the registry without a restart, and usable in a prompt: both formats give the same image,
    # which is not the base model's.
    assert {"sks-dog", "sks-dog-diffusers"} <= set(studio.registry.names(kind="lora"))
    assert result.models == {"lora_diffusers": "sks-dog-diffusers", "lora_kohya": "sks-dog"}
    base = pixels(studio, "a photo of sks dog")
    kohya = pixels(studio, "<lora:sks-dog:1> a photo of sks dog")
    diffusers_format = pixels(studio, "<lora:sks-dog-diffusers:1> a photo of sks dog")
    assert np.abs(kohya - diffusers_format).max() <= 1
    assert np.abs(kohya - base).max() > 1

    # A second run reuses the class images instead of making them again.
    again = studio.train_dreambooth(config.model_copy(update={"max_steps": 1, "validation_prompts": []}))
    assert again.class_images_generated == 0 and again.class_images_reused == 2


def test_cli_train_dreambooth_full_then_generate(gf_home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from guardforge.cli import _register, app
    from guardforge.studio import Studio

    # The shipped "off" policy: this test is about the command, the guard has its own tests above.
    monkeypatch.setenv("GUARDFORGE_GUARD__POLICY", "off")
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    make_images(tmp_path / "class", (40, 40, 200), count=2)
    config_path = tmp_path / "db.yaml"
    config_path.write_text(yaml.safe_dump({
        "base_model": "tiny-sd", "instance_data_dir": str(tmp_path / "instance"),
        "instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog",
        "class_data_dir": str(tmp_path / "class"), "num_class_images": 2, "resolution": 16, "max_steps": 8,
        "learning_rate": 1e-3, "accelerator": "cpu", "logger": "csv", "output_dir": str(tmp_path / "run"),
        "export_name": "sks-cli", "export_formats": ["diffusers"], "validation_prompts": []}))
    # The class folder was filled by hand with 2 images, and 2 are asked for: the CLI makes none.
    (tmp_path / "class" / "img-0.png").rename(tmp_path / "class" / "class-00000.png")
    (tmp_path / "class" / "img-1.png").rename(tmp_path / "class" / "class-00001.png")

    _register()
    runner = CliRunner()
    first = runner.invoke(app, ["train", "dreambooth", str(config_path), "--set", "max_steps=2",
                                "--set", "checkpoint_interval=2"])
    assert first.exit_code == 0, first.output
    assert "diffusers:" in first.output and "trained 2 steps" in first.output
    # Resume from the checkpoint at step 2 and go on to 4.
    second = runner.invoke(app, ["train", "dreambooth", str(config_path), "--set", "max_steps=4",
                                 "--resume", "latest"])
    assert second.exit_code == 0, second.output
    assert "trained 4 steps" in second.output

    studio = Studio()
    assert studio.registry.resolve("sks-cli").path == gf_home / "models" / "Stable-diffusion" / "sks-cli"
    assert np.abs(pixels(studio, "a photo of sks dog", "sks-cli")
                  - pixels(studio, "a photo of sks dog")).max() > 1


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    import subprocess
    import sys

    config_path = tmp_path / "db.yaml"
    config_path.write_text("base_model: x\ninstance_data_dir: d\ninstance_prompt: p\noutput_dir: o\n")
    done = subprocess.run([sys.executable, "-m", "guardforge", "train", "dreambooth", str(config_path),
                           "--set", "resolution=30"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error: resolution:") and "multiple of 8" in done.stderr
    assert "Traceback" not in done.stderr


def test_folder_base_with_prior_preservation_needs_only_a_full_class_folder(gf_home, tmp_path):
    import pytest

    from guardforge.errors import InvalidRequest
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=gf_home),
                    guard=Guard(load_policy("default"), text_backend=WordIsUnsafe(), image_backend=RedIsUnsafe()))
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    folder_base = gf_home / "models" / "Stable-diffusion" / "tiny-sd"  # a path, not a registry name
    config = tiny_config(tmp_path, folder_base, num_class_images=2, max_steps=2, export_name="sks-folder")
    with pytest.raises(InvalidRequest, match="2 of 2 missing"):  # a path cannot make class images
        studio.train_dreambooth(config)
    config.resolved_class_data_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(make_images(tmp_path / "made", (40, 40, 200), count=2)):
        path.rename(config.resolved_class_data_dir / f"class-{i:05d}.png")
    result = studio.train_dreambooth(config)
    assert result.steps == 2 and result.class_images_generated == 0


def test_submit_checks_the_config_against_the_workers_devices(gf_home):
    """With `device: auto` the config alone cannot tell 16-mixed is impossible; the workers' CPU device can."""
    import pytest

    from guardforge.errors import InvalidRequest
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from guardforge.train.dreambooth.config import DreamBoothConfig

    studio = Studio(Settings(home=gf_home, device="auto"))
    make_images(studio.settings.resolved_training_data_dir / "dog", (40, 200, 40), count=2)
    config = DreamBoothConfig(base_model="tiny-sd", instance_data_dir="dog", instance_prompt="a sks dog",
                              with_prior_preservation=False, output_dir="run", resolution=16, max_steps=1,
                              precision="16-mixed")
    assert [worker.device for worker in studio.workers.workers] == ["cpu"]  # no GPU here
    with pytest.raises(InvalidRequest, match="16-mixed needs a GPU"):
        studio.submit_dreambooth(config)
    assert studio.jobs.active(kind="dreambooth") == []
