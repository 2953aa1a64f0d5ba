"""The UI's extra networks picker: a LoRA or an embedding from the models folder, added to the prompt or the negative
prompt in the syntax the engine reads (`<lora:name:1>`, an embedding's bare name), as A1111's cards add them; and
a style from styles.csv, merged into both boxes as A1111's "apply styles" button does."""

from __future__ import annotations

import gradio as gr

# A1111's default weight for a LoRA added from its card, and its separator between the prompt and the added text.
LORA_WEIGHT = 1
SEPARATOR = " "


def network_choices(studio) -> list[tuple[str, str]]:
    """(label, text to add) per LoRA and embedding the studio knows, LoRAs first."""
    return ([(f"LoRA: {e.name}", f"<lora:{e.name}:{LORA_WEIGHT}>") for e in studio.models("lora")]
            + [(f"Embedding: {e.name}", e.name) for e in studio.models("embedding")])


def added(text: str | None, network: str | None) -> str:
    """`text` with the network's syntax appended; unchanged when nothing is chosen or it is already there."""
    text = text or ""
    if not network or network in text:
        return text
    return f"{text.rstrip()}{SEPARATOR}{network}" if text.strip() else network


def style_names(studio) -> list[str]:
    from guardforge.errors import InvalidRequest

    try:
        return list(studio.prompt_styles())
    except InvalidRequest:  # a malformed styles.csv: no styles to pick; applying one says why
        return []


def styled(studio, style: str | None, prompt: str | None, negative: str | None) -> tuple[str, str]:
    """The boxes with the style merged in (engine/styles.py): what a request naming the style would read. The
    boxes are sent as they are, with no `styles`, so the style is not applied a second time."""
    from guardforge.engine.request import GenerationRequest
    from guardforge.errors import InvalidRequest

    prompt, negative = prompt or "", negative or ""
    if not style:
        return prompt, negative
    try:
        merged = studio.styled(GenerationRequest(prompt=prompt, negative_prompt=negative, styles=[style]))
    except InvalidRequest as exc:
        raise gr.Error(str(exc)) from None
    return merged.prompt, merged.negative_prompt


def with_styles(studio, fields: dict) -> dict:
    """A job's request fields for the form, its styles merged into its texts (the form has no styles box: a
    reused job reads as it ran)."""
    if not fields.get("styles"):
        return fields
    from guardforge.engine.request import GenerationRequest

    return studio.styled(GenerationRequest(**fields)).model_dump()


def build(studio, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    """The picker's row, wired to the two prompt boxes; call inside a Blocks, after the boxes."""

    def refreshed():
        studio.refresh_models()  # a file dropped into models/ since the page loaded
        return gr.update(choices=network_choices(studio), value=None)

    with gr.Row():
        network = gr.Dropdown(network_choices(studio), value=None, label="Extra networks (LoRA, embeddings)",
                              elem_id="gf-network", scale=4)
        refresh = gr.Button("Refresh", elem_id="gf-network-refresh", scale=1)
        to_prompt = gr.Button("Add to prompt", elem_id="gf-network-prompt", scale=1)
        to_negative = gr.Button("Add to negative", elem_id="gf-network-negative", scale=1)
    refresh.click(refreshed, None, [network], api_name="refresh_networks")
    to_prompt.click(added, [prompt, network], [prompt], api_name="add_network")
    to_negative.click(added, [negative, network], [negative], api_name="add_network_negative")

    with gr.Row():
        # styles.csv is read at use: a name added to it after the page loaded is as good as a listed one.
        style = gr.Dropdown(style_names(studio), value=None, label="Style (styles.csv)", elem_id="gf-style",
                            allow_custom_value=True, scale=4)
        refresh_styles = gr.Button("Refresh", elem_id="gf-style-refresh", scale=1)
        apply = gr.Button("Apply style", elem_id="gf-style-apply", scale=2)
    refresh_styles.click(lambda: gr.update(choices=style_names(studio), value=None), None, [style],
                         api_name="refresh_styles")
    apply.click(lambda name, p, n: styled(studio, name, p, n), [style, prompt, negative], [prompt, negative],
                api_name="apply_style")
