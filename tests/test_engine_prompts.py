"""A1111 prompt syntax: attention weights, <lora:> tags, clip skip layers and padding, on the tiny CLIP."""

from __future__ import annotations

import pytest
import torch

from guardforge.engine.prompts import (
    LoraTag,
    encode_prompts,
    extract_lora_tags,
    parse_prompt_attention,
    plain_text,
    prompt_chunks,
)
from guardforge.errors import InvalidRequest
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


def test_lora_tags_read_a1111s_text_encoder_then_unet_weights():
    _, tags = extract_lora_tags("<lora:a:0.8:0> <lora:b:0.5> <lora:c:te=0.3:unet=0.6> <lora:d:unet=0.2> <lora:e:0.7:0.7>")
    assert tags == [LoraTag("a", 0.8, 0.0), LoraTag("b", 0.5), LoraTag("c", 0.3, 0.6), LoraTag("d", 1.0, 0.2),
                    LoraTag("e", 0.7)]
    assert [(t.weight, t.unet) for t in tags] == [(0.8, 0.0), (0.5, 0.5), (0.3, 0.6), (1.0, 0.2), (0.7, 0.7)]


@pytest.mark.parametrize(("prompt", "message"), [
    ("<lora:a:x>", "the text-encoder weight 'x' must be a number"),
    ("<lora:a:1:y>", "the UNet weight 'y' must be a number"),
    ("<lora:a:1:1:8>", "not A1111's dyn"),
    ("<lora:a:dyn=8>", "not A1111's dyn"),
    ("<lora::1>", "name is missing"),
])
def test_lora_tags_guardforge_cannot_honour_are_refused(prompt, message):
    with pytest.raises(InvalidRequest, match=message):
        extract_lora_tags(prompt)


def test_an_attention_weight_that_is_not_a_number_is_refused():
    # A1111's regex takes ":1.2.3)" as a weight and its float() fails the generation; we refuse it with a reason.
    with pytest.raises(InvalidRequest, match=r"attention weight in '\(red:1.2.3\)' is not a number: '1.2.3'"):
        parse_prompt_attention("(red:1.2.3) circle")
    with pytest.raises(InvalidRequest, match="not a number"):
        plain_text("a (cat:.) on a mat")
    # With no bracket open, A1111 keeps the same characters as text.
    assert parse_prompt_attention("red:1.2.3) circle") == [("red:1.2.3) circle", 1.0)]


def test_the_submit_time_check_refuses_a_bad_weight_before_any_model_loads(tmp_path):
    from guardforge.engine.pipelines import Engine
    from guardforge.engine.request import GenerationRequest
    from guardforge.settings import Settings

    engine = Engine(Settings(home=tmp_path))
    engine.check(GenerationRequest(prompt="(red:1.2) circle", negative_prompt="[blurry]"))
    with pytest.raises(InvalidRequest, match="not a number"):
        engine.check(GenerationRequest(prompt="(red:1.2.3) circle"))
    with pytest.raises(InvalidRequest, match="not a number"):
        engine.check(GenerationRequest(prompt="a circle", negative_prompt="(blurry:..)"))


def test_break_splits_the_prompt_where_a1111_does():
    assert prompt_chunks("a cat BREAK a (dog:1.2)") == [[("a cat", 1.0)], [("a ", 1.0), ("dog", 1.2)]]
    assert prompt_chunks("a cat BREAK") == [[("a cat", 1.0)]]  # a final BREAK adds no chunk
    assert prompt_chunks("BREAK a cat") == [[("", 1.0)], [("a cat", 1.0)]]  # a leading one an empty chunk
    assert prompt_chunks("a BREAK BREAK b") == [[("a", 1.0)], [("", 1.0)], [("b", 1.0)]]
    assert prompt_chunks("a BREAKING b") == [[("a BREAKING b", 1.0)]]
    assert parse_prompt_attention("a BREAK b") == [("a BREAK b", 1.0)]  # the guard's reading is unchanged


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


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A tiny SDXL pipeline (two CLIP encoders, text_time conditioning), as diffusers' SDXL tests build one."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tests.tiny import write_char_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=3, pad_token_id=1, vocab_size=1000,
                            projection_dim=32)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tmp_path_factory.mktemp("tok"))))
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1))
    return pipe


def test_sdxl_weighting_pooled_and_clip_skip(sdxl):
    plain = _embeds(sdxl, "a cat on a mat", "blurry")
    weighted = _embeds(sdxl, "a (cat:1.5) on a mat", "blurry")
    assert plain["prompt_embeds"].shape == (1, 77, 64)  # both encoders side by side
    assert plain["pooled_prompt_embeds"].shape == plain["negative_pooled_prompt_embeds"].shape == (1, 32)
    assert not torch.equal(plain["prompt_embeds"], weighted["prompt_embeds"])
    ids = sdxl.tokenizer("a cat on a mat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        penultimate = sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(plain["prompt_embeds"][..., :32], penultimate, atol=1e-5)
    deeper = _embeds(sdxl, "a cat on a mat", "blurry", clip_skip=2)
    assert not torch.equal(plain["prompt_embeds"], deeper["prompt_embeds"])


def test_sdxl_runs_through_the_engine(sdxl, tmp_path):
    from guardforge.engine.pipelines import Engine
    from guardforge.engine.request import GenerationRequest
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import MemorySettings, Settings

    loaded = LoadedModel(entry=None, pipeline=sdxl, memory=MemorySettings(), device=torch.device("cpu"))
    request = GenerationRequest(prompt="a (cat:1.2)", negative_prompt="dog", steps=2, seed=3, sampler="DPM++ 2M")
    [(image, seed)] = Engine(Settings(home=tmp_path)).run(loaded, request)
    assert image.size == (32, 32) and seed == 3  # sample_size 16 x VAE factor 2


def test_break_starts_a_new_77_token_chunk(pipe):
    both = _embeds(pipe, "a cat BREAK a dog", "blurry")
    assert both["prompt_embeds"].shape == (1, 77 * 2, 32)
    assert both["negative_prompt_embeds"].shape == (1, 77 * 2, 32)  # padded to the prompt's chunks
    assert torch.equal(both["prompt_embeds"][:, :77], _embeds(pipe, "a cat")["prompt_embeds"])
    assert torch.equal(both["prompt_embeds"][:, 77:], _embeds(pipe, "a dog")["prompt_embeds"])
    assert torch.equal(_embeds(pipe, "a cat BREAK")["prompt_embeds"], _embeds(pipe, "a cat")["prompt_embeds"])


def test_sdxl_pooled_output_is_the_first_chunks(sdxl):
    broken = _embeds(sdxl, "a cat BREAK a dog")
    assert broken["prompt_embeds"].shape == (1, 77 * 2, 64)
    assert torch.equal(broken["pooled_prompt_embeds"], _embeds(sdxl, "a cat")["pooled_prompt_embeds"])
