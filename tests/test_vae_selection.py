"""Choosing a VAE per request: the tiny model's checkpoint VAE against a VAE of the same shape with other weights,
in models/VAE, through Studio, the infotext and the A1111 adapter (the live server is in test_server_vae.py)."""

from __future__ import annotations

import numpy as np
import pytest

from guardforge.a1111.adapter import A1111, to_generation_request
from guardforge.a1111.schemas import Txt2ImgPayload
from guardforge.engine.infotext import build_infotext, parse_infotext, request_from_infotext
from guardforge.engine.request import GenerationRequest
from guardforge.errors import ModelNotFound
from guardforge.settings import Settings
from guardforge.studio import Studio

SMALL = {"steps": 2, "width": 32, "height": 32, "seed": 5}


def save_other_vae(home, name: str = "alt-vae"):
    """A VAE with the tiny model's config and other weights (another seed), as a diffusers folder in models/VAE."""
    from tests.tiny import tiny_sd_components

    folder = home / "models" / "VAE" / name
    tiny_sd_components(home / ".alt-tokenizer", seed=7)["vae"].save_pretrained(folder, safe_serialization=True)
    return folder


def save_other_vae_file(home, name: str = "alt-file.safetensors"):
    """The same VAE as save_other_vae's, as A1111 users have VAEs: one .safetensors file in the original (LDM)
    key names, without the checkpoint's first_stage_model. prefix."""
    import safetensors.torch

    from guardforge.models.convert import VAE_PREFIX, vae_to_original
    from tests.tiny import tiny_sd_components

    vae = tiny_sd_components(home / ".alt-tokenizer", seed=7)["vae"]
    state = {key[len(VAE_PREFIX):]: tensor.contiguous() for key, tensor in vae_to_original(vae).items()}
    path = home / "models" / "VAE" / name
    safetensors.torch.save_file(state, path)
    return path


@pytest.fixture
def studio(gf_home):
    save_other_vae(gf_home)
    return Studio(Settings(home=gf_home, default_model="tiny-sd", device="cpu", guard={"policy": "off"}))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].pil)


def test_a_chosen_vae_changes_the_image_and_automatic_is_the_checkpoints_own(studio):
    own = studio.generate(GenerationRequest(prompt="a red square", **SMALL), save=False)
    automatic = studio.generate(GenerationRequest(prompt="a red square", vae="Automatic", **SMALL), save=False)
    other = studio.generate(GenerationRequest(prompt="a red square", vae="alt-vae", **SMALL), save=False)

    assert np.array_equal(pixels(own), pixels(automatic))
    # Same seed, same UNet latents: only the decoder differs, and a decoder with other weights draws other pixels.
    assert np.abs(pixels(own).astype(int) - pixels(other).astype(int)).mean() > 1
    assert own.vae is None and automatic.vae is None and "VAE" not in own.images[0].infotext

    vae_hash = studio.models("vae")[0].sha256()[:10]
    assert (other.vae, other.vae_hash) == ("alt-vae", vae_hash)
    assert f"Model: tiny-sd, VAE hash: {vae_hash}, VAE: alt-vae" in other.images[0].infotext
    # The same request again runs on the cached pipeline with that VAE: the same pixels.
    again = studio.generate(GenerationRequest(prompt="a red square", vae="alt-vae", **SMALL), save=False)
    assert np.array_equal(pixels(other), pixels(again))


def test_a_single_file_vae_is_read_with_the_checkpoints_own_vae_config(studio, gf_home):
    save_other_vae_file(gf_home)
    folder = studio.generate(GenerationRequest(prompt="a red square", vae="alt-vae", **SMALL), save=False)
    # By its file name, as A1111 clients and infotexts name it.
    single = studio.generate(GenerationRequest(prompt="a red square", vae="alt-file.safetensors", **SMALL), save=False)
    assert np.array_equal(pixels(folder), pixels(single))  # the same weights, whichever way they were saved
    assert single.vae == "alt-file.safetensors"
    assert single.images[0].infotext.endswith(f"VAE hash: {single.vae_hash}, VAE: alt-file.safetensors")
    assert request_from_infotext(single.images[0].infotext).vae == "alt-file.safetensors"


def test_the_infotext_gives_the_vae_back(studio):
    made = studio.generate(GenerationRequest(prompt="a blue circle", vae="alt-vae", **SMALL), save=False)
    text = made.images[0].infotext
    assert parse_infotext(text)["VAE"] == "alt-vae"
    request = request_from_infotext(text)
    assert request.vae == "alt-vae"
    remade = studio.generate(request, save=False)
    assert np.array_equal(pixels(made), pixels(remade))
    # A1111 writes the file name of a single-file VAE, extension and all; it parses back as written.
    written = build_infotext(GenerationRequest(prompt="p"), seed=1, width=8, height=8, model_name="m",
                             model_hash="0123456789", vae_name="vae-ft-mse.safetensors", vae_hash="abcdef0123")
    assert written.endswith("Model hash: 0123456789, Model: m, VAE hash: abcdef0123, VAE: vae-ft-mse.safetensors")
    assert request_from_infotext(written).vae == "vae-ft-mse.safetensors"


@pytest.mark.parametrize("name", ["Automatic", "None", "automatic", " ", None])
def test_the_checkpoints_own_vae_has_one_spelling(name):
    assert GenerationRequest(prompt="p", vae=name).vae is None


def test_an_unknown_vae_is_refused_at_submit_before_any_job(studio):
    with pytest.raises(ModelNotFound, match="no vae named 'nope'; known: alt-vae"):
        studio.submit(GenerationRequest(prompt="a cat", vae="nope", **SMALL))
    # A checkpoint's name is not a VAE's: the VAE folder is the only place looked in.
    with pytest.raises(ModelNotFound, match="no vae named 'tiny-sd'"):
        studio.submit(GenerationRequest(prompt="a cat", vae="tiny-sd", **SMALL))
    assert studio.list_jobs() == []


def test_a_pickled_vae_is_refused_at_submit(studio, gf_home):
    from guardforge.errors import UnsafeModelFormat

    (gf_home / "models" / "VAE" / "old.pt").write_bytes(b"not read: refused by its suffix")
    with pytest.raises(UnsafeModelFormat, match="'old' is a pickle"):
        studio.submit(GenerationRequest(prompt="a cat", vae="old", **SMALL))
    assert studio.list_jobs() == []


def test_a1111_override_settings_sd_vae_is_used_not_ignored():
    payload = Txt2ImgPayload(prompt="p", override_settings={"sd_vae": "alt-vae.safetensors", "sd_hypernetwork": "x"})
    request, ignored = to_generation_request(payload, "tiny-sd")
    assert request.vae == "alt-vae.safetensors"
    assert ignored == ["override_settings.sd_hypernetwork"]
    # The caller's /options sd_vae is the default; a request's override_settings wins, "Automatic" included.
    request, _ = to_generation_request(Txt2ImgPayload(prompt="p"), "tiny-sd", "alt-vae")
    assert request.vae == "alt-vae"
    request, _ = to_generation_request(Txt2ImgPayload(prompt="p", override_settings={"sd_vae": "Automatic"}),
                                       "tiny-sd", "alt-vae")
    assert request.vae is None


def test_a1111_options_set_the_callers_vae_and_refuse_an_unknown_one(studio):
    a1111 = A1111(studio)
    caller = studio.caller()
    assert a1111.shown_options(caller)["sd_vae"] == "Automatic"
    assert a1111.set_options(caller, {"sd_vae": "alt-vae"}) == {"updated": ["sd_vae"], "ignored": []}
    assert a1111.shown_options(caller)["sd_vae"] == "alt-vae"
    with pytest.raises(ModelNotFound, match="no vae named 'nope'"):
        a1111.set_options(caller, {"sd_model_checkpoint": "tiny-sd", "sd_vae": "nope"})
    assert a1111.shown_options(caller)["sd_vae"] == "alt-vae"  # nothing of a refused call was set
    assert a1111.set_options(caller, {"sd_vae": "None"})["updated"] == ["sd_vae"]
    assert a1111.shown_options(caller)["sd_vae"] == "None"
    # Another caller's options are its own.
    assert a1111.shown_options(studio.caller("key-2"))["sd_vae"] == "Automatic"
