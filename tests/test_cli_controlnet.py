"""`guardforge generate` with ControlNet units, `--from-png` restoring them, and `guardforge models list`."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from guardforge.storage.outputs import read_infotext
from tests.test_cli_generate import env, run_main, saved_paths  # noqa: F401 (fixtures)
from tests.tiny_controlnet import save_tiny_controlnet


def _setup(gf_home, tmp_path):
    save_tiny_controlnet(gf_home / "models" / "ControlNet" / "tiny-cn")
    control = tmp_path / "square.png"
    image = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 24, 24), outline="black", width=2)
    image.save(control)
    return control


def test_generate_with_units_and_restore_them_from_png(gf_home, run_main, tmp_path):
    control = _setup(gf_home, tmp_path)
    base = ["generate", "a square", "-m", "tiny-sd", "--steps", "2", "--seed", "3", "--width", "16", "--height",
            "16"]
    code, out, err = run_main(*base, "--control", str(control), "--control-model", "tiny-cn",
                              "--control-module", "canny", "--control-weight", "0.8", "--control-mode", "prompt",
                              "--control-end", "0.9")
    assert code == 0, err
    [(path, _)] = saved_paths(out)
    info = read_infotext(path)
    assert 'ControlNet 0: "Module: canny, Model: tiny-cn [' in info
    assert "Weight: 0.8" in info and "Guidance End: 0.9" in info and "Control Mode: My prompt is more important" in info
    code, out, err = run_main(*base)
    [(plain, _)] = saved_paths(out)
    assert not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(plain)))

    # --from-png without the control image: the units are named and left out, the rest is restored.
    code, out, err = run_main("generate", "--from-png", path)
    assert code == 0, err
    assert re.search(r"names ControlNet unit\(s\) tiny-cn \[\w+\] \(canny\), not restored: a PNG holds no "
                     r"control image; pass each with --control IMAGE", " ".join(err.split()))
    [(again_plain, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(again_plain)), np.asarray(Image.open(plain)))
    # With it, the same image again.
    code, out, err = run_main("generate", "--from-png", path, "--control", str(control))
    assert code == 0, err
    [(again, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


def test_bad_control_options_are_one_line_errors(gf_home, run_main, tmp_path):
    control = _setup(gf_home, tmp_path)
    base = ["generate", "x", "-m", "tiny-sd", "--steps", "2"]
    cases = [
        (["--control", str(control)], "--control options need --control-model NAME"),
        (["--control", str(control), "--control-model", "tiny-cn", "--control-weight", "1", "--control-weight", "2",
          "--control-model", "tiny-cn", "--control-weight", "3"], "--control-weight is given 3 times for 2"),
        (["--control", str(control), "--control-model", "tiny-cn", "--control-mode", "loud"],
         "--control-mode 'loud' is not one of"),
        (["--control", str(tmp_path / "missing.png"), "--control-model", "tiny-cn"], "is not a file"),
        (["--control-model", "tiny-cn"], "controlnet unit 0 has no image, and there is no init_image"),
        (["--control", str(control), "--control-model", "tiny-cn", "--control-module", "openpose"],
         "'openpose' is unavailable"),
    ]
    for extra, needle in cases:
        code, out, err = run_main(*base, *extra)
        assert code != 0 and needle in " ".join(err.split()), (extra, err)
        assert "Traceback" not in err


def test_models_list_shows_controlnets(gf_home, run_main, tmp_path):
    _setup(gf_home, tmp_path)
    code, out, err = run_main("models", "list", "--kind", "controlnet")
    assert code == 0 and "tiny-cn" in out and "controlnet" in out


def test_models_list_of_an_empty_kind_says_where_files_go_and_what_is_built_in(gf_home, run_main, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_main("models", "list", "--kind", "upscaler")
    assert code == 0 and " ".join(out.split()).startswith(f"no models; put upscalers in {gf_home / 'models' / 'ESRGAN'}")
    assert "Lanczos and Nearest are built in" in out
    code, out, _ = run_main("models", "list", "--kind", "vae")
    assert "no models; put vaes in" in out and "built in" not in out
