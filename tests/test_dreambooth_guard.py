"""The guard around DreamBooth: flagged training data stops the job before any step; class images are
made through the Studio's services, screened, deterministic and incremental.

The backends here are test-only classes implementing the guard's backend protocol; the Guard, the Policy,
the Studio and the engine are the real ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from guardforge.engine.request import GenerationRequest
from guardforge.errors import GuardforgeError, InvalidRequest
from guardforge.guard.backends.base import Scores
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from guardforge.train.dreambooth.class_images import ensure_class_images
from guardforge.train.dreambooth.run import train_dreambooth
from tests.test_dreambooth_train import make_images, tiny_config


class RedIsUnsafe:
    """Image backend: S12 = 1 for a mostly red image; also refuses the calls numbered in `refuse_calls`."""

    name = "test-red"
    categories = frozenset({"S12"})

    def __init__(self, refuse_calls: set[int] | None = None):
        self.refuse_calls = refuse_calls or set()
        self.calls = 0

    def score_images(self, images: list[Image.Image]) -> list[Scores]:
        out = []
        for image in images:
            r, g, b = np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1))
            unsafe = (r > 150 and g < 100 and b < 100) or self.calls in self.refuse_calls
            self.calls += 1
            out.append(Scores({"S12": 1.0 if unsafe else 0.0}))
        return out


class WordIsUnsafe:
    """Text backend: S1 = 1 when the text says 'forbidden'."""

    name = "test-word"
    categories = frozenset({"S1"})

    def score_texts(self, texts: list[str]) -> list[Scores]:
        return [Scores({"S1": 1.0 if "forbidden" in text else 0.0}) for text in texts]


@pytest.fixture
def studio(gf_home):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=gf_home),
                  guard=Guard(load_policy("default"), text_backend=WordIsUnsafe(), image_backend=RedIsUnsafe()))


def made_by(studio) -> dict:
    """The studio's class-image maker and model hash, as ensure_class_images takes them."""
    services = studio.dreambooth_services()
    return {"generate_class_image": services.generate_class_image, "model_hash": services.model_hash}


def class_kwargs(folder, count=3):
    return {"folder": folder, "count": count, "prompt": "a photo of dog", "model": "tiny-sd", "resolution": 16,
            "seed": 10, "steps": 2}


def test_flagged_instance_image_stops_the_job_before_training(studio, tmp_path, tiny_model_dir):
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    Image.new("RGB", (24, 24), (230, 10, 10)).save(tmp_path / "instance" / "zz-red.png")
    config = tiny_config(tmp_path, "tiny-sd", class_data_dir=None)
    with pytest.raises(GuardforgeError, match=r"zz-red\.png \(S12\)") as caught:
        train_dreambooth(studio.dreambooth_services(), config)
    assert "img-0.png" not in str(caught.value)
    # Nothing ran: no class images, no checkpoints, no logs, no export.
    assert not config.output_dir.exists()
    assert studio.registry.names(kind="lora") == []


def test_class_images_found_on_disk_are_screened_before_training(studio, tmp_path, tiny_model_dir):
    """The user's own class images (or files put where ours were) are trained on with the prior loss: they
    are training data, and a blocked one stops the job before any step."""
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    (tmp_path / "class").mkdir()
    for index, colour in enumerate([(0, 90, 200), (230, 10, 10), (0, 90, 200)]):
        Image.new("RGB", (16, 16), colour).save(tmp_path / "class" / f"class-0000{index}.png")
    config = tiny_config(tmp_path, tiny_model_dir, with_prior_preservation=True)
    with pytest.raises(GuardforgeError, match=r"nothing was trained: class-00001\.png \(S12\)$"):
        train_dreambooth(studio.dreambooth_services(), config)
    assert not (config.output_dir / "checkpoints").exists() and studio.registry.names(kind="lora") == []


def test_flagged_prompt_stops_the_job(studio, tmp_path):
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    config = tiny_config(tmp_path, "tiny-sd", class_data_dir=None,
                         validation_prompts=["a forbidden thing"], validation_interval=1)
    with pytest.raises(GuardforgeError, match=r"prompt 'a forbidden thing' \(S1\)"):
        train_dreambooth(studio.dreambooth_services(), config)
    assert not config.output_dir.exists()


def test_class_images_are_deterministic_incremental_and_screened(studio, tmp_path):
    from guardforge.studio import Studio

    folder = tmp_path / "class"
    refusing = Studio(studio.settings, guard=Guard(load_policy("default"), text_backend=WordIsUnsafe(),
                                                   image_backend=RedIsUnsafe(refuse_calls={1})))  # the 2nd image
    first = ensure_class_images(**made_by(refusing), **class_kwargs(folder))
    assert first.generated == [0, 1, 2] and first.reused == []
    assert sorted(p.name for p in folder.glob("*.png")) == ["class-00000.png", "class-00001.png",
                                                             "class-00002.png"]
    manifest = json.loads((folder / "manifest.json").read_text())
    # Index 1's seed 11 was refused; its next candidate is 11 + count = 14, which no other index uses.
    assert manifest["images"] == {"class-00000.png": 10, "class-00001.png": 14, "class-00002.png": 12}
    assert manifest["refused"] == {"class-00001.png": [11]} and first.refused_seeds == {1: [11]}

    # The file for index 1 is exactly what the base model makes with seed 14.
    direct = studio.generate(GenerationRequest(prompt="a photo of dog", model="tiny-sd", seed=14, steps=2,
                                               width=16, height=16), save=False).images[0].pil
    assert np.array_equal(np.asarray(Image.open(folder / "class-00001.png")), np.asarray(direct))

    # A re-run reuses what is there and remakes only the missing file, identically.
    kept = (folder / "class-00002.png").read_bytes()
    (folder / "class-00002.png").unlink()
    second = ensure_class_images(**made_by(studio), **class_kwargs(folder))
    assert second.reused == [0, 1] and second.generated == [2]
    assert np.array_equal(np.asarray(Image.open(folder / "class-00002.png")),
                          np.asarray(Image.open(__import__("io").BytesIO(kept))))
    # Asking for more only adds the new indices.
    third = ensure_class_images(**made_by(studio), **class_kwargs(folder, count=4))
    assert third.reused == [0, 1, 2] and third.generated == [3]


def test_class_images_of_a_model_replaced_under_the_same_name_are_refused(studio, tmp_path, gf_home):
    """The recipe holds the model's content hash: new weights under an old name make another prior."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "class"
    ensure_class_images(**made_by(studio), **class_kwargs(folder, count=2))
    before = json.loads((folder / "manifest.json").read_text())["recipe"]["model_hash"]
    vae_file = gf_home / "models" / "Stable-diffusion" / "tiny-sd" / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(vae_file))
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01  # what a fine-tuned decoder saved over the old one looks like
    save_file(weights, str(vae_file))
    studio.registry.refresh()
    with pytest.raises(InvalidRequest, match=f"model_hash '{before}' -> "):
        ensure_class_images(**made_by(studio), **class_kwargs(folder, count=2))


def test_unsafe_class_prompt_is_refused(studio, tmp_path):
    with pytest.raises(GuardforgeError, match="class prompt"):
        ensure_class_images(**made_by(studio), **{**class_kwargs(tmp_path / "c"), "prompt": "a forbidden dog"})


def test_class_images_of_another_recipe_are_refused_not_mixed_in(studio, tmp_path, tiny_model_dir):
    import shutil

    shutil.copytree(tiny_model_dir, studio.settings.resolved_models_dir / "Stable-diffusion" / "other-sd")
    studio.registry.refresh()
    folder = tmp_path / "class"
    ensure_class_images(**made_by(studio), **class_kwargs(folder, count=2))
    assert json.loads((folder / "manifest.json").read_text())["recipe"]["prompt"] == "a photo of dog"
    # The user's own photos (not in the manifest) are welcome beside ours.
    Image.new("RGB", (16, 16), (0, 90, 200)).save(folder / "class-00002.png")
    assert ensure_class_images(**made_by(studio), **class_kwargs(folder, count=3)).reused == [0, 1, 2]

    for change, message in (({"prompt": "a photo of cat"}, "prompt 'a photo of dog' -> 'a photo of cat'"),
                            ({"steps": 3}, "steps 2 -> 3"), ({"model": "other-sd"}, "model 'tiny-sd'")):
        with pytest.raises(InvalidRequest, match=message):
            ensure_class_images(**made_by(studio), **{**class_kwargs(folder, count=3), **change})
    # Once the stale files are gone, the new recipe fills the folder afresh.
    for name in ("class-00000.png", "class-00001.png"):
        (folder / name).unlink()
    again = ensure_class_images(**made_by(studio), **{**class_kwargs(folder, count=3), "steps": 3})
    assert again.generated == [0, 1] and again.reused == [2]
    assert json.loads((folder / "manifest.json").read_text())["recipe"]["steps"] == 3
