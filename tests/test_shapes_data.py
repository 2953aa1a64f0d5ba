"""tiny-shapes data, tokenizer and detector: the detector reads the generator's own images exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import ImageDraw, ImageFilter

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect
from guardforge.train.shapes.tokenizer import write_tokenizer


def test_dataset_is_seeded_and_varied():
    images_a, captions_a = data.make_dataset(50, seed=3)
    images_b, captions_b = data.make_dataset(50, seed=3)
    assert captions_a == captions_b and np.array_equal(images_a, images_b)
    assert images_a.shape == (50, 64, 64, 3)
    assert len(set(captions_a)) > 40


def test_training_captions_never_contain_held_out_pairs_or_reserved_shapes():
    _, captions = data.make_dataset(3000, seed=11)
    for caption in captions:
        words = caption.replace(",", " ").split()
        assert not set(data.RESERVED_SHAPES) & set(words), caption
        # A colour word is always followed by its shape word.
        pairs = {(words[i], words[i + 1]) for i in range(len(words) - 1)}
        assert not pairs & set(data.HELD_OUT), caption
    seen = set()
    for caption in captions:
        words = caption.replace(",", " ").split()
        seen |= {(a, b) for a, b in zip(words, words[1:]) if a in data.PALETTE and b in data.SHAPES}
    # Every allowed pair does occur, so the held-out ones are the only gaps.
    assert len(seen) == len(data.COLOURS) * len(data.SHAPES) - len(data.HELD_OUT)


# Blur stands in for a decoder's softening, which rounds a small star's points off; sigma 1.4 is
# softer than anything the shipped VAE decodes (its small stars keep points a human reads).
@pytest.mark.parametrize(("seed", "blur"), [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.4)])
def test_detector_reads_every_attribute_of_generator_images(seed, blur):
    rng = random.Random(seed)
    wrong = {"background": 0, "colour": 0, "shape": 0, "position": 0, "size": 0}
    n = 300
    for _ in range(n):
        background = rng.choice(data.COLOURS)
        obj = data.ShapeObject(rng.choice([c for c in data.COLOURS if c != background]),
                               rng.choice(data.SHAPES + data.RESERVED_SHAPES), rng.choice(list(data.SIZES)),
                               rng.choice(list(data.POSITIONS)))
        image = data.render(data.Scene(background, [obj]))
        found = detect(image.filter(ImageFilter.GaussianBlur(blur)) if blur else image)
        truth = {"background": background, "colour": obj.colour, "shape": obj.shape,
                 "position": obj.position, "size": obj.size}
        for key, value in truth.items():
            wrong[key] += getattr(found, key) != value
    assert all(count <= n * 0.01 for count in wrong.values()), wrong


def test_detector_claims_no_shape_for_an_object_no_candidate_fits():
    """A ring (what a base model draws for a word it never learnt) is not read as whichever shape fits least
    badly; its colour and place are still read."""
    image = data.render(data.Scene("red", []))
    ImageDraw.Draw(image).ellipse([20, 20, 44, 44], outline=data.PALETTE["white"], width=5)
    found = detect(image)
    assert found.shape is None and found.colour == "white" and found.position == "centre", found


def test_detector_reports_nothing_on_a_blank_image():
    found = detect(data.render(data.Scene("blue", [])))
    assert found.background == "blue" and found.colour is None and found.shape is None


def test_tokenizer_makes_every_caption_word_one_token_and_still_reads_unknown_words(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer(tmp_path, data.vocabulary_words(), 32)))
    for word in data.vocabulary_words():
        assert len(tokenizer.tokenize(word)) == 1, word
    assert tokenizer.tokenize("a zebra") == ["a</w>", "z", "e", "b", "r", "a</w>"]
    assert tokenizer.model_max_length == 32
    _, captions = data.make_dataset(500, seed=2)
    assert max(len(tokenizer(c).input_ids) for c in captions) <= 32
