"""DreamBooth on two torchrun nodes (gloo, loopback): one process's weights, rank 0 screens, resume on one process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from guardforge.train.dreambooth.config import DreamBoothConfig
from guardforge.train.dreambooth.run import BaseComponents, fit, resolve_resume
from tests.test_dreambooth_train import make_images

STEPS = 8  # long enough that the kill lands mid-run; short enough for the suite's budget
INTERVAL = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: torchrun starts its workers in their own sessions, out of its group's reach."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def kill_all(processes: list[subprocess.Popen]) -> None:
    """SIGKILL, as a node loses power: the launchers and their workers, workers first."""
    pids = [pid for process in processes for pid in descendants(process.pid)]
    for pid in [*pids, *(p.pid for p in processes)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in processes:
        process.wait(timeout=30)


def launch_two_nodes(root: Path, config_path: Path, home: Path) -> tuple[list[subprocess.Popen], list]:
    """`torchrun --nnodes 2 --nproc-per-node 1` twice, node ranks 0 and 1, meeting on loopback, as on two hosts."""
    env = {**os.environ, "GUARDFORGE_HOME": str(home), "GUARDFORGE_GUARD__POLICY": "off", "OMP_NUM_THREADS": "1"}
    port = free_port()
    processes, logs = [], []
    for node in (0, 1):
        logs.append((root / f"node{node}.log").open("w"))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "guardforge", "train", "dreambooth", str(config_path)],
            stdout=logs[-1], stderr=subprocess.STDOUT, env=env, start_new_session=True))
    return processes, logs


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, tiny_model_dir):
    """Two torchrun 'nodes' (one process each, train_batch_size 1) killed once the step-4 checkpoint is on disk."""
    import shutil

    root = tmp_path_factory.mktemp("nodes")
    home = root / "home"
    shutil.copytree(tiny_model_dir, home / "models" / "Stable-diffusion" / "tiny-sd")
    make_images(root / "instance", (40, 200, 40), count=3)
    make_images(root / "class", (40, 40, 200), count=2)
    for i in range(2):  # filled by hand: no class images to make
        (root / "class" / f"img-{i}.png").rename(root / "class" / f"class-{i:05d}.png")
    values = {
        "base_model": "tiny-sd", "instance_data_dir": str(root / "instance"), "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of dog", "class_data_dir": str(root / "class"), "num_class_images": 2,
        "resolution": 16, "max_steps": STEPS, "learning_rate": 1e-3, "lr_scheduler": "cosine", "random_flip": True,
        "noise_offset": 0.05, "logger": "csv", "checkpoint_interval": INTERVAL, "checkpoints_to_keep": STEPS,
        "validation_prompts": [], "accelerator": "cpu", "seed": 5, "export_formats": ["single_file"],
        "output_dir": str(root / "two-nodes"), "train_batch_size": 1, "strategy": "ddp", "num_nodes": 2,
        "devices": 1,
        # Adam divides by sqrt(v) + eps: where a gradient is float noise (a bias a GroupNorm cancels), eps=1e-8 turns
        # the reassociation noise of another batch split into lr-sized steps. 1e-3 keeps the comparison on the maths.
        "adam_epsilon": 1e-3}
    config_path = root / "db.yaml"
    config_path.write_text(yaml.safe_dump(values))

    processes, logs = launch_two_nodes(root, config_path, home)
    checkpoints = root / "two-nodes" / "checkpoints"
    try:
        deadline = time.monotonic() + 300  # a guard against hanging the suite, not a measurement
        while not (checkpoints / "step-000004.ckpt").exists():
            assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, \
                (root / "node0.log").read_text()[-3000:] + (root / "node1.log").read_text()[-3000:]
            time.sleep(0.02)
    finally:
        kill_all(processes)
        for log in logs:
            log.close()
    output = (root / "node0.log").read_text() + (root / "node1.log").read_text()
    one_process = DreamBoothConfig.model_validate(
        {**values, "train_batch_size": 2, "strategy": "auto", "num_nodes": 1, "devices": 1,
         "base_model": str(tiny_model_dir)})
    return root, one_process, output


def trained(checkpoint: Path) -> tuple[int, dict[str, torch.Tensor]]:
    state = torch.load(checkpoint, weights_only=False)
    return state["global_step"], state["state_dict"]


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and len(want) > 10
    worst = max(float((got[k] - want[k]).abs().max() / want[k].abs().max().clamp(min=1e-12)) for k in want)
    assert worst <= 1e-5, f"largest difference {worst:.2e} of a tensor's largest value"


def train_in_process(config: DreamBoothConfig, root: Path, **kwargs):
    instance = sorted((root / "instance").iterdir())
    classes = [root / "class" / f"class-{i:05d}.png" for i in range(2)]
    steps: list[int] = []
    module, trainer = fit(config, BaseComponents.from_folder(Path(config.base_model)), instance, classes,
                          progress=lambda event: steps.append(event.step), **kwargs)
    return module, trainer, steps


@pytest.fixture(scope="module")
def one_process_run(cluster_run):
    """The reference: one process, train_batch_size 2 (the two nodes' global batch), never stopped."""
    root, config, _ = cluster_run
    config = config.model_copy(update={"output_dir": root / "one-process"})
    train_in_process(config, root)
    return config.output_dir / "checkpoints"


@pytest.mark.cluster
def test_two_nodes_train_the_weights_of_one_process_with_their_global_batch(cluster_run, one_process_run):
    root, _, output = cluster_run
    # Lightning's own account: torchrun's environment, two processes over gloo, one per node.
    assert "distributed_backend=gloo" in output and "All distributed processes registered. Starting with 2 " \
        "processes" in output, output[-3000:]
    two_nodes = root / "two-nodes" / "checkpoints"
    for step in (2, 4):
        got_step, got = trained(two_nodes / f"step-{step:06d}.ckpt")
        want_step, want = trained(one_process_run / f"step-{step:06d}.ckpt")
        assert got_step == want_step == step
        assert_same_weights(got, want)


@pytest.mark.cluster
def test_killed_on_two_nodes_resumed_on_one_continues_to_the_same_weights(cluster_run, one_process_run):
    root, config, _ = cluster_run
    # The killed run's own folder: `latest` is its newest checkpoint, written by two processes. The step-4 one was
    # on disk before the kill, though last.ckpt may not have caught up with it: latest never goes back before it.
    resumed = config.model_copy(update={"output_dir": root / "two-nodes"})
    killed_at, _ = trained(resolve_resume(resumed, "latest"))
    assert 4 <= killed_at < STEPS, f"resumed from step {killed_at}"
    module, trainer, steps = train_in_process(resumed, root, resume="latest")
    assert steps == list(range(killed_at + 1, STEPS + 1)) and trainer.global_step == STEPS
    _, want = trained(one_process_run / f"step-{STEPS:06d}.ckpt")
    assert_same_weights({k: v for k, v in module.state_dict().items() if k in want}, want)


@pytest.mark.cluster
def test_only_rank_zero_screens_the_training_data(cluster_run):
    import sqlite3

    root, _, _ = cluster_run
    # The guard is off, yet every verdict is audited: 3 instance images, 2 prompts, 2 class images found on disk,
    # once. Each rank screening for itself would have written each of them twice.
    with sqlite3.connect(root / "home" / "guardforge.db") as db:
        rows = db.execute("SELECT count(*) FROM guard_audit WHERE checkpoint = 'training_data'").fetchone()[0]
    assert rows == 7


@pytest.mark.cluster
def test_an_error_on_rank_zero_stops_both_nodes_with_its_message(tmp_path, tiny_model_dir):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / "Stable-diffusion" / "tiny-sd")
    (tmp_path / "empty").mkdir()
    config_path = tmp_path / "db.yaml"
    config_path.write_text(yaml.safe_dump({
        "base_model": "tiny-sd", "instance_data_dir": str(tmp_path / "empty"), "instance_prompt": "a sks dog",
        "with_prior_preservation": False, "resolution": 16, "max_steps": 2, "output_dir": str(tmp_path / "run"),
        "logger": "csv", "accelerator": "cpu", "strategy": "ddp", "num_nodes": 2, "devices": 1}))
    processes, logs = launch_two_nodes(tmp_path, config_path, home)
    try:
        # Rank 1 never looks at the folder: it waits for rank 0 in the process group, and must hear why it stops
        # rather than wait there for the group's 30-minute time-out.
        codes = [process.wait(timeout=180) for process in processes]
    finally:
        kill_all(processes)
        for log in logs:
            log.close()
    for node, code in enumerate(codes):
        output = (tmp_path / f"node{node}.log").read_text()
        assert code != 0 and "empty holds no images" in output, output[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_with_another_global_batch_says_so(tmp_path, tiny_model_dir):
    from tests.test_dreambooth_train import tiny_config

    instance = make_images(tmp_path / "instance", (40, 200, 40), count=2)
    classes = make_images(tmp_path / "class", (40, 40, 200), count=2)
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=1, checkpoint_interval=1)
    fit(config, BaseComponents.from_folder(tiny_model_dir), instance, classes)
    # One process with batch 1 is not two with batch 1: the run goes on, and the warning says what to set.
    wider = config.model_copy(update={"max_steps": 2, "train_batch_size": 2})
    with pytest.warns(UserWarning, match="global batch of 2 instance [+] 2 class examples .* trained with 1 instance"):
        fit(wider, BaseComponents.from_folder(tiny_model_dir), instance, classes, resume="latest")
