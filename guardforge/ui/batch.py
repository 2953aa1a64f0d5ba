"""The form's batch row, as A1111 has it: batch count (batches run one after another) and batch size (images per
batch), and the recycle button that puts the shown image's seed back in the seed box."""

from __future__ import annotations

import re
from typing import NamedTuple

import gradio as gr

SEED = re.compile(r"(?:^|[\s,])Seed: (-?\d+)")


class Batch(NamedTuple):
    count: object
    size: object


def build(limits) -> tuple[Batch, gr.Button]:
    """The row; the recycle button is wired by wire_reuse once the infotext box exists."""
    with gr.Row():
        count = gr.Slider(1, limits.max_n_iter, value=1, step=1, label="Batch count", elem_id="gf-batch-count")
        size = gr.Slider(1, limits.max_batch_size, value=1, step=1, label="Batch size", elem_id="gf-batch-size")
        reuse = gr.Button("♻ Reuse seed", elem_id="gf-reuse-seed", scale=0, min_width=140)
    return Batch(count, size), reuse


def seed_of(infotext: str | None) -> int:
    """The seed an infotext names (the image shown, or the one picked in the gallery)."""
    found = SEED.search(infotext or "")
    if found is None:
        raise gr.Error("generate an image (or pick one in the gallery) first: its seed is reused")
    return int(found.group(1))


def wire_reuse(button: gr.Button, infotext: gr.Textbox, seed: gr.Number) -> None:
    button.click(lambda text: gr.update(value=seed_of(text)), [infotext], [seed], api_name="reuse_seed")


def request_fields(count, size) -> dict:
    return {"n_iter": int(count or 1), "batch_size": int(size or 1)}
