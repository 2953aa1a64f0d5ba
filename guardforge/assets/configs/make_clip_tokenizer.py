"""Rebuild clip/vocab.json.gz and clip/merges.txt.gz from OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz.

Provenance script, not imported by the package. The BPE file ships in PyPI `open_clip_torch`
(open_clip/bpe_simple_vocab_16e6.txt.gz, MIT licensed, from OpenAI's CLIP). The construction is the one
in CLIP's simple_tokenizer.py, which is how Hugging Face's openai/clip-vit-large-patch14 vocab.json
(49408 tokens) and merges.txt were made:

    python guardforge/assets/configs/make_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

# The byte table CLIPTokenizer itself decodes with, so our vocabularies cannot drift from it.
from transformers.convert_slow_tokenizer import bytes_to_unicode


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    # CLIP keeps 49152 - 256 - 2 merges after the version line.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def main(bpe_gz: str) -> None:
    vocab, merges = build(Path(bpe_gz))
    assert len(vocab) == 49408, len(vocab)
    out = Path(__file__).parent / "clip"
    out.mkdir(exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible.
    with gzip.GzipFile(out / "vocab.json.gz", "wb", mtime=0) as f:
        f.write(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    with gzip.GzipFile(out / "merges.txt.gz", "wb", mtime=0) as f:
        f.write(("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main(sys.argv[1])
