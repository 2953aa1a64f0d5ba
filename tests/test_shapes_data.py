"""tiny-shapes data, tokenizer and detector: the detector reads the generator's own images exactly."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from guardforge.train.shapes import data
from guardforge.train.shapes.detector import detect, detect_objects
from guardforge_build.shapes.tokenizer import write_tokenizer


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


def _random_object(rng: random.Random, background: str, position: str | None = None) -> data.ShapeObject:
    return data.ShapeObject(rng.choice([c for c in data.COLOURS if c != background]),
                            rng.choice(data.SHAPES + data.RESERVED_SHAPES), rng.choice(list(data.SIZES)),
                            position or rng.choice(list(data.POSITIONS)))


# Blur stands in for a decoder's softening, which rounds a small star's points off; sigma 1.4 is
# softer than anything the shipped VAE decodes (its small stars keep points a human reads), and at 1.8
# only the blurred candidates keep the shapes apart.
@pytest.mark.parametrize(("seed", "blur"), [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.4), (4, 1.8)])
def test_detector_reads_every_attribute_of_generator_images(seed, blur):
    rng = random.Random(seed)
    wrong = {"background": 0, "colour": 0, "shape": 0, "position": 0, "size": 0}
    scores = []
    n = 300
    for _ in range(n):
        background = rng.choice(data.COLOURS)
        obj = _random_object(rng, background)
        image = data.render(data.Scene(background, [obj]))
        found = detect(image.filter(ImageFilter.GaussianBlur(blur)) if blur else image)
        truth = {"background": background, "colour": obj.colour, "shape": obj.shape,
                 "position": obj.position, "size": obj.size}
        for key, value in truth.items():
            wrong[key] += getattr(found, key) != value
        scores.append(found.shape_score)
    assert all(count <= n * 0.01 for count in wrong.values()), wrong
    # Well clear of the no-shape cut (MIN_SHAPE_SCORE), so a sound drawing of a known shape is always claimed.
    assert min(scores) >= 0.8, min(scores)


def test_detector_reads_one_of_two_objects_wholly():
    """A reader of single-object images, shown two, reads one of them: its colour, place and shape, not the
    shape of one with the colour of the other (whose contrast may set the object colour it starts from)."""
    rng = random.Random(5)
    wrong = 0
    for _ in range(150):
        background = rng.choice(data.COLOURS)
        left = _random_object(rng, background, "left")
        right = _random_object(rng, background, "right")
        right = data.ShapeObject(rng.choice([c for c in data.COLOURS if c not in (background, left.colour)]),
                                 right.shape, right.size, "right")
        found = detect(data.render(data.Scene(background, [left, right])))
        read = next((o for o in (left, right) if o.position == found.position), None)
        wrong += read is None or (found.colour, found.shape) != (read.colour, read.shape)
    assert wrong <= 2, wrong


@pytest.mark.parametrize("blur", [0.0, 1.0, 1.5])
def test_scene_reader_reads_both_objects_of_generator_images(blur):
    from guardforge.train.shapes.adherence import score_pair

    wrong = 0
    for scene, _ in data.eval_scenes_two(100, seed=int(blur * 10)):
        image = data.render(scene)
        image = image.filter(ImageFilter.GaussianBlur(blur)) if blur else image
        background, found = detect_objects(image)
        truth = {(o.colour, o.shape, o.position) for o in scene.objects}
        read = {(d.colour, d.shape, d.position) for d in found}
        hits, _ = score_pair(scene, image)
        wrong += (background != scene.background or read != truth
                  or hits != {"background": 1, "position": 2, "colour": 2, "shape": 2, "both": 1})
    assert wrong <= 1, wrong  # at 1.5, a small orange star on red blurs away


def test_scene_reader_keeps_touching_objects_apart_and_scores_swapped_ones_as_misses():
    from guardforge.train.shapes.adherence import score_pair

    image = data.render(data.Scene("blue", []))
    ImageDraw.Draw(image).ellipse([10, 20, 34, 44], fill=data.PALETTE["red"])
    ImageDraw.Draw(image).rectangle([34, 24, 54, 44], fill=data.PALETTE["yellow"])
    _, found = detect_objects(image)
    assert {(d.colour, d.shape, d.position) for d in found} == {("red", "circle", "left"),
                                                               ("yellow", "square", "right")}, found
    asked = data.Scene("blue", [data.ShapeObject("red", "circle", "large", "right"),
                                data.ShapeObject("yellow", "square", "large", "left")])
    hits, _ = score_pair(asked, image)
    assert hits["position"] == 0 and hits["colour"] == 0 and hits["both"] == 0, hits


def test_two_object_captions_state_every_attribute_of_seen_pairs():
    for scene, caption in data.eval_scenes_two(100):
        assert len(scene.objects) == 2 and scene.objects[0].colour != scene.objects[1].colour
        assert {scene.objects[0].position, scene.objects[1].position} in ({"left", "right"}, {"top", "bottom"})
        for obj in scene.objects:
            assert (obj.colour, obj.shape) not in data.HELD_OUT
            assert f"{obj.size} {obj.colour} {obj.shape}" in caption
        assert scene.background in caption
    firsts = [scene.objects[0].position for scene, _ in data.eval_scenes_two(100)]
    assert {"left", "right", "top", "bottom"} <= set(firsts)  # named first is not always the left or top one


def _polygon_image(points: list[tuple[float, float]]) -> Image.Image:
    image = data.render(data.Scene("blue", []))
    ImageDraw.Draw(image).polygon(points, fill=data.PALETTE["yellow"])
    return image


@pytest.mark.parametrize("sides", [5, 6, 8])
def test_detector_does_not_read_a_regular_polygon_as_a_star(sides):
    points = [(32 + 12 * math.cos(2 * math.pi * k / sides - math.pi / 2),
               32 + 12 * math.sin(2 * math.pi * k / sides - math.pi / 2)) for k in range(sides)]
    assert detect(_polygon_image(points)).shape not in ("star", "cross", "triangle")


def test_detector_does_not_read_a_flat_ellipse_as_a_star_or_circle():
    image = data.render(data.Scene("blue", []))
    ImageDraw.Draw(image).ellipse([14, 24, 50, 40], fill=data.PALETTE["yellow"])
    assert detect(image).shape not in ("star", "circle")


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
