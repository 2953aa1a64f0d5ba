"""Loading: single-file round trip offline, shipped SD 1.5 / SDXL configs and CLIP tokenizer, VAE override."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from guardforge.errors import InvalidRequest
from guardforge.models.convert import diffusers_to_original_sd
from guardforge.models.families import family_of_file
from guardforge.models.loading import config_folder, load_pipeline
from guardforge.models.registry import ModelRegistry
from guardforge.settings import Settings


def _generate(pipe) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(1234)
    return pipe("a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=5.0,
                generator=generator, output_type="np").images


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def folder_pipe(gf_home):
    registry = ModelRegistry(Settings())
    return load_pipeline(registry.resolve("tiny-sd"), Settings())


def test_single_file_round_trip_is_identical_offline(gf_home, folder_pipe, tiny_model_dir):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    state = diffusers_to_original_sd(folder_pipe.unet, folder_pipe.vae, folder_pipe.text_encoder)
    target = gf_home / "models" / "Stable-diffusion" / "tiny-single.safetensors"
    save_file(state, str(target))
    assert family_of_file(target) == "sd1"

    registry = ModelRegistry(Settings())
    entry = registry.resolve("tiny-single")
    assert (entry.format, entry.family) == ("single_file", "sd1")
    # The tiny model is not SD 1.5's size, so it reads its configs from its own folder (no weights used).
    single = load_pipeline(entry, Settings(), config_dir=tiny_model_dir)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(folder_pipe, name), getattr(single, name)), name
    assert np.array_equal(_generate(folder_pipe), _generate(single))


def test_pickle_checkpoint_loads_when_allowed(gf_home, folder_pipe, tiny_model_dir):
    state = diffusers_to_original_sd(folder_pipe.unet, folder_pipe.vae, folder_pipe.text_encoder)
    torch.save({"state_dict": state}, gf_home / "models" / "Stable-diffusion" / "tiny-old.ckpt")
    settings = Settings(allow_pickle=True)
    entry = ModelRegistry(settings).resolve("tiny-old")
    assert entry.is_pickle and entry.family == "unknown"  # never unpickled to list it
    pipe = load_pipeline(entry, settings, config_dir=tiny_model_dir)
    assert _same_weights(folder_pipe.unet, pipe.unet)


def test_shipped_configs_unpack_offline_with_clip_tokenizer(gf_home):
    from transformers import CLIPTokenizer

    folder = config_folder("sdxl", Settings())
    assert folder.is_relative_to(gf_home)
    assert config_folder("sdxl", Settings()) == folder  # second call reuses the unpacked folder
    for sub in ("tokenizer", "tokenizer_2"):
        tokenizer = CLIPTokenizer.from_pretrained(folder / sub, local_files_only=True)
        assert len(tokenizer) == 49408
        # The well-known ids of openai/clip-vit-large-patch14.
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert tokenizer("a dog").input_ids == [49406, 320, 1929, 49407]
    padded = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")("a", padding="max_length", max_length=5)
    assert padded.input_ids == [49406, 320, 49407, 0, 0]  # SDXL's second tokenizer pads with "!" (id 0)


@pytest.mark.parametrize(("family", "counts"), [
    # Parameter counts of the published models (UNet, VAE, text encoders).
    ("sd1", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sdxl", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
              "text_encoder_2": 694_659_840}),
])
def test_shipped_configs_build_the_published_architectures(gf_home, family, counts):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = config_folder(family, Settings())
    built = {}
    with torch.device("meta"):  # shapes only: no memory, no weights
        built["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        built["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        built["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        if "text_encoder_2" in counts:
            built["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in built.items()} == counts


@pytest.mark.parametrize(("keys", "family"), [
    (["cond_stage_model.model.transformer.resblocks.0.ln_1.weight"], "sd2"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "sd3"),
    (["double_blocks.0.img_attn.qkv.weight"], "flux"),
])
def test_single_files_without_shipped_configs_say_what_is_missing(gf_home, keys, family):
    save_file({k: torch.zeros(1) for k in keys}, str(gf_home / "models" / "Stable-diffusion" / "big.safetensors"))
    entry = ModelRegistry(Settings()).resolve("big")
    assert entry.family == family
    with pytest.raises(InvalidRequest, match=f"single-file {family} checkpoint offline.*diffusers folder"):
        load_pipeline(entry, Settings())


def test_vae_override_from_vae_folder(gf_home, folder_pipe):
    from tests.tiny import tiny_sd_components

    other = tiny_sd_components(gf_home / "tok", seed=7)["vae"]
    other.save_pretrained(gf_home / "models" / "VAE" / "other-vae")
    registry = ModelRegistry(Settings())
    vae_entry = registry.resolve("other-vae", kind="vae")
    pipe = load_pipeline(registry.resolve("tiny-sd"), Settings(), vae=vae_entry)
    assert _same_weights(pipe.vae, other)
    assert not _same_weights(pipe.vae, folder_pipe.vae)
    assert _same_weights(pipe.unet, folder_pipe.unet)


def test_loading_a_lora_as_checkpoint_is_refused(gf_home):
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, str(gf_home / "models" / "Lora" / "l.safetensors"))
    entry = ModelRegistry(Settings()).resolve("l", kind="lora")
    with pytest.raises(InvalidRequest, match="not a checkpoint"):
        load_pipeline(entry, Settings())


def test_converter_names_match_original_sd_layout(folder_pipe):
    state = diffusers_to_original_sd(folder_pipe.unet, folder_pipe.vae, folder_pipe.text_encoder)
    # Names every SD 1.x tool looks for (diffusers' own single-file detection among them).
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.0.block.0.conv1.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in state, key
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in the LDM VAE
    assert all(t.is_contiguous() for t in state.values())
    n_params = sum(p.numel() for m in (folder_pipe.unet, folder_pipe.vae, folder_pipe.text_encoder)
                   for p in m.parameters())
    assert sum(t.numel() for t in state.values()) == n_params


def test_config_folder_is_rebuilt_when_incomplete(gf_home):
    folder = config_folder("sd1", Settings())
    (folder / "tokenizer" / "vocab.json").unlink()  # e.g. a user cleaning caches by hand
    rebuilt = config_folder("sd1", Settings())
    assert len(json.loads((rebuilt / "tokenizer" / "vocab.json").read_text())) == 49408
    (rebuilt / ".version").write_text("from an older guardforge")
    (rebuilt / "unet" / "config.json").write_text("{}")
    assert json.loads((config_folder("sd1", Settings()) / "unet" / "config.json").read_text())["layers_per_block"] == 2


def test_paths_are_inside_home(gf_home):
    assert Path(config_folder("sd1", Settings())).is_relative_to(gf_home / "cache")


def _tiny_sdxl_folder(folder: Path) -> Path:
    """A tiny SDXL pipeline (two text encoders of different widths, as CLIP-L and bigG differ) on disk."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tests.tiny import write_char_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 64, cross_attention_dim=32 + 64, norm_num_groups=1,
    )
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=16)

    def clip(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=width, intermediate_size=37,
                              layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
                              vocab_size=1000, hidden_act="gelu", projection_dim=width)

    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(folder.parent / "sdxl-tok")))
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=CLIPTextModel(clip(32)), text_encoder_2=CLIPTextModelWithProjection(clip(64)),
        tokenizer=tokenizer, tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def test_sdxl_single_file_round_trip_is_identical_offline(gf_home):
    from guardforge.models.convert import diffusers_to_original_sdxl

    folder = _tiny_sdxl_folder(gf_home / "models" / "Stable-diffusion" / "tiny-xl")
    registry = ModelRegistry(Settings())
    entry = registry.resolve("tiny-xl")
    assert entry.family == "sdxl"
    pipe = load_pipeline(entry, Settings())
    state = diffusers_to_original_sdxl(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    for key in ("model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.1.model.text_projection",
                "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
                "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.bias",
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"):
        assert key in state, key  # the names of Stability's sd_xl_base_1.0.safetensors
    save_file(state, str(folder.parent / "tiny-xl-single.safetensors"))

    single_entry = registry.resolve("tiny-xl-single")
    assert (single_entry.format, single_entry.family) == ("single_file", "sdxl")
    single = load_pipeline(single_entry, Settings(), config_dir=folder)
    assert type(single).__name__ == "StableDiffusionXLPipeline"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_weights(getattr(pipe, name), getattr(single, name)), name
    assert np.array_equal(_generate(pipe), _generate(single))


def test_converter_refuses_unmerged_lora_layers(folder_pipe, tmp_path):
    from peft import LoraConfig

    from tests.tiny import tiny_sd_components

    unet = tiny_sd_components(tmp_path / "tok", seed=0)["unet"]
    unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]))
    with pytest.raises(ValueError, match="merge them first"):
        diffusers_to_original_sd(unet, folder_pipe.vae, folder_pipe.text_encoder)
