"""`guardforge generate --ip-adapter ...`, `--from-png` restoring the adapter, one-line errors, and `models list`."""

from __future__ import annotations

import numpy as np
from PIL import Image

from guardforge.storage.outputs import read_infotext
from tests.test_cli_generate import env, run_main, saved_paths  # noqa: F401 (fixtures)
from tests.tiny_ip_adapter import save_clip_vision, save_ip_adapter_file


def _setup(gf_home, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(gf_home / "models" / "Stable-diffusion" / "tiny-sd" / "unet")
    save_ip_adapter_file(gf_home / "models" / "ipadapter" / "tiny-ip.safetensors", unet)
    save_clip_vision(gf_home / "models" / "clip_vision" / "tiny-clip")
    picture = tmp_path / "picture.png"
    image = Image.new("RGB", (40, 40), "red")
    image.paste(Image.new("RGB", (20, 20), "yellow"), (10, 10))
    image.save(picture)
    return picture


BASE = ["generate", "a square", "-m", "tiny-sd", "--steps", "2", "--seed", "3", "--width", "16", "--height", "16"]


def test_generate_with_an_ip_adapter_and_restore_it_from_png(gf_home, run_main, tmp_path):
    picture = _setup(gf_home, tmp_path)
    code, out, err = run_main(*BASE, "--ip-adapter", "tiny-ip", "--ip-adapter-image", str(picture),
                              "--ip-adapter-scale", "0.8")
    assert code == 0, err
    [(path, _)] = saved_paths(out)
    info = read_infotext(path)
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: tiny-ip [' in info and "Weight: 0.8" in info
    code, out, err = run_main(*BASE)
    [(plain, _)] = saved_paths(out)
    assert not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(plain)))

    code, out, err = run_main("generate", "--from-png", path)  # no picture: said, and left out
    assert code == 0 and "give --ip-adapter-image to use it" in " ".join(err.split()), err
    [(again_plain, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(again_plain)), np.asarray(Image.open(plain)))
    code, out, err = run_main("generate", "--from-png", path, "--ip-adapter-image", str(picture))
    assert code == 0, err
    [(again, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


def test_bad_ip_adapter_options_are_one_line_errors(gf_home, run_main, tmp_path):
    picture = _setup(gf_home, tmp_path)
    base = ["generate", "x", "-m", "tiny-sd", "--steps", "2"]
    cases = [
        (["--ip-adapter", "tiny-ip"], "need --ip-adapter-image"),
        (["--ip-adapter-image", str(picture)], "needs --ip-adapter MODEL"),
        (["--ip-adapter", "tiny-ip", "--ip-adapter-image", str(tmp_path / "missing.png")], "is not a file"),
        (["--ip-adapter", "nope", "--ip-adapter-image", str(picture)], "no ipadapter named 'nope'"),
        (["--ip-adapter", "tiny-ip", "--ip-adapter-image", str(picture), "--ip-adapter-encoder", "clip_g"],
         "no clip_vision named 'clip_g'"),
        (["--ip-adapter", "tiny-ip", "--ip-adapter-image", str(picture), "--ip-adapter-scale", "5"], "scale"),
    ]
    for extra, needle in cases:
        code, out, err = run_main(*base, *extra)
        assert code != 0 and needle in " ".join(err.split()), (extra, err)
        assert "Traceback" not in err


def test_models_list_shows_adapters_and_encoders(gf_home, run_main, tmp_path):
    _setup(gf_home, tmp_path)
    code, out, err = run_main("models", "list", "--kind", "ipadapter")
    assert code == 0 and "tiny-ip" in out
    code, out, err = run_main("models", "list", "--kind", "clip_vision")
    assert code == 0 and "tiny-clip" in out
