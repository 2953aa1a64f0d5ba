"""The UI's extra networks picker: a LoRA or an embedding from the models folder, added to the prompt or the negative
prompt in the syntax the engine reads (`<lora:name:1>`, an embedding's bare name), as A1111's cards add them."""

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
