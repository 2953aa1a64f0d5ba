"""`guardforge generate` and `guardforge info`: one run as users run it (`python -m guardforge` in a subprocess),
the rest through the same `main()` in-process, which saves the interpreter start-ups on a shared CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from guardforge.storage.outputs import read_infotext
from tests.inprocess_cli import cli_caller


@pytest.fixture
def env(gf_home):
    return {**os.environ, "GUARDFORGE_HOME": str(gf_home), "GUARDFORGE_GUARD__POLICY": "off",
            "HF_HUB_OFFLINE": "1", "GUARDFORGE_GUARD__OPENAI_API_KEY": "sk-not-to-be-printed"}


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "guardforge", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def run_main(env, monkeypatch, capsys):
    """Call guardforge.cli.main() as the console script does; returns (exit code, stdout, stderr)."""
    keys = ("GUARDFORGE_HOME", "GUARDFORGE_GUARD__POLICY", "GUARDFORGE_GUARD__OPENAI_API_KEY")
    return cli_caller(monkeypatch, capsys, {key: env[key] for key in keys})


def saved_paths(stdout: str) -> list[tuple[str, int]]:
    lines = re.finditer(r"^(\S+\.png)  seed=(\d+)  action=allow$", stdout, re.MULTILINE)
    return [(m.group(1), int(m.group(2))) for m in lines]


def test_generate_then_regenerate_from_png_with_an_override(run_main, tmp_path):
    # In-process: the README's command below is the run as users run it (a subprocess).
    code, out, err = run_main("generate", "a (red:1.2) square", "--negative", "blurry", "-m", "tiny-sd", "--steps",
                              "2", "--seed", "21", "--batch-size", "2", "--sampler", "k_euler_a", "--clip-skip", "2")
    assert code == 0, err
    saved = saved_paths(out)
    assert [seed for _, seed in saved] == [21, 22]
    second = saved[1][0]
    text = read_infotext(second)
    assert text.startswith("a (red:1.2) square\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a,")
    assert "Seed: 22" in text and "Clip skip: 2" in text

    # Same parameters from the PNG: the same pixels; an explicit option overrides the PNG's value.
    code, out, err = run_main("generate", "--from-png", second, "-o", str(tmp_path / "out"))
    assert code == 0, err
    [(path, seed)] = saved_paths(out)
    assert seed == 22
    assert path.startswith(str(tmp_path / "out"))
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(second)))
    code, out, err = run_main("generate", "--from-png", second, "--steps", "3")
    [(path, seed)] = saved_paths(out)
    assert seed == 22
    assert "Steps: 3," in read_infotext(path) and "Clip skip: 2" in read_infotext(path)


def test_img2img_from_files(run_main, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (40, 40), "green").save(init)
    code, out, err = run_main("generate", "a cat", "-m", "tiny-sd", "--init-image", str(init), "--strength", "0.5",
                              "--steps", "4", "--width", "24", "--height", "16", "--seed", "3")
    assert code == 0, err
    [(path, seed)] = saved_paths(out)
    assert seed == 3
    assert "img2img-images" in path and Image.open(path).size == (24, 16)
    assert "Denoising strength: 0.5" in read_infotext(path)


@pytest.mark.parametrize(("args", "message"), [
    (["x", "--width", "20"], "error: width: Value error, must be a multiple of 8, got 20 (try 16)"),
    (["x", "-m", "nope"], "error: no checkpoint named 'nope'"),
    (["x", "--vae", "nope"], "error: no vae named 'nope'; known: none (put them in the models folder's VAE/)"),
    (["x", "--sampler", "Euler z"], "error: sampler: Value error, unknown sampler 'Euler z'"),
    ([], "error: give a PROMPT, or --from-png"),
    (["--from-png", __file__], f"error: --from-png {__file__} is not a readable PNG, JPEG or WebP image"),
])
def test_errors_are_one_line(run_main, args, message):
    code, _, err = run_main("generate", *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert "Traceback" not in err


def test_info_reports_versions_devices_and_settings_without_secrets(run_main):
    code, out, err = run_main("info", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["versions"]) == {"guardforge", "python", "torch", "diffusers", "transformers"}
    assert report["devices"][-1]["device"] == "cpu"
    assert report["settings"]["guard"]["policy"] == "off"
    assert report["settings"]["guard"]["openai_api_key"] == "***"
    assert "sk-not-to-be-printed" not in out


def test_readme_main_job_draws_the_prompt_and_prints_only_our_lines(gf_home):
    """The README's first command as a new user runs it: default model and guard, a matching image, and on the
    terminal our result line, not the libraries' load reports, progress bars or deprecation warnings."""
    from guardforge.train.shapes.detector import detect

    quiet_switches = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
    env = {k: v for k, v in os.environ.items() if k not in quiet_switches and not k.startswith("GUARDFORGE_")}
    env.update(GUARDFORGE_HOME=str(gf_home), HF_HUB_OFFLINE="1")
    done = cli(env, "generate", "a red circle on a blue background")
    assert done.returncode == 0, done.stderr
    [(path, _)] = saved_paths(done.stdout)
    found = detect(Image.open(path))
    assert (found.colour, found.shape, found.background) == ("red", "circle", "blue"), found
    for chatter in ("LOAD REPORT", "Loading pipeline components", "Loading weights", "quantize_per_tensor",
                    "torchvision", "Warning"):
        assert chatter not in done.stderr, done.stderr[-2000:]


def test_a_blocked_generation_exits_non_zero(run_main, monkeypatch):
    monkeypatch.setenv("GUARDFORGE_GUARD__POLICY", "default")
    code, out, err = run_main("generate", "a naked woman, explicit sex", "-m", "tiny-sd", "--steps", "2")
    assert code == 1, err
    assert "blocked by the guard before generation" in err
    assert not saved_paths(out)


def test_usage_errors_exit_2_with_clicks_usage_text(run_main):
    code, _, err = run_main("bogus")
    assert code == 2
    assert re.search(r"^Usage: \S.* \[OPTIONS\] COMMAND \[ARGS\]\.\.\.$", err, re.MULTILINE), err
    assert "--help' for help." in err
    assert "Error: No such command 'bogus'." in err
    assert "UsageError" not in err

    code, out, err = run_main("generate", "x", "--steps", "many")
    assert code == 2
    assert "Error: Invalid value for '--steps'" in err

    # A group without its command: the help, then click's code for a missing command; nothing else.
    code, out, err = run_main("models")
    assert code == 2
    assert "list" in out + err and "hash" in out + err
    assert "error" not in (out + err).lower()


def test_ctrl_c_during_a_generation_says_interrupted_and_exits_130(run_main, monkeypatch):
    import os
    import signal
    import threading

    monkeypatch.setenv("GUARDFORGE_LIMITS__MAX_STEPS", "1000000")
    # Ctrl-C as the terminal delivers it: a real SIGINT to this process, here while the model loads or denoises
    # (a million steps outlast the timer by far). Python's own handler for the test's length: a suite started in
    # the background by a non-interactive shell inherits SIGINT ignored, and then no Ctrl-C arrives at all (the
    # million steps ran on for 10 minutes).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, out, err = run_main("generate", "a cat", "-m", "tiny-sd", "--steps", "1000000")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert err.strip().splitlines()[-1] == "interrupted"
    assert not saved_paths(out)


def test_options_override_infotext_values_guardforge_does_not_support(run_main, tmp_path):
    from PIL import PngImagePlugin

    png = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 3M SDE, "
                                "Schedule type: SGM Uniform, CFG scale: 7, Seed: 1, Size: 64x64, Model: tiny-sd, "
                                "Version: v1.10.1")
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)

    code, _, err = run_main("generate", "--from-png", str(png))
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "unknown sampler 'DPM++ 3M SDE'" in line and "schedule:" in line
    assert line.endswith(f"(read from {png}; give --sampler, --schedule to override it)"), line

    code, out, err = run_main("generate", "--from-png", str(png), "--sampler", "DPM++ 2M", "--schedule", "Automatic")
    assert code == 0, err
    [(path, seed)] = saved_paths(out)
    assert seed == 1
    assert read_infotext(path).startswith("a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, "
                                          "Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64")


def test_a_batch_past_seed_2_32_reads_back_from_its_png(run_main):
    # A1111 numbers a batch seed, seed+1 without wrapping and writes those seeds; each must be accepted back.
    code, out, err = run_main("generate", "a cat", "-m", "tiny-sd", "--steps", "2", "--seed", "4294967295",
                              "--batch-size", "2")
    assert code == 0, err
    saved = saved_paths(out)
    assert [seed for _, seed in saved] == [4294967295, 4294967296]
    assert "Seed: 4294967296," in read_infotext(saved[1][0])

    code, out, err = run_main("generate", "--from-png", saved[1][0])
    assert code == 0, err
    [(path, seed)] = saved_paths(out)
    assert seed == 4294967296
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(saved[1][0])))


def test_a_vae_from_the_vae_folder_is_used_written_and_read_back(run_main, gf_home, tmp_path):
    from tests.test_vae_selection import save_other_vae

    save_other_vae(gf_home)
    args = ("generate", "a red square", "-m", "tiny-sd", "--steps", "2", "--seed", "8", "--width", "32", "--height",
            "32")
    code, out, err = run_main(*args)
    assert code == 0, err
    [(own, _)] = saved_paths(out)
    code, out, err = run_main(*args, "--vae", "alt-vae")
    assert code == 0, err
    [(other, _)] = saved_paths(out)
    assert "VAE: alt-vae" in read_infotext(other) and "VAE" not in read_infotext(own)
    assert not np.array_equal(np.asarray(Image.open(own)), np.asarray(Image.open(other)))

    # The PNG's VAE comes back with its other parameters (the same pixels); --vae Automatic overrides it.
    code, out, err = run_main("generate", "--from-png", other, "-o", str(tmp_path / "again"))
    assert code == 0, err
    [(again, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(other)))
    code, out, err = run_main("generate", "--from-png", other, "--vae", "Automatic", "-o", str(tmp_path / "own"))
    assert code == 0, err
    [(back, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(back)), np.asarray(Image.open(own)))
    assert "VAE" not in read_infotext(back)
