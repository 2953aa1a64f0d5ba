"""DreamBooth under DDP on the CPU: `guardforge train dreambooth` in two gloo processes, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from tests.test_dreambooth_train import make_images


def ddp_config(tmp_path, **overrides):
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
        "accelerator": "cpu", "strategy": "ddp", "devices": 2, **overrides}))
    return config_path


def ddp_env(gf_home):
    return {**os.environ, "GUARDFORGE_HOME": str(gf_home), "GUARDFORGE_GUARD__POLICY": "off",
            "OMP_NUM_THREADS": "1"}


def test_cli_trains_with_ddp_on_two_cpu_processes(gf_home, tmp_path):
    config_path = ddp_config(tmp_path)
    done = subprocess.run([sys.executable, "-m", "guardforge", "train", "dreambooth", str(config_path)],
                          capture_output=True, text=True, timeout=600, env=ddp_env(gf_home), check=False)
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


def test_ctrl_c_on_one_rank_stops_both_with_a_checkpoint(gf_home, tmp_path):
    # Validation images are written by rank 0 only, after an optimizer step both ranks took together: the first
    # one on disk says training is under way on both.
    config_path = ddp_config(tmp_path, max_steps=500, checkpoint_interval=1000, validation_prompts=["a sks dog"],
                             validation_interval=1, validation_steps=1)
    first_image = tmp_path / "run" / "validation" / "step-00001" / "00.png"
    log_path = tmp_path / "train.log"  # a file, not a pipe: nobody reads a pipe while we wait, and it fills
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "guardforge", "train", "dreambooth", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, text=True, env=ddp_env(gf_home),
                                   start_new_session=True)  # its own group: rank 1 is killed with it, come what may
    try:
        deadline = time.monotonic() + 300  # a guard against hanging the suite, not a measurement
        while not first_image.exists():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)  # rank 0 only, as a terminal would if rank 1 were elsewhere
        # A rank left training alone would wait forever in its next all-reduce: the time-out is the failure.
        process.wait(timeout=300)
        output = log_path.read_text()
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "training cancelled at step" in output, output[-3000:]
    stopped_at = int(output.split("training cancelled at step ")[1].split("/")[0])
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert 1 <= checkpoint["global_step"] == stopped_at < 500
