"""Registry: A1111 layout scan, families from headers and folders, hashes, name checks, pickle policy."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from guardforge.errors import ModelNotFound, PathEscape, UnsafeModelFormat
from guardforge.models.families import family_from_folder, family_of_file, read_safetensors_header
from guardforge.models.loading import check_loadable
from guardforge.models.registry import ModelRegistry
from guardforge.settings import Settings


def _write(path: Path, keys: dict[str, tuple[int, ...]] | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = keys if isinstance(keys, dict) else {k: (1,) for k in keys}
    save_file({k: torch.zeros(shape) for k, shape in shapes.items()}, str(path))
    return path


SD1_KEYS = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "model.diffusion_model.input_blocks.0.0.weight"]


@pytest.fixture
def registry(gf_home) -> ModelRegistry:
    return ModelRegistry(Settings())


def test_scans_a1111_layout(gf_home):
    models = gf_home / "models"
    _write(models / "Stable-diffusion" / "sd15-like.safetensors", SD1_KEYS)
    _write(models / "Stable-diffusion" / "XL" / "nested.safetensors", ["conditioner.embedders.1.model.ln_final.weight"])
    _write(models / "Stable-diffusion" / ".partial.safetensors", SD1_KEYS)  # a save in progress
    torch.save({"state_dict": {}}, models / "Stable-diffusion" / "old.ckpt")
    (models / "Stable-diffusion" / "notes.txt").write_text("not a model")
    _write(models / "Lora" / "style.safetensors", ["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"])
    _write(models / "VAE" / "vae-ft-mse.safetensors", ["encoder.conv_in.weight"])
    cn = models / "ControlNet" / "canny"
    cn.mkdir(parents=True)
    (cn / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 768}))

    registry = ModelRegistry(Settings())
    rows = {(e.kind, e.name): (e.format, e.family, e.source) for e in registry.list()}
    assert rows == {
        ("checkpoint", "XL/nested"): ("single_file", "sdxl", "user"),
        ("checkpoint", "old"): ("single_file", "unknown", "user"),
        ("checkpoint", "sd15-like"): ("single_file", "sd1", "user"),
        ("checkpoint", "tiny-sd"): ("diffusers", "sd1", "user"),
        ("lora", "style"): ("single_file", "sdxl", "user"),
        ("vae", "vae-ft-mse"): ("single_file", "unknown", "user"),
        ("controlnet", "canny"): ("diffusers", "sd1", "user"),
        ("checkpoint", "tiny-shapes"): ("diffusers", "sd1", "shipped"),
        ("controlnet", "tiny-shapes-canny"): ("diffusers", "sd1", "shipped"),
    }
    assert [e.name for e in registry.list("lora")] == ["style"]
    assert registry.resolve("old").is_pickle


@pytest.mark.parametrize(("keys", "family"), [
    (SD1_KEYS, "sd1"),
    (["cond_stage_model.model.transformer.resblocks.0.ln_1.weight"], "sd2"),
    (["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
      "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"], "sdxl"),
    (["conditioner.embedders.0.model.ln_final.weight"], "sdxl"),  # the SDXL refiner
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "sd3"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "flux"),
    (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], "flux"),
    # UNet-only files: the cross-attention width tells SD 1.x from SD 2.x.
    ({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (2, 768)}, "sd1"),
    ({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (2, 1024)}, "sd2"),
    (["some.other.weight"], "unknown"),
    # LoRAs (kohya and diffusers/PEFT names): the adapted layers' input width tells the family.
    ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}, "sd1"),
    ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024)}, "sd2"),
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)}, "sdxl"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}, "sd1"),
    ({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 1024)}, "sd2"),
    (["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"], "sdxl"),
])
def test_family_from_safetensors_header(tmp_path, keys, family):
    path = _write(tmp_path / "m.safetensors", keys)
    assert family_of_file(path) == family


def test_header_is_read_without_tensors(tmp_path):
    path = _write(tmp_path / "m.safetensors", {"a.weight": (3, 5)})
    assert read_safetensors_header(path)["a.weight"]["shape"] == [3, 5]
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert family_of_file(garbage) == "unknown"


@pytest.mark.parametrize(("index", "sub", "family"), [
    ({"_class_name": "StableDiffusionXLPipeline"}, {}, "sdxl"),
    ({"_class_name": "StableDiffusion3Pipeline"}, {}, "sd3"),
    ({"_class_name": "FluxPipeline"}, {}, "flux"),
    ({"_class_name": "StableDiffusionPipeline"}, {"unet/config.json": {"cross_attention_dim": 1024}}, "sd2"),
    ({"_class_name": "StableDiffusionPipeline"}, {"unet/config.json": {"cross_attention_dim": 768}}, "sd1"),
    ({"_class_name": "DiffusionPipeline"}, {"transformer/config.json": {"_class_name": "FluxTransformer2DModel"}},
     "flux"),
    ({"_class_name": "DiffusionPipeline"}, {"transformer/config.json": {"_class_name": "SD3Transformer2DModel"}},
     "sd3"),
])
def test_family_from_folder(tmp_path, index, sub, family):
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    for rel, config in sub.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(config))
    assert family_from_folder(tmp_path) == family


def test_tiny_folder_is_sd1(tiny_model_dir):
    # A Stable Diffusion pipeline at a toy width still has SD 1.x's architecture.
    assert family_from_folder(tiny_model_dir) == "sd1"


def test_sha256_is_lazy_cached_on_disk_and_a1111_short(gf_home):
    path = _write(gf_home / "models" / "Stable-diffusion" / "m.safetensors", SD1_KEYS)
    entry = ModelRegistry(Settings()).resolve("m")
    assert entry.short_hash_if_known is None  # nothing hashed by listing or resolving
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.sha256() == expected
    assert entry.short_hash() == expected[:10] == entry.short_hash_if_known

    # A new registry (a new run) finds it in the JSON cache without hashing: prove it by planting a value.
    cache_file = gf_home / "cache" / "hashes.json"
    data = json.loads(cache_file.read_text())
    data[str(path.resolve())]["sha256"] = "ab" * 32
    cache_file.write_text(json.dumps(data))
    again = ModelRegistry(Settings()).resolve("m")
    assert again.short_hash_if_known == "ababababab"

    # Changing the file (size or mtime) invalidates the cached value.
    _write(path, SD1_KEYS + ["extra.weight"])
    fresh = ModelRegistry(Settings()).resolve("m")
    assert fresh.short_hash_if_known is None
    assert fresh.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_hash_covers_weights_in_path_order(gf_home, tiny_model_dir):
    folder = gf_home / "models" / "Stable-diffusion" / "tiny-sd"
    digest = hashlib.sha256()
    weights = sorted((p for p in folder.rglob("*") if p.suffix == ".safetensors"),
                     key=lambda p: p.relative_to(folder).as_posix())
    assert len(weights) == 3  # unet, vae, text_encoder
    for p in weights:
        digest.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    registry = ModelRegistry(Settings())
    assert registry.resolve("tiny-sd").sha256() == digest.hexdigest()
    # The same weights under another name (and with another README) hash the same.
    shutil.copytree(folder, folder.parent / "copy")
    (folder.parent / "copy" / "README.md").write_text("notes")
    assert registry.resolve("copy").sha256() == digest.hexdigest()


def test_resolve_by_name_extension_hash_and_a1111_title(gf_home, registry):
    _write(gf_home / "models" / "Stable-diffusion" / "m.safetensors", SD1_KEYS)
    entry = registry.resolve("m")
    assert registry.resolve("m.safetensors") is entry
    short = entry.short_hash()
    assert registry.resolve(short) is entry
    assert registry.resolve(f"m.safetensors [{short}]") is entry
    with pytest.raises(ModelNotFound, match="known: m, tiny-sd"):
        registry.resolve("missing")
    with pytest.raises(ModelNotFound):
        registry.resolve("m", kind="lora")


def test_new_models_appear_without_restart(gf_home, registry, tiny_model_dir):
    assert registry.names("checkpoint") == ["tiny-sd", "tiny-shapes"]
    # A diffusers folder being saved (model_index.json comes last) is not listed piece by piece...
    saving = gf_home / "models" / "Stable-diffusion" / "saving"
    shutil.copytree(tiny_model_dir, saving, ignore=shutil.ignore_patterns("model_index.json"))
    assert registry.names("checkpoint") == ["tiny-sd", "tiny-shapes"]
    # ...and appears whole once it is complete.
    shutil.copy(tiny_model_dir / "model_index.json", saving / "model_index.json")
    assert registry.names("checkpoint") == ["saving", "tiny-sd", "tiny-shapes"]
    shutil.rmtree(saving)
    _write(gf_home / "models" / "Stable-diffusion" / "trained" / "dreambooth.safetensors", SD1_KEYS)
    assert "trained/dreambooth" in registry.names("checkpoint")
    (gf_home / "models" / "Stable-diffusion" / "trained" / "dreambooth.safetensors").unlink()
    assert registry.names("checkpoint") == ["tiny-sd", "tiny-shapes"]


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../b", "..\\x", "C:\\x", "C:x"])
def test_names_that_escape_are_refused(registry, name):
    with pytest.raises(PathEscape):
        registry.resolve(name)


def test_symlink_out_of_models_folder_is_refused(gf_home, tmp_path, registry):
    outside = _write(tmp_path / "elsewhere" / "secret.safetensors", SD1_KEYS)
    os.symlink(outside, gf_home / "models" / "Stable-diffusion" / "linked.safetensors")
    with pytest.raises(PathEscape, match="outside"):
        registry.resolve("linked")
    assert next(e for e in registry.list() if e.name == "linked").family == "unknown"  # never opened
    # A link to a folder above itself does not make the scan endless.
    os.symlink(gf_home / "models", gf_home / "models" / "Stable-diffusion" / "loop")
    assert "tiny-sd" in registry.names()
    # A link that stays inside the folder is fine.
    os.symlink(gf_home / "models" / "Stable-diffusion" / "tiny-sd", gf_home / "models" / "Stable-diffusion" / "alias")
    assert registry.resolve("alias").family == "sd1"


def test_pickle_is_listed_but_refused_unless_allowed(gf_home):
    folder = gf_home / "models" / "Stable-diffusion"
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.ones(4)}, "epoch": 3}, folder / "old.ckpt")
    entry = ModelRegistry(Settings()).resolve("old.ckpt")
    with pytest.raises(UnsafeModelFormat, match="arbitrary code") as info:
        check_loadable(entry, Settings())
    check_loadable(entry, Settings(allow_pickle=True))  # no error

    # The conversion command the message gives works as written, in the model's folder.
    command = re.search(r'(python -c ".*?")', str(info.value)).group(1)
    assert "weights_only=True" in command
    subprocess.run(command.replace("python", sys.executable, 1), shell=True, cwd=folder, check=True)
    assert load_file(folder / "old.safetensors").keys() == {"model.diffusion_model.out.2.bias"}
    registry = ModelRegistry(Settings())
    assert not registry.resolve("old.safetensors").is_pickle
    assert not registry.resolve("old").is_pickle  # the converted file wins the shared name
    assert registry.resolve("old.ckpt").is_pickle


def test_shipped_models_absent_present_and_overridden(gf_home, tmp_path, tiny_model_dir):
    registry = ModelRegistry(Settings())
    registry.shipped_root = tmp_path / "assets" / "models"  # where the package keeps tiny-shapes
    assert registry.names("checkpoint") == ["tiny-sd"]  # absent: no error
    shutil.copytree(tiny_model_dir, registry.shipped_root / "tiny-shapes")
    registry.refresh()
    shipped = registry.resolve("tiny-shapes")
    assert (shipped.source, shipped.format, shipped.family) == ("shipped", "diffusers", "sd1")
    # A user model of the same name replaces the shipped one.
    _write(gf_home / "models" / "Stable-diffusion" / "tiny-shapes.safetensors", SD1_KEYS)
    assert registry.resolve("tiny-shapes").source == "user"
    assert [e.name for e in registry.list()].count("tiny-shapes") == 1
