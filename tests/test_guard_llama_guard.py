"""Llama Guard backend on a tiny randomly initialised Llama (LG3-1B style) with a tokenizer built here."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from guardforge.guard.backends.llama_guard import LLAMA_GUARD_4_TEMPLATE, LlamaGuardBackend, parse_output
from guardforge.guard.taxonomy import Category, Taxonomy

SPECIALS = ["<pad>", "<unk>", "<|begin_of_text|>", "<|eot|>", "<|header_start|>", "<|header_end|>", "<|image|>"]
SPLIT = r"\d+|[A-Za-z]+|\s|[^\sA-Za-z\d]"
TAXONOMY = Taxonomy(excluded=("S14", "S6"),
                    custom=(Category("XD", "Deepfakes", "Realistic images of real people in fake scenes", True),))
TEXTS = ["draw a cat", "a very long and detailed prompt about a peaceful lake at dawn with mist", "hi"]

# The documented Llama Guard 4 prompt for "draw a cat" with S6 and S14 excluded and one custom category (S15).
EXPECTED = (
    "<|begin_of_text|><|header_start|>user<|header_end|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according to our safety policy "
    "with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    # Meta's own names (its templates'), not the taxonomy's longer display names for S3, S4 and S11
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\n"
    "S5: Defamation.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\n"
    "S10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\n"
    "S15: Deepfakes. Realistic images of real people in fake scenes\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "User: draw a cat\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories. "
    "<|eot|><|header_start|>assistant<|header_end|>\n\n"
)


def _tokenizer(with_template: bool, extra_specials: tuple[str, ...] = ()):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    corpus = EXPECTED + " ".join(TEXTS) + " safe unsafe S " + " ".join(str(n) for n in range(1, 20))
    words = sorted(set(re.findall(SPLIT, corpus)))
    vocab = {token: i for i, token in enumerate(SPECIALS + list(extra_specials) + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=SPECIALS[3:] + list(extra_specials))
    if with_template:
        tokenizer.chat_template = LLAMA_GUARD_4_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tokenizer(with_template=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("lg3-tiny")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backend(model_dir):
    return LlamaGuardBackend.from_pretrained(model_dir, TAXONOMY, device="cpu")


def test_rendered_prompt_is_the_documented_template(backend):
    assert backend.variant == "lg3" and backend.has_template
    assert backend.render("draw a cat") == EXPECTED


def test_template_less_tokenizer_renders_the_shipped_template(backend):
    bare = LlamaGuardBackend(backend.model, _tokenizer(with_template=False), TAXONOMY, "lg3")
    assert not bare.has_template
    assert bare.render("draw a cat") == EXPECTED
    plain = LlamaGuardBackend(backend.model, _tokenizer(with_template=False), Taxonomy(), "lg3")
    rendered = plain.render("draw a cat")
    assert "S14: Code Interpreter Abuse.\n<END UNSAFE" in rendered and "S15" not in rendered


def test_scores_match_a_manual_softmax(backend):
    [result] = backend.score_texts(["draw a cat"])
    tokenizer = backend.tokenizer
    ids = tokenizer(EXPECTED + "unsafe\nS", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0]
    safe, unsafe = tokenizer.convert_tokens_to_ids(["safe", "unsafe"])
    decision = logits[-4]  # the position before "unsafe", "\n", "S"
    p_unsafe = torch.softmax(torch.stack([decision[safe], decision[unsafe]]), 0)[1].item()
    assert result.unsafe == pytest.approx(p_unsafe, abs=1e-5)
    shown = {"S1": "1", "S10": "10", "XD": "15"}
    numbers = torch.softmax(logits[-1][tokenizer.convert_tokens_to_ids([str(n) for n in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 15)])], 0)
    relative = numbers / numbers.max()
    order = ["S1", "S2", "S3", "S4", "S5", "S7", "S8", "S9", "S10", "S11", "S12", "S13", "XD"]
    for code in shown:
        assert result.scores[code] == pytest.approx(p_unsafe * relative[order.index(code)].item(), abs=1e-5)
    assert set(result.scores) == set(order)  # excluded S6/S14 are not scored
    assert all(0.0 <= value <= 1.0 for value in result.scores.values())
    assert max(result.scores.values()) == pytest.approx(p_unsafe, abs=1e-6)


def test_left_padded_batch_matches_one_by_one(backend):
    batch = backend.score_texts(TEXTS)
    for text, batched in zip(TEXTS, batch):
        [single] = backend.score_texts([text])
        assert batched.unsafe == pytest.approx(single.unsafe, abs=1e-4)
        for code, value in single.scores.items():
            assert batched.scores[code] == pytest.approx(value, abs=1e-4)


def test_text_only_variant_refuses_images(backend):
    from PIL import Image

    from guardforge.errors import GuardforgeError

    with pytest.raises(GuardforgeError, match="text only"):
        backend.score_images([Image.new("RGB", (8, 8))])


def test_parse_generated_text():
    assert parse_output("unsafe\nS1,S10") == (True, ["S1", "S10"])
    assert parse_output("\n\nsafe") == (False, [])
    assert parse_output("unsafe\nS15", TAXONOMY) == (True, ["XD"])
    with pytest.raises(Exception, match="unexpected"):
        parse_output("maybe")


def test_guard_from_settings_runs_llama_guard(model_dir, tmp_path):
    from guardforge.guard.service import Guard
    from guardforge.settings import Settings

    settings = Settings(home=tmp_path, device="cpu", guard={"text_backend": "llama-guard",
                                                            "llama_guard_path": str(model_dir)})
    guard = Guard.from_settings(settings)
    verdict = guard.check_prompt("draw a cat")
    assert verdict.backend == "llama-guard" and verdict.error is None
    assert 0.0 <= verdict.unsafe <= 1.0 and "S14" not in verdict.scores  # default policy excludes S14
    assert set(verdict.scores) == {f"S{n}" for n in range(1, 14)}
    assert guard.audit.recent(1)[0]["scores"] == pytest.approx(verdict.scores)


LG4_IMAGE_TOKENS = ("<|image_start|>", "<|image_end|>", "<|patch|>", "<|tile_x_separator|>",
                    "<|tile_y_separator|>")


def _tiny_llama4(tokenizer):
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4TextConfig, Llama4VisionConfig

    text = Llama4TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, intermediate_size_mlp=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_local_experts=2, num_experts_per_tok=1, moe_layers=[1], max_position_embeddings=1024,
                            attention_chunk_size=1024, pad_token_id=tokenizer.pad_token_id)
    # intermediate_size = hidden_size / pixel_shuffle_ratio**2: the adapter reads the pixel-shuffled channels.
    vision = Llama4VisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14, vision_output_dim=32, projector_input_dim=32,
                                projector_output_dim=32, pixel_shuffle_ratio=0.5)
    # The model swaps image features in at the patch tokens the processor writes.
    config = Llama4Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                          image_token_index=tokenizer.convert_tokens_to_ids("<|patch|>"))
    torch.manual_seed(0)
    return Llama4ForConditionalGeneration(config).eval()


def test_llama_guard_4_class_scores_text_batches(tmp_path):
    """Llama4ForConditionalGeneration (tiny, text + vision config) through the same scoring path."""
    from guardforge.guard.backends.llama_guard import detect_variant

    tokenizer = _tokenizer(with_template=True, extra_specials=LG4_IMAGE_TOKENS)
    model = _tiny_llama4(tokenizer)
    model.config.save_pretrained(tmp_path)
    assert detect_variant(tmp_path) == "lg4"
    backend = LlamaGuardBackend(model, tokenizer, TAXONOMY, "lg4")
    assert backend.render("draw a cat") == EXPECTED
    batch = backend.score_texts(TEXTS)
    for text_input, batched in zip(TEXTS, batch):
        [single] = backend.score_texts([text_input])
        assert 0.0 <= batched.unsafe <= 1.0
        assert batched.unsafe == pytest.approx(single.unsafe, abs=1e-4)
        assert batched.scores == pytest.approx(single.scores, abs=1e-4)


def check_image_scores(backend, abs_tol: float) -> None:
    """The image path of a vision Llama Guard: the image placeholder in the prompt, scores in range for every
    category, different images scored differently, an image in a batch scored as alone, text still read."""
    import numpy as np
    from PIL import Image

    assert "User: <|image|>\n\n<END CONVERSATION>" in backend.render(image=True)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(2)]
    first, second = backend.score_images(images)
    for result in (first, second):
        assert 0.0 <= result.unsafe <= 1.0 and set(result.scores) == set(TAXONOMY.codes)
    assert first.unsafe != pytest.approx(second.unsafe, abs=1e-6)  # the image reaches the decision
    [again] = backend.score_images(images[:1])
    assert again.unsafe == pytest.approx(first.unsafe, abs=abs_tol)
    assert again.scores == pytest.approx(first.scores, abs=abs_tol)
    assert len(backend.score_texts(TEXTS)) == 3  # the same model reads text prompts


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="transformers' Llama 4 image processor needs torchvision, not installable beside torch 2.13")
def test_llama_guard_4_scores_images():
    """Llama4ForConditionalGeneration (tiny) + Llama4Processor: the LG4 image path, where torchvision exists."""
    import transformers
    from transformers import Llama4Processor

    tokenizer = _tokenizer(with_template=True, extra_specials=LG4_IMAGE_TOKENS)
    image_processor = (getattr(transformers, "Llama4ImageProcessor", None) or transformers.Llama4ImageProcessorFast)(
        size={"height": 28, "width": 28}, max_patches=1)
    processor = Llama4Processor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                pixel_shuffle_ratio=0.5, chat_template=LLAMA_GUARD_4_TEMPLATE)
    backend = LlamaGuardBackend(_tiny_llama4(tokenizer), processor, TAXONOMY, "lg4")
    check_image_scores(backend, abs_tol=1e-4)


def test_llama_guard_3_vision_scores_images():
    """MllamaForConditionalGeneration (tiny) + MllamaProcessor: the image path, with the shipped template."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tokenizer = _tokenizer(with_template=False)
    processor = MllamaProcessor(image_processor=MllamaImageProcessorPil(size={"height": 28, "width": 28},
                                                                        max_image_tiles=1), tokenizer=tokenizer)
    text = MllamaTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1],
                            max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    vision = MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14, max_num_tiles=1,
                                vision_output_dim=64, intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]])
    config = MllamaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                          image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config).eval()
    for name, parameter in model.named_parameters():
        if "gate" in name and parameter.numel() == 1:  # zero-initialised tanh gates would hide the image
            torch.nn.init.constant_(parameter, 1.0)
    backend = LlamaGuardBackend(model, processor, TAXONOMY, "lg3-vision")
    check_image_scores(backend, abs_tol=1e-5)
