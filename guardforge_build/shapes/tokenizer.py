"""Build the CLIP BPE tokenizer of tiny-shapes: every caption word is one token, any other text still tokenizes."""

from __future__ import annotations

import json
from pathlib import Path

# The byte table CLIPTokenizer itself decodes with, so our vocabularies cannot drift from it.
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's merge loop: repeatedly join the adjacent pair with the lowest merge rank."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte characters (alone and word-final) plus, per word, merges that assemble it into one token.

    Each word is first split by the merges so far, then its pieces are joined left to right by new merges.
    New merges rank below all earlier ones, so they never change how an earlier word is assembled.
    """
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    seen = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        current = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((current, piece), len(ranks))
            current = current + piece
            if current not in seen:
                seen.add(current)
                tokens.append(current)
    tokens += [BOS, EOS]
    merges = sorted(ranks, key=ranks.get)
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: Path, words: list[str], model_max_length: int) -> Path:
    """Write vocab.json, merges.txt and the configs that CLIPTokenizer.from_pretrained reads."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, **specials,
    }))
    return folder
