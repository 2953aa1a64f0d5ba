"""Textual inversion embeddings on the tiny SD model: A1111 `.pt` and `.safetensors` files written here with random
vectors, used by name in the prompt and negative prompt, with weights and several vectors, unloaded after."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from guardforge.engine.embeddings import embeddings_in, fits, listing, read_embedding
from guardforge.engine.pipelines import Engine
from guardforge.errors import InvalidRequest, UnsafeModelFormat
from guardforge.models.registry import ModelRegistry
from guardforge.settings import Settings
from tests.test_engine import loaded, pixels, req  # noqa: F401 (fixture)

WIDTH = 32  # the tiny CLIP text encoder's hidden size


def write_a1111_pt(path: Path, vectors: torch.Tensor) -> Path:
    """What A1111's textual inversion training saves."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vectors)},
                "name": path.stem, "step": 150, "sd_checkpoint": "a1b2c3d4", "sd_checkpoint_name": "sd15"}, path)
    return path


def write_safetensors(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


@pytest.fixture(scope="module")
def vectors():
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn((n, WIDTH), generator=generator) * 2 for name, n in
            (("glow", 1), ("fog", 1), ("pair", 2))}


@pytest.fixture(scope="module")
def home(tmp_path_factory, vectors):
    root = tmp_path_factory.mktemp("ti-home")
    folder = root / "models" / "embeddings"
    (folder / "styles").mkdir(parents=True)
    write_a1111_pt(folder / "glow.pt", vectors["glow"])
    write_safetensors(folder / "styles" / "glowsafe.safetensors", vectors["glow"])  # a subfolder groups only
    write_safetensors(folder / "fog.safetensors", vectors["fog"])
    # "pair" holds fog's vector then glow's: spelt out it is the token pair "fog glow".
    write_safetensors(folder / "pair.safetensors", torch.cat([vectors["fog"], vectors["glow"]]))
    write_safetensors(folder / "wide.safetensors", torch.randn(1, 768))  # an SD 1.5 embedding, too wide here
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(folder / "xl.safetensors"))
    return root


@pytest.fixture(scope="module")
def engine(home):
    return Engine(Settings(home=home))


def image(engine, loaded, prompt, negative="blurry", **kw):
    [(made, _)] = engine.run(loaded, req(prompt=prompt, negative_prompt=negative, seed=3, **kw))
    return pixels(made)


def test_an_embedding_named_in_the_prompt_is_used_then_unloaded(engine, loaded):
    encoder = loaded.pipeline.text_encoder
    weights = encoder.get_input_embeddings().weight.detach().clone()
    vocabulary = len(loaded.pipeline.tokenizer)
    plain = image(engine, loaded, "a red square")
    used = image(engine, loaded, "a red square glow")
    assert np.abs(used - plain).max() > 5
    # Unloaded: the tokenizer and the text encoder are as they were, and so is the next image.
    assert len(loaded.pipeline.tokenizer) == vocabulary
    assert torch.equal(encoder.get_input_embeddings().weight, weights)
    assert np.array_equal(image(engine, loaded, "a red square"), plain)

def test_part_of_another_word_is_not_the_name(engine, loaded, tmp_path):
    without = Engine(Settings(home=tmp_path))  # no embeddings folder at all
    assert np.array_equal(image(engine, loaded, "a red square glowing"), image(without, loaded, "a red square glowing"))
    assert not np.array_equal(image(engine, loaded, "a red square glow"), image(without, loaded, "a red square glow"))


def test_pt_and_safetensors_of_the_same_vectors_give_the_same_image(engine, loaded):
    assert np.array_equal(image(engine, loaded, "a red square glow"), image(engine, loaded, "a red square glowsafe"))


def test_several_vectors_take_several_tokens(engine, loaded):
    """A two-vector embedding is its two vectors in a row: the image of "fog glow" (two one-vector embeddings)."""
    assert np.array_equal(image(engine, loaded, "a pair square"), image(engine, loaded, "a fog glow square"))
    assert not np.array_equal(image(engine, loaded, "a pair square"), image(engine, loaded, "a fog square"))


def test_weights_and_the_negative_prompt_reach_the_embedding(engine, loaded):
    assert not np.array_equal(image(engine, loaded, "a (glow:1.6) square"), image(engine, loaded, "a glow square"))
    assert not np.array_equal(image(engine, loaded, "a square", negative="fog"),
                              image(engine, loaded, "a square", negative="blurry"))


def test_an_embedding_for_another_family_is_refused(engine, loaded):
    with pytest.raises(InvalidRequest, match="'wide' \\(768 wide\\) was made for another model family"):
        engine.run(loaded, req(prompt="a wide square"))
    with pytest.raises(InvalidRequest, match="'xl' \\(2048 wide\\)"):
        engine.run(loaded, req(prompt="a square", negative_prompt="xl"))
    # Nothing stays loaded after a refusal.
    assert not [token for token in loaded.pipeline.tokenizer.get_vocab() if token.startswith("<ti-")]


def test_reading_the_formats(home):
    registry = ModelRegistry(Settings(home=home))
    by_name = {e.name: e for e in registry.list("embedding")}
    assert set(by_name) == {"glow", "fog", "pair", "wide", "xl", "styles/glowsafe"}
    glow = read_embedding(by_name["glow"], allow_pickle=False)
    assert (glow.count, glow.shape, glow.step, glow.sd_checkpoint_name) == (1, WIDTH, 150, "sd15")
    xl = read_embedding(by_name["xl"], allow_pickle=False)
    assert (xl.count, xl.shape, sorted(xl.vectors)) == (2, 2048, ["clip_g", "clip_l"])
    assert fits(xl, {"clip_l": 768, "clip_g": 1280}) and not fits(xl, {"": 768})
    assert [e.name for e in embeddings_in(registry, "a glowsafe, (pair:1.1)", "fog")] == ["fog", "pair",
                                                                                         "styles/glowsafe"]
    answer = listing(registry.list("embedding"), {"": WIDTH}, allow_pickle=False)
    assert set(answer["loaded"]) == {"glow", "glowsafe", "fog", "pair"} and set(answer["skipped"]) == {"wide", "xl"}
    assert answer["loaded"]["pair"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                        "shape": WIDTH, "vectors": 2}


def test_a_pt_that_needs_its_pickle_is_refused_unless_allowed(tmp_path, loaded):
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.randn(1, WIDTH)}, "extra": argparse.Namespace(x=1)},
               folder / "risky.pt")
    engine = Engine(Settings(home=tmp_path))
    with pytest.raises(UnsafeModelFormat, match="'risky' \\(.pt\\) holds more than tensors"):
        engine.check(req(prompt="a risky square"))
    allowed = Engine(Settings(home=tmp_path, allow_pickle=True))
    allowed.check(req(prompt="a risky square"))
    assert len(allowed.run(loaded, req(prompt="a risky square"))) == 1


def test_a_name_the_tokenizer_has_is_an_embedding_all_the_same(tmp_path, loaded):
    """A1111 uses an embedding named like a word of the vocabulary ("bad", "style"): so does guardforge, since it
    loads each under a token of its own."""
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    write_safetensors(folder / "e.safetensors", torch.randn(1, WIDTH) * 3)  # "e" is a token of the char tokenizer
    vocabulary = dict(loaded.pipeline.tokenizer.get_vocab())
    with_it = Engine(Settings(home=tmp_path))
    without = Engine(Settings(home=tmp_path / "elsewhere"))
    assert not np.array_equal(image(with_it, loaded, "a square e"), image(without, loaded, "a square e"))
    assert np.array_equal(image(with_it, loaded, "a square"), image(without, loaded, "a square"))
    assert loaded.pipeline.tokenizer.get_vocab() == vocabulary


def test_sdxl_pairs_go_into_both_text_encoders(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from guardforge.engine.embeddings import widths_from_configs
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import MemorySettings
    from tests.test_models_loading import _tiny_sdxl_folder

    folder = _tiny_sdxl_folder(tmp_path / "tiny-xl")  # CLIP-L 32 wide, CLIP-G 64 wide
    assert widths_from_configs(folder) == {"clip_l": 32, "clip_g": 64}
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    loaded = LoadedModel(entry=None, pipeline=pipe, memory=MemorySettings(), device=torch.device("cpu"))
    embeddings = tmp_path / "home" / "models" / "embeddings"
    embeddings.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    clip_l = torch.randn(2, 32, generator=generator) * 2
    save_file({"clip_l": clip_l, "clip_g": torch.randn(2, 64, generator=generator) * 2},
              str(embeddings / "xlstyle.safetensors"))
    # The same CLIP-L vectors, other CLIP-G ones: an image of its own shows the second encoder got them.
    save_file({"clip_l": clip_l, "clip_g": torch.randn(2, 64, generator=generator) * 2},
              str(embeddings / "xlother.safetensors"))
    write_safetensors(embeddings / "sd1style.safetensors", torch.randn(1, 32))
    engine = Engine(Settings(home=tmp_path / "home"))
    vocabulary = len(pipe.tokenizer)
    before = [encoder.get_input_embeddings().weight.detach().clone() for encoder in (pipe.text_encoder,
                                                                                     pipe.text_encoder_2)]

    def run(prompt):
        [(made, _)] = engine.run(loaded, req(prompt=prompt, seed=2, steps=2, sampler="Euler"))
        return pixels(made)

    plain = run("a red square")
    styled = run("a red square, xlstyle")
    assert np.abs(styled - plain).max() > 5
    assert not np.array_equal(run("a red square, xlother"), styled)
    after = [encoder.get_input_embeddings().weight for encoder in (pipe.text_encoder, pipe.text_encoder_2)]
    assert all(torch.equal(b, a) for b, a in zip(before, after))
    assert len(pipe.tokenizer) == len(pipe.tokenizer_2) == vocabulary
    assert np.array_equal(run("a red square"), plain)
    with pytest.raises(InvalidRequest, match="'sd1style' \\(32 wide\\) was made for another model family than this "
                                             "one \\(clip_l 32, clip_g 64\\)"):
        run("a sd1style square")
