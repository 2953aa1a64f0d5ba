"""`guardforge generate` with variation seeds and outpainting: the flags, what the PNGs record, --from-png back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from guardforge.storage.outputs import read_infotext
from tests.test_cli_generate import env, run_main, saved_paths  # noqa: F401 (fixtures)


def test_variation_flags_are_written_and_read_back_from_the_png(run_main, tmp_path):
    code, out, err = run_main("generate", "a red square", "-m", "tiny-sd", "--steps", "2", "--seed", "11",
                              "--subseed", "40", "--subseed-strength", "0.3", "--batch-size", "2",
                              "--seed-resize-from", "8x8", "--sampler", "Euler")
    assert code == 0, err
    saved = saved_paths(out)
    assert [seed for _, seed in saved] == [11, 11]  # one seed, the subseeds count up (A1111's)
    second = saved[1][0]
    text = read_infotext(second)
    assert "Seed: 11," in text and "Variation seed: 41, Variation seed strength: 0.3, Seed resize from: 8x8" in text

    code, out, err = run_main("generate", "--from-png", second, "-o", str(tmp_path / "again"))
    assert code == 0, err
    [(path, _)] = saved_paths(out)
    assert read_infotext(path) == text
    # Regenerated alone, an image of a batch may differ by one 8-bit level (BLAS picks kernels by batch size).
    regenerated, original = (np.asarray(Image.open(p), dtype=np.int16) for p in (path, second))
    assert np.abs(regenerated - original).max() <= 1
    # An option overrides the PNG's value: strength 0 is the plain seed's image, and no variation keys are written.
    code, out, err = run_main("generate", "--from-png", second, "--subseed-strength", "0", "--seed-resize-from",
                              "off")
    [(path, _)] = saved_paths(out)
    assert "Variation" not in read_infotext(path) and "Seed resize" not in read_infotext(path)


@pytest.mark.parametrize(("args", "message"), [
    (["--subseed-strength", "2"], "error: subseed_strength: Input should be less than or equal to 1"),
    (["--seed-resize-from", "64"], "error: --seed-resize-from '64': give WIDTHxHEIGHT in pixels"),
    (["--seed-resize-from", "60x64"], "error: input: Value error, seed_resize_from 60x64: both must be multiples of 8"),
])
def test_bad_variation_flags_are_one_line_errors(run_main, args, message):
    code, _, err = run_main("generate", "x", *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err


def test_outpaint_from_the_command_line(run_main, tmp_path):
    init = tmp_path / "start.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(init)
    code, out, err = run_main("generate", "a wider view", "-m", "tiny-sd", "--init-image", str(init), "--outpaint",
                              "left=16,down=8", "--mask-blur", "0", "--strength", "1", "--steps", "2", "--seed", "6",
                              "--inpainting-fill", "latent noise")
    assert code == 0, err
    [(path, _)] = saved_paths(out)
    made = np.asarray(Image.open(path).convert("RGB"))
    assert made.shape == (32, 48, 3)
    assert np.array_equal(made[:24, 16:], np.asarray(Image.open(init)))
    text = read_infotext(path)
    assert 'Masked content: latent noise, Outpaint: "left=16,down=8"' in text
    # The PNG and the same starting image make the same picture again.
    code, out, err = run_main("generate", "--from-png", path, "--init-image", str(init))
    assert code == 0, err
    [(again, _)] = saved_paths(out)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


@pytest.mark.parametrize(("args", "message"), [
    (["--outpaint", "left=16"], "error: input: Value error, outpaint needs an init_image to extend"),
    (["--init-image", "IMG", "--outpaint", "left=12"], "error: outpaint.left: Value error, must be a multiple of 8"),
    (["--init-image", "IMG", "--outpaint", "wide=16"], "error: outpaint: Value error, 'wide=16': write SIDE=PIXELS"),
    (["--init-image", "IMG", "--outpaint", "left=4096"], "error: outpainted width=4128 is over this server's limit of 2048 (the image is 32x32 before left=4096)"),
    (["--init-image", "IMG", "--inpainting-fill", "fill"], "error: input: Value error, inpainting_fill says what"),
])
def test_bad_outpaint_flags_are_one_line_errors(run_main, tmp_path, args, message):
    init = tmp_path / "start.png"
    Image.new("RGB", (32, 32)).save(init)
    code, _, err = run_main("generate", "x", *[str(init) if a == "IMG" else a for a in args])
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err
