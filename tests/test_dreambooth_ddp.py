"""DreamBooth under DDP on the CPU: `guardforge train dreambooth` in two gloo processes, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from tests.test_dreambooth_train import make_images


def test_cli_trains_with_ddp_on_two_cpu_processes(gf_home, tmp_path):
    make_images(tmp_path / "instance", (40, 200, 40), count=3)
    make_images(tmp_path / "class", (40, 40, 200), count=2)
    for i in range(2):  # filled by hand, so neither rank makes class images
        (tmp_path / "class" / f"img-{i}.png").rename(tmp_path / "class" / f"class-{i:05d}.png")
    config_path = tmp_path / "db.yaml"
    config_path.write_text(yaml.safe_dump({
        "base_model": "tiny-sd", "instance_data_dir": str(tmp_path / "instance"),
        "instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog",
        "class_data_dir": str(tmp_path / "class"), "num_class_images": 2, "resolution": 16, "max_steps": 3,
        "learning_rate": 1e-3, "logger": "csv", "output_dir": str(tmp_path / "run"), "checkpoint_interval": 3,
        "export_name": "sks-ddp", "export_formats": ["single_file"], "validation_prompts": [],
        "accelerator": "cpu", "strategy": "ddp", "devices": 2}))

    env = {**os.environ, "GUARDFORGE_HOME": str(gf_home), "GUARDFORGE_GUARD__POLICY": "off",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "guardforge", "train", "dreambooth", str(config_path)],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # Lightning's own report that the second process joined over gloo.
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output, output[-3000:]
    assert "trained 3 steps" in output

    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    # Only rank 0 exports: one file, complete enough to load.
    assert (gf_home / "models" / "Stable-diffusion" / "sks-ddp.safetensors").is_file()
    from safetensors.torch import load_file

    assert any(k.startswith("model.diffusion_model.") for k in load_file(
        gf_home / "models" / "Stable-diffusion" / "sks-ddp.safetensors"))
