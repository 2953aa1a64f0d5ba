"""ShieldGemma 2 backend on a tiny randomly initialised ShieldGemma2ForImageClassification built here."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from guardforge.guard.backends.shieldgemma import POLICY_CODES, ShieldGemma2Backend

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<start_of_image>", "<image_soft_token>", "<end_of_image>",
            "<start_of_turn>", "<end_of_turn>"]
SPLIT = r"\d+|[A-Za-z]+|\s|[^\sA-Za-z\d]"
# Gemma's turn format, enough for the processor to place the image and the policy text.
TEMPLATE = ("{{ bos_token }}<start_of_turn>user\n{% for part in messages[0]['content'] %}"
            "{% if part['type'] == 'image' %}<start_of_image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
            "<end_of_turn>\n<start_of_turn>model\n")


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (36, 28, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import (
        Gemma3ImageProcessorPil,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        ShieldGemma2Config,
        ShieldGemma2ForImageClassification,
        ShieldGemma2Processor,
        SiglipVisionConfig,
    )
    from transformers.models.shieldgemma2.processing_shieldgemma2 import DEFAULT_SHIELDGEMMA2_POLICIES

    corpus = " ".join(DEFAULT_SHIELDGEMMA2_POLICIES.values()) + " user model Yes No \n"
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(re.findall(SPLIT, corpus))))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
                              "eoi_token": "<end_of_image>"})
    tokenizer.chat_template = TEMPLATE
    processor = ShieldGemma2Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                                      tokenizer=tokenizer, chat_template=TEMPLATE, image_seq_length=4)
    text = Gemma3TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                            sliding_window=512)  # both layers see the image tokens
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=7)
    config = ShieldGemma2Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                                boi_token_index=vocab["<start_of_image>"], eoi_token_index=vocab["<end_of_image>"],
                                image_token_index=vocab["<image_soft_token>"])
    config.yes_token_index, config.no_token_index = vocab["Yes"], vocab["No"]
    torch.manual_seed(0)
    model = ShieldGemma2ForImageClassification(config).eval()
    for name, parameter in model.named_parameters():
        if "mm_input_projection_weight" in name:  # initialised to zeros: images would not matter at all
            torch.nn.init.normal_(parameter, std=0.5)
    return model, processor


def test_scores_are_p_yes_per_policy(parts):
    model, processor = parts
    backend = ShieldGemma2Backend(model, processor)
    image = _images(1)[0]
    [result] = backend.score_images([image])
    assert set(result.scores) == {"S12", "S9", "S1"} == backend.categories and result.unsafe is None
    for policy, code in POLICY_CODES.items():
        with torch.no_grad():
            manual = model(**processor(images=[image], policies=[policy], return_tensors="pt")).probabilities
        assert result.scores[code] == pytest.approx(manual[0, 0].item(), abs=1e-5)
        assert 0.0 < result.scores[code] < 1.0


def test_batches_match_one_by_one_and_images_matter(parts):
    backend = ShieldGemma2Backend(*parts, batch_size=2)
    images = _images(3)
    batched = backend.score_images(images)
    singles = [backend.score_images([image])[0] for image in images]
    for a, b in zip(batched, singles):
        for code in a.scores:
            assert a.scores[code] == pytest.approx(b.scores[code], abs=1e-4)
    assert batched[0].scores["S12"] != pytest.approx(batched[1].scores["S12"], abs=1e-6)


def test_guard_blurs_by_shieldgemma_scores(parts, tmp_path):
    from guardforge.guard.policy import Policy
    from guardforge.guard.service import Guard

    backend = ShieldGemma2Backend(*parts)
    [result] = backend.score_images(_images(1))
    threshold = result.scores["S12"] - 1e-3  # just under this image's score: S12 must be violated
    policy = Policy.model_validate({"default": {"threshold": 0.99, "action": "block"},
                                    "categories": {"S12": {"threshold": threshold, "action": "blur"}}})
    [verdict] = Guard(policy, image_backend=backend, audit=None).check_output_images(_images(1))
    assert verdict.violated == ["S12"] and verdict.action == "blur" and verdict.backend == "shieldgemma2"


def test_missing_folder_is_one_line(tmp_path):
    from guardforge.errors import GuardforgeError

    with pytest.raises(GuardforgeError, match="no config.json"):
        ShieldGemma2Backend.from_pretrained(tmp_path)
