"""A1111 prompt syntax: attention weights, <lora:> tags, clip skip layers and padding, on the tiny CLIP."""

from __future__ import annotations

import pytest
import torch

from guardforge.engine.prompts import encode_prompts, extract_lora_tags, parse_prompt_attention, plain_text
from tests.test_engine import make_loaded


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return make_loaded(tiny_model_dir).pipeline


@pytest.mark.parametrize(("text", "expected"), [
    # The examples of A1111's parse_prompt_attention docstring.
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)]),
    ("[faded]", [("faded", 1 / 1.1)]),
])
def test_attention_parsing_matches_a1111(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_lora_tags_are_taken_out_of_the_prompt():
    prompt, tags = extract_lora_tags("a cat <lora:styles/ink:0.6>, <LORA:detail> on a mat")
    assert prompt == "a cat ,  on a mat"  # removed in place, spaces kept, as A1111 does
    assert [(t.name, t.weight) for t in tags] == [("styles/ink", 0.6), ("detail", 1.0)]
    assert plain_text("a (cat:1.3) [dog]") == "a cat dog"


def _embeds(pipe, prompt, negative="", clip_skip=1):
    with torch.no_grad():
        return encode_prompts(pipe, prompt, negative, clip_skip, torch.device("cpu")).kwargs


def test_weighting_changes_the_embedding(pipe):
    plain = _embeds(pipe, "a cat on a mat")["prompt_embeds"]
    weighted = _embeds(pipe, "a (cat:1.5) on a mat")["prompt_embeds"]
    unit = _embeds(pipe, "a (cat:1.0) on a mat")["prompt_embeds"]
    assert plain.shape == weighted.shape == (1, 77, 32)
    assert not torch.equal(plain, weighted)
    assert torch.equal(plain, unit)  # weight 1 is no weighting


def test_clip_skip_reads_the_layer_a1111_reads(pipe):
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        expected_1 = out.last_hidden_state
        expected_2 = pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(_embeds(pipe, "a cat", clip_skip=1)["prompt_embeds"], expected_1, atol=1e-5)
    assert torch.allclose(_embeds(pipe, "a cat", clip_skip=2)["prompt_embeds"], expected_2, atol=1e-5)


def test_long_prompt_and_short_negative_are_padded_to_the_same_length(pipe):
    long_prompt = "word " * 40  # the test tokenizer has one token per character: 200 tokens, 3 chunks
    kwargs = _embeds(pipe, long_prompt, "blurry")
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape
    assert kwargs["prompt_embeds"].shape[1] == 77 * 3
