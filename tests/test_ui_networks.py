"""The UI's extra networks picker on a shared_server server: it lists the models folder's LoRAs and embeddings, adds each in
the syntax the engine reads, and what it adds reaches the generation (the infotext names the embedding's hash)."""

from __future__ import annotations


import pytest
import torch

from tests.test_engine_embeddings import WIDTH, write_safetensors
from tests.ui_inputs import txt2img_off


@pytest.fixture(scope="module")
def client(shared_server):
    from gradio_client import Client

    client = Client(f"{shared_server.url}/ui/", verbose=False)
    yield client
    client.close()  # its event stream would hold the server's graceful shutdown open for 10 s


def test_the_picker_adds_each_network_in_the_engines_syntax(client):
    assert client.predict("a cat", "<lora:pixel:1>", api_name="/add_network") == "a cat <lora:pixel:1>"
    assert client.predict("", "glow", api_name="/add_network") == "glow"
    # Added once: a second click on the same network leaves the prompt as it is.
    assert client.predict("a cat glow", "glow", api_name="/add_network") == "a cat glow"
    assert client.predict("blurry", "glow", api_name="/add_network_negative") == "blurry glow"
    assert client.predict("a cat", None, api_name="/add_network") == "a cat"


def test_the_picker_lists_the_folders_networks_and_sees_new_ones(shared_server, client):
    listed = client.predict(api_name="/refresh_networks")
    assert [c[0] for c in listed["choices"]] == ["LoRA: pixel", "Embedding: glow"]
    write_safetensors(shared_server.home / "models" / "embeddings" / "fog.safetensors",
                      torch.randn((1, WIDTH), generator=torch.Generator().manual_seed(1)))
    listed = client.predict(api_name="/refresh_networks")
    assert ["Embedding: fog", "fog"] in [list(c) for c in listed["choices"]]


def test_an_added_embedding_reaches_the_generation(client):
    prompt = client.predict("a red square", "glow", api_name="/add_network")
    fields = ("", "tiny-sd", "Automatic", "Euler a", "Automatic", 2, 7, 32, 32, 3, None, 0.75, None)
    progress, gallery, infotext, _ = client.predict(prompt, *fields, *txt2img_off(), api_name="/run_mode")
    assert 'data-state="done"' in progress and len(gallery) == 1
    assert infotext.startswith("a red square glow") and "TI hashes: " in infotext and "glow: " in infotext


def test_the_style_picker_merges_a_style_into_both_boxes(shared_server, client):
    # An extra styles file, read at use: the server started before it existed.
    (shared_server.home / "styles").mkdir(exist_ok=True)
    (shared_server.home / "styles" / "ui-networks.csv").write_text('name,prompt,negative_prompt\n'
                                                          'ui-poster,"poster of {prompt}","text, watermark"\n')
    assert client.predict("ui-poster", "a cat", "blurry", api_name="/apply_style") == (
        "poster of a cat", "blurry, text, watermark")
