"""The img2img tab's outpainting controls (A1111's outpainting script, per side) and "Masked content"."""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr

from guardforge.engine.masked_content import FILLS
from guardforge.engine.outpaint import SIDES


class OutpaintControls(NamedTuple):
    left: Any
    right: Any
    up: Any
    down: Any
    fill: Any


def masked_content(value: str, elem_id: str):
    """A1111's "Masked content" radio."""
    return gr.Radio(list(FILLS), value=value, label="Masked content", elem_id=elem_id)


def build(limits) -> OutpaintControls:
    """Pixels to add on each side (0: none) and what the new area holds first; call inside a Blocks."""
    with gr.Accordion("Outpaint: extend the image (at Width x Height) on any side", open=False):
        with gr.Row():
            sides = [gr.Slider(0, max(limits.max_width, limits.max_height), value=0, step=8, label=f"{side} (px)",
                               elem_id=f"gf-outpaint-{side}") for side in SIDES]
        fill = masked_content("fill", "gf-outpaint-fill")
    return OutpaintControls(*sides, fill)


def request_fields(left, right, up, down, fill) -> dict[str, Any]:
    """The GenerationRequest fields for the sliders; none when every side is 0 (plain img2img)."""
    pixels = {side: int(value or 0) for side, value in zip(SIDES, (left, right, up, down), strict=True)}
    if not any(pixels.values()):
        return {}
    return {"outpaint": {side: value for side, value in pixels.items() if value}, "inpainting_fill": fill or None}
