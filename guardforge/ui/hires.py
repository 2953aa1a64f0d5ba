"""The txt2img tab's hires-fix section (A1111's): its components, and the HiresOptions their values make."""

from __future__ import annotations

import gradio as gr

SAME_SAMPLER = "Use same sampler"  # A1111's choice for "the first pass's"


def hires_section(studio) -> list:
    """The section's inputs, in the order hires_options takes them; built inside the txt2img tab."""
    from guardforge.engine.samplers import SAMPLERS

    limits = studio.settings.limits

    def upscalers() -> list[str]:
        return hires_upscalers(studio)

    with gr.Accordion("Hires fix", open=False):
        enabled = gr.Checkbox(False, label="Hires fix: upscale, then a second pass", elem_id="gf-hires")
        with gr.Row():
            upscaler = gr.Dropdown(upscalers(), value="Latent", label="Upscaler", elem_id="gf-hires-upscaler")
            scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="gf-hires-scale")
            steps = gr.Slider(0, limits.max_steps, value=0, step=1, label="Hires steps (0: as Steps)")
            strength = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength", elem_id="gf-hires-strength")
        with gr.Row():
            resize_x = gr.Slider(0, limits.max_width, value=0, step=8, label="Resize width to (0: by scale)")
            resize_y = gr.Slider(0, limits.max_height, value=0, step=8, label="Resize height to (0: by scale)")
            sampler = gr.Dropdown([SAME_SAMPLER, *SAMPLERS], value=SAME_SAMPLER, label="Hires sampler")
        # value="" (not left unset): API callers written before hires fix may then leave the section out.
        prompt = gr.Textbox("", label="Hires prompt (empty: the prompt)", lines=1)
        negative = gr.Textbox("", label="Hires negative prompt (empty: the negative prompt)", lines=1)
    upscaler.focus(lambda: gr.update(choices=upscalers()), None, upscaler)  # models added since the page loaded
    return [enabled, upscaler, scale, steps, strength, resize_x, resize_y, sampler, prompt, negative]


def hires_upscalers(studio) -> list[str]:
    """The section's upscaler choices: A1111's latent modes, then every upscaler but "None"."""
    from guardforge.engine.upscalers import LATENT_UPSCALE_MODES

    return list(LATENT_UPSCALE_MODES) + [u.name for u in studio.upscalers_listed() if u.name != "None"]


def hires_options(enabled, upscaler, scale, steps, strength, resize_x, resize_y, sampler, prompt, negative):
    """The HiresOptions the section's values ask for; None when the box is not ticked. gr.Error for bad values."""
    from pydantic import ValidationError

    from guardforge.engine.hires import HiresOptions

    if not enabled:
        return None
    try:
        return HiresOptions(scale=float(scale), upscaler=upscaler, steps=int(steps), denoising_strength=float(strength),
                            resize_x=int(resize_x or 0), resize_y=int(resize_y or 0),
                            sampler=None if sampler in (None, "", SAME_SAMPLER) else sampler,
                            prompt=prompt or None, negative_prompt=negative or None)
    except ValidationError as exc:
        raise gr.Error("hires fix: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                  for e in exc.errors())) from None


def hires_updates(hires: dict | None, upscalers: list[str]) -> tuple:
    """The section set to a request's hires options (PNG info, Reuse): ticked and filled with them, or unticked
    for a request without. An upscaler not installed here (another machine's ESRGAN file) leaves the choice."""
    if not hires:
        return (gr.update(value=False),) + (gr.update(),) * 9
    get = hires.get
    return (
        gr.update(value=True),
        gr.update(value=get("upscaler")) if get("upscaler") in upscalers else gr.update(),
        gr.update(value=get("scale")), gr.update(value=get("steps")), gr.update(value=get("denoising_strength")),
        gr.update(value=get("resize_x")), gr.update(value=get("resize_y")),
        gr.update(value=get("sampler") or SAME_SAMPLER), gr.update(value=get("prompt") or ""),
        gr.update(value=get("negative_prompt") or ""),
    )
