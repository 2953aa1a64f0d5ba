"""`guardforge eval dreambooth`: the prior-preservation study runs end to end on the shipped tiny-shapes model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect
from guardforge.train.shapes.dreambooth_study import (
    StudyOptions, diversity, recontext_prompts, write_instance_images,
)


def test_instance_images_show_the_subject_the_base_model_never_saw(tmp_path):
    options = StudyOptions()
    assert options.subject_shape not in data.SHAPES  # a new concept, as in the paper
    paths = write_instance_images(options, tmp_path)
    assert len(paths) == 4
    for path in paths:
        found = detect(Image.open(path), shapes=data.SHAPES + [options.subject_shape])
        assert (found.shape, found.colour) == ("heart", "red")


def test_recontext_prompts_ask_for_what_they_score():
    cases = recontext_prompts(StudyOptions(), 9)
    assert {attr for _, attr, _ in cases} == {"background", "position", "colour"}
    for prompt, attr, want in cases:
        assert "sks shape" in prompt and want in prompt
        if attr != "position":
            assert want not in ("white", "red")  # the instance images' own colours prove nothing


def test_diversity_is_zero_for_copies_and_grows_with_difference():
    a = Image.new("RGB", (8, 8), (0, 0, 0))
    b = Image.new("RGB", (8, 8), (255, 255, 255))
    assert diversity([a, a, a]) == 0.0
    assert diversity([a, b]) == 1.0
    assert 0 < diversity([a, a, b]) < 1


def test_study_trains_both_arms_and_reports_every_measure(gf_home, tmp_path):
    from guardforge.cli import _register, app

    _register()
    work, out = tmp_path / "work", tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "dreambooth", "--steps", "3", "--class-images", "2", "--samples", "2",
                                      "--work-dir", str(work), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {m.group(1): m.group(2).split() for m in
            re.finditer(r"^(base|prior preservation|no prior preservation)\s+(.+)$", result.output, re.M)}
    assert set(rows) == {"base", "prior preservation", "no prior preservation"}
    for arm, values in rows.items():
        measures = [float(v) for v in values[:6]]
        assert all(0.0 <= v <= 1.0 for v in measures), (arm, values)
        assert (values[6] == "-") == (arm == "base")  # only trained arms have a loss
    # The two trained models landed in the study's own models folder, not the user's.
    trained = sorted(p.name for p in (work / "models" / "Stable-diffusion").iterdir())
    assert trained == ["dreambooth-study-no-prior", "dreambooth-study-prior"]
    assert not (gf_home / "models" / "Stable-diffusion" / "dreambooth-study-prior").exists()
    # Prior preservation made (and only it used) the class images; the arms trained different weights.
    assert len(list((work / "class_images").glob("*.png"))) == 2
    unet = "unet/diffusion_pytorch_model.safetensors"
    prior, plain = (Path(work / "models" / "Stable-diffusion" / n / unet).read_bytes() for n in trained[::-1])
    assert prior != plain
    assert len(list(out.glob("dreambooth-*.png"))) == 3
    grid = np.asarray(Image.open(out / "dreambooth-base.png"))
    assert grid.std() > 0
