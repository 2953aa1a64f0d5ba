"""The seed row's "Extra" part, as A1111 has it: variation seed and strength, and "resize seed from"."""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr


class SeedExtras(NamedTuple):
    extra: Any  # the checkbox: unticked, none of the rest applies (A1111's)
    subseed: Any
    strength: Any
    resize_w: Any
    resize_h: Any


def build(limits) -> SeedExtras:
    """The checkbox and, shown while it is ticked, the row of extra seed controls; call inside a Blocks."""
    extra = gr.Checkbox(False, label="Extra", elem_id="gf-seed-extra")
    with gr.Row(visible=False) as row:
        subseed = gr.Number(-1, precision=0, label="Variation seed (-1: random)", elem_id="gf-subseed")
        strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength", elem_id="gf-subseed-strength")
        resize_w = gr.Slider(0, limits.max_width, value=0, step=8, label="Resize seed from width (0: off)",
                             elem_id="gf-seed-resize-w")
        resize_h = gr.Slider(0, limits.max_height, value=0, step=8, label="Resize seed from height (0: off)",
                             elem_id="gf-seed-resize-h")
    extra.change(lambda on: gr.update(visible=bool(on)), [extra], [row])
    return SeedExtras(extra, subseed, strength, resize_w, resize_h)


def request_fields(extra, subseed, strength, resize_w, resize_h) -> dict[str, Any]:
    """The GenerationRequest fields the controls ask for; none while Extra is unticked."""
    if not extra:
        return {}
    return {"subseed": int(subseed if subseed is not None else -1), "subseed_strength": float(strength or 0),
            "seed_resize_from_w": int(resize_w or 0) or -1, "seed_resize_from_h": int(resize_h or 0) or -1}


def updates(params: dict) -> tuple:
    """The controls set from a request's fields (PNG info, a reused job): Extra ticked when they vary anything."""
    get = params.get
    strength = float(get("subseed_strength") or 0)
    w, h = int(get("seed_resize_from_w") or -1), int(get("seed_resize_from_h") or -1)
    used = strength > 0 or (w > 0 and h > 0)
    return (gr.update(value=used), gr.update(value=get("subseed", -1)), gr.update(value=strength),
            gr.update(value=max(w, 0)), gr.update(value=max(h, 0)))
