"""DreamBooth training given its services directly, with no Studio: what it asks of them, in which order, and
what it does when they refuse.

The services are small real functions that draw, screen and name, and log every call; the base model is the
tiny real SD model, and Lightning trains it for real.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardforge.engine.request import GenerationRequest
from guardforge.errors import GuardforgeError, InvalidRequest
from guardforge.train.dreambooth.class_images import ensure_class_images
from guardforge.train.dreambooth.run import train_dreambooth
from guardforge.train.dreambooth.services import BaseComponents, DreamBoothServices
from tests.test_dreambooth_train import make_images, tiny_config

MODEL_HASH = "0badc0de"


def colour_of(seed: int) -> tuple[int, int, int]:
    return (seed * 17 % 256, 90, 200)


class Logged:
    """Services that log each call in order. The class-image maker draws a square whose colour says its seed;
    screening refuses the files and prompts named in `refuse`, and making refuses the seeds in `refuse_seeds`."""

    def __init__(self, base_dir: Path, models_dir: Path, refuse: set[str] = frozenset(),
                 refuse_seeds: set[int] = frozenset()):
        self.base_dir = base_dir
        self.models_dir = models_dir
        self.refuse = refuse
        self.refuse_seeds = refuse_seeds
        self.calls: list[tuple] = []
        self.requests: list[GenerationRequest] = []

    def load_base(self, name: str) -> BaseComponents:
        self.calls.append(("load_base", name))
        return BaseComponents.from_folder(self.base_dir)

    def generate_class_image(self, request: GenerationRequest) -> Image.Image | None:
        self.calls.append(("generate", request.seed))
        self.requests.append(request)
        if request.seed in self.refuse_seeds:
            return None
        return Image.new("RGB", (request.width, request.height), colour_of(request.seed))

    def model_hash(self, name: str) -> str:
        return MODEL_HASH

    def screen_training_data(self, paths: list[Path], prompts: list[str]) -> None:
        self.calls.append(("screen", [path.name for path in paths], list(prompts)))
        blocked = [item for item in [path.name for path in paths] + prompts if item in self.refuse]
        if blocked:
            raise GuardforgeError(f"the guard blocked the training data, nothing was trained: {'; '.join(blocked)}")

    def screen_outputs(self, images: list[Image.Image]) -> list[Image.Image | None]:
        self.calls.append(("screen_outputs", len(images)))
        return images

    def register_exports(self, exports: dict[str, Path]) -> dict[str, str]:
        self.calls.append(("register_exports", dict(exports)))
        return {fmt: path.name for fmt, path in exports.items()}

    def services(self) -> DreamBoothServices:
        return DreamBoothServices(
            load_base=self.load_base, generate_class_image=self.generate_class_image, model_hash=self.model_hash,
            screen_training_data=self.screen_training_data, screen_outputs=self.screen_outputs,
            register_exports=self.register_exports, models_dir=self.models_dir)


def assert_drawn_with(path: Path, seed: int) -> None:
    assert np.asarray(Image.open(path).convert("RGB"))[0, 0].tolist() == list(colour_of(seed))


@pytest.fixture
def run_setup(tmp_path, tiny_model_dir):
    """Two instance images, and the user's own class image at index 1 of 3."""
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    (tmp_path / "class").mkdir()
    Image.new("RGB", (16, 16), (0, 90, 200)).save(tmp_path / "class" / "class-00001.png")
    config = tiny_config(tmp_path, "tiny-sd", num_class_images=3, max_steps=2, export_name="sks-services",
                         export_formats=["diffusers"], validation_prompts=["a sks dog in snow"],
                         validation_interval=2, validation_steps=2, class_images={"steps": 2, "seed": 10})
    return config, tmp_path / "models"


def test_training_screens_all_data_makes_only_missing_class_images_then_trains_and_registers(
        run_setup, tiny_model_dir):
    config, models_dir = run_setup
    logged = Logged(tiny_model_dir, models_dir)
    result = train_dreambooth(logged.services(), config)

    export = models_dir / "Stable-diffusion" / "sks-services"
    assert logged.calls == [
        # Every instance image and every prompt, before anything else is asked.
        ("screen", ["img-0.png", "img-1.png"], ["a photo of sks dog", "a photo of dog", "a sks dog in snow"]),
        ("generate", 10), ("generate", 12),  # indices 0 and 2: index 1 is on disk
        ("screen", ["class-00001.png"], []),  # the class image found on disk is training data too
        ("load_base", "tiny-sd"),
        ("screen_outputs", 1),  # the validation image at step 2
        ("register_exports", {"diffusers": export}),
    ]
    request = logged.requests[0]
    assert (request.prompt, request.model, request.width, request.height, request.steps) == (
        "a photo of dog", "tiny-sd", 16, 16, 2)
    assert_drawn_with(config.resolved_class_data_dir / "class-00000.png", 10)
    assert_drawn_with(config.resolved_class_data_dir / "class-00002.png", 12)
    assert (export / "model_index.json").is_file()
    assert result.models == {"diffusers": "sks-services"} and result.exports == {"diffusers": export}
    assert (result.steps, result.class_images_generated, result.class_images_reused) == (2, 2, 1)


@pytest.mark.parametrize("refused, asked_before_refusal", [
    ("img-1.png", []),  # an instance image: nothing else is asked
    ("a sks dog in snow", []),  # a validation prompt
    ("class-00001.png", [("generate", 10), ("generate", 12)]),  # the user's class image: no base model loaded
])
def test_a_refusal_from_screening_stops_the_run_before_any_training(run_setup, tiny_model_dir, refused,
                                                                    asked_before_refusal):
    config, models_dir = run_setup
    logged = Logged(tiny_model_dir, models_dir, refuse={refused})
    with pytest.raises(GuardforgeError, match=f"nothing was trained: {re.escape(refused)}$"):
        train_dreambooth(logged.services(), config)

    assert [call for call in logged.calls if call[0] != "screen"] == asked_before_refusal
    assert not config.output_dir.exists() and not models_dir.exists()


def test_class_images_asks_for_exactly_the_missing_indices_and_a_new_seed_for_each_refused_one(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    Image.new("RGB", (16, 16), (0, 90, 200)).save(folder / "class-00001.png")
    logged = Logged(tmp_path, tmp_path / "models", refuse_seeds={12})
    kwargs = {"folder": folder, "count": 4, "prompt": "a photo of dog", "model": "tiny-sd", "resolution": 16,
              "seed": 10, "steps": 2}

    report = ensure_class_images(logged.generate_class_image, logged.model_hash, **kwargs)
    # Index 2's seed 12 was refused; its next candidate is 12 + count.
    assert logged.calls == [("generate", 10), ("generate", 12), ("generate", 16), ("generate", 13)]
    assert (report.generated, report.reused, report.refused_seeds) == ([0, 2, 3], [1], {2: [12]})
    for index, seed in ((0, 10), (2, 16), (3, 13)):
        assert_drawn_with(folder / f"class-{index:05d}.png", seed)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["model_hash"] == MODEL_HASH

    # All there: nothing is made again.
    logged.calls.clear()
    again = ensure_class_images(logged.generate_class_image, logged.model_hash, **kwargs)
    assert logged.calls == [] and again.reused == [0, 1, 2, 3]
    # Another hash under the same name is another model: its prior is refused before anything is made.
    with pytest.raises(InvalidRequest, match=f"model_hash '{MODEL_HASH}' -> 'c0ffee00'"):
        ensure_class_images(logged.generate_class_image, lambda name: "c0ffee00", **{**kwargs, "count": 5})
    assert logged.calls == []


def test_dreambooth_training_imports_nothing_above_it():
    """DESIGN.md: training gets its services, not a Studio; a lazy import inside a function counts too."""
    above = ("guardforge.studio", "guardforge.server", "guardforge.ui", "guardforge.cli", "guardforge.jobs")
    package = Path(__file__).resolve().parents[1] / "guardforge" / "train" / "dreambooth"
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {name}" for name in names if name.startswith(above)]
    assert found == []
