"""`guardforge generate` with variation seeds: the flags, what the PNGs record, and --from-png back."""

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
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(second)))
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
