"""Model merging: A1111's formulas tensor by tensor, block weights by block, its recipe metadata, the merged model
generating under its own name and hash, and the refusals; through Studio, the CLI (in-process) and the API."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from guardforge.engine.request import GenerationRequest
from guardforge.errors import InvalidRequest, ModelNotFound, UnsafeModelFormat
from guardforge.models.merge import MergeRequest
from guardforge.settings import Settings
from guardforge.studio import Studio
from tests.inprocess_cli import cli_caller

SD = "Stable-diffusion"


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_model_dir):
    """Three tiny SD 1.x checkpoints of one architecture, other weights (seeds 0, 1, 2), as single files; and
    seeds 0 and 1 as diffusers folders, made from the same components as the single files."""
    from diffusers import StableDiffusionPipeline

    from guardforge.models.convert import diffusers_to_original_sd, vae_to_original
    from tests.tiny import tiny_sd_components

    folder = tmp_path_factory.mktemp("merge-parents")
    for seed, name in ((0, "a"), (1, "b"), (2, "c")):
        parts = tiny_sd_components(folder / f".tok{seed}", seed=seed)
        save_file(diffusers_to_original_sd(parts["unet"], parts["vae"], parts["text_encoder"]),
                  str(folder / f"{name}.safetensors"))
        if seed == 1:
            StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False).save_pretrained(folder / "b-folder")
    # A VAE of the same shape with other weights, as a diffusers folder and as A1111's single file (LDM names).
    vae = tiny_sd_components(folder / ".tok7", seed=7)["vae"]
    vae.save_pretrained(folder / "alt-vae", safe_serialization=True)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_original(vae).items()},
              str(folder / "alt-file.safetensors"))
    return folder


@pytest.fixture
def studio(gf_home, parents):
    for name in ("a", "b", "c"):
        shutil.copy(parents / f"{name}.safetensors", gf_home / "models" / SD / f"{name}.safetensors")
    shutil.copytree(parents / "b-folder", gf_home / "models" / SD / "tiny-sd-b")
    shutil.copytree(parents / "alt-vae", gf_home / "models" / "VAE" / "alt-vae")
    shutil.copy(parents / "alt-file.safetensors", gf_home / "models" / "VAE" / "alt-file.safetensors")
    studio = Studio(Settings(home=gf_home, default_model="tiny-sd", device="cpu", guard={"policy": "off"}))
    yield studio
    studio.pipelines.unload_all()


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def a1111_legacy_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()[0x100000:0x110000]).hexdigest()[:8]


def test_weighted_sum_is_the_formula_tensor_by_tensor_with_a1111s_recipe(studio, gf_home):
    folder = gf_home / "models" / SD
    result = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.3))

    assert result.name == "0.7(a) + 0.3(b)" and result.file == "0.7(a) + 0.3(b).safetensors"
    out = folder / result.file
    merged, a, b = tensors(out), tensors(folder / "a.safetensors"), tensors(folder / "b.safetensors")
    assert merged.keys() == a.keys() and result.merged == len(a) and result.copied == result.dropped == 0
    for key, theta in merged.items():
        assert theta.dtype == torch.float32
        assert torch.equal(theta, (1 - 0.3) * a[key] + 0.3 * b[key]), key

    # Hashed and listed at once: the registry's hash is the file's, known without hashing again.
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest() and result.short_hash == result.sha256[:10]
    listed = {e.name: e for e in studio.models("checkpoint")}[result.name]
    assert listed.short_hash_if_known == result.short_hash and listed.family == "sd1"

    meta = metadata(out)
    recipe, models = json.loads(meta["sd_merge_recipe"]), json.loads(meta["sd_merge_models"])
    sha = {n: hashlib.sha256((folder / f"{n}.safetensors").read_bytes()).hexdigest() for n in "ab"}
    assert meta["format"] == "pt" and recipe == {
        "type": "webui", "primary_model_hash": sha["a"], "secondary_model_hash": sha["b"],
        "tertiary_model_hash": None, "interp_method": "Weighted sum", "multiplier": 0.3, "save_as_half": False,
        "custom_name": "", "config_source": 0, "bake_in_vae": "None", "discard_weights": "",
        "is_inpainting": False, "is_instruct_pix2pix": False}
    assert models == {sha[n]: {"name": f"{n}.safetensors", "sd_merge_recipe": None,
                               "legacy_hash": a1111_legacy_hash(folder / f"{n}.safetensors")} for n in "ab"}

    # A merge of a merge carries its parent's recipe, as A1111 nests them.
    again = studio.merge_models(MergeRequest(primary=result.name, secondary="c", alpha=0.5, name="grandchild"))
    nested = json.loads(metadata(folder / again.file)["sd_merge_models"])
    assert nested[result.sha256]["sd_merge_recipe"] == recipe and sha["a"] in nested and sha["b"] in nested


def test_add_difference_fp16_missing_keys_and_discarded_weights(studio, gf_home):
    folder = gf_home / "models" / SD
    a, b, c = (tensors(folder / f"{n}.safetensors") for n in "abc")
    lacking = "model.diffusion_model.out.2.bias"
    extra = "model.diffusion_model.only_in_b.weight"
    save_file({k: v for k, v in c.items() if k != lacking}, str(folder / "c.safetensors"))
    save_file({**b, extra: torch.ones(3)}, str(folder / "b.safetensors"))

    result = studio.merge_models(MergeRequest(primary="a", secondary="b", tertiary="c", mode="add_difference",
                                              alpha=0.75, fp16=True, name="sub/diff",
                                              discard_weights=r"^first_stage_model\.decoder\."))
    merged = tensors(folder / "sub" / "diff.safetensors")
    assert result.name == "sub/diff"
    discarded = {k for k in a if k.startswith("first_stage_model.decoder.")}
    assert discarded and merged.keys() == a.keys() - discarded  # B's extra tensor is left out, as A1111 does
    assert result.dropped == len(discarded) + 1 and result.copied == 1
    for key, theta in merged.items():
        assert theta.dtype == torch.float16
        expected = a[key] if key == lacking else a[key] + 0.75 * (b[key] - c[key])  # B - C is 0 where C lacks it
        assert torch.equal(theta, expected.half()), key
    assert json.loads(metadata(folder / "sub" / "diff.safetensors")["sd_merge_recipe"])["interp_method"] == \
        "Add difference"


def expected_block(key: str) -> int | None:
    """The Merge Block Weighted extension's numbering, written out for the tiny UNet (IN00-IN03, M00, OUT00-OUT03)."""
    unet = key.removeprefix("model.diffusion_model.")
    if unet == key:
        return None  # text encoder, VAE: the base alpha
    if unet.startswith("time_embed."):
        return 0
    if unet.startswith("middle_block."):
        return 4
    if unet.startswith("out."):
        return 8
    found = re.match(r"(input|output)_blocks\.(\d+)\.", unet)
    return int(found.group(2)) + (0 if found.group(1) == "input" else 5)


def test_block_weights_hit_their_blocks_in_both_layouts(studio, gf_home):
    from diffusers import UNet2DConditionModel

    from guardforge.models.convert import unet_to_original

    folder = gf_home / "models" / SD
    weights = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    with pytest.raises(InvalidRequest, match=r"9 blocks \(IN00..IN03, M00, OUT00..OUT03\): give 9 block weights, "
                                             r"not 25"):
        studio.merge_models(MergeRequest(primary="a", secondary="b", block_weights=[0.5] * 25))
    single = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.05, block_weights=weights,
                                              name="blocks"))
    merged, a, b = tensors(folder / "blocks.safetensors"), tensors(folder / "a.safetensors"), \
        tensors(folder / "b.safetensors")
    hit = set()
    for key, theta in merged.items():
        block = expected_block(key)
        alpha = 0.05 if block is None else weights[block]
        hit.add(block)
        assert torch.equal(theta, (1 - alpha) * a[key] + alpha * b[key]), key
    assert hit == {None, *range(9)}  # every block weight reaches some tensor
    assert json.loads(metadata(folder / "blocks.safetensors")["sd_merge_recipe"])["block_weights"] == weights
    assert single.merged == len(a)

    # The same merge of the same weights as diffusers folders (tiny-sd is seed 0 as `a` is, tiny-sd-b seed 1):
    # its UNet, in the single-file layout, is the single-file merge's UNet, so both layouts number blocks alike.
    folders = studio.merge_models(MergeRequest(primary="tiny-sd", secondary="tiny-sd-b", alpha=0.05,
                                               block_weights=weights, name="blocks-folder"))
    assert folders.format == "diffusers" and (folder / "blocks-folder" / "model_index.json").is_file()
    unet = unet_to_original(UNet2DConditionModel.from_pretrained(folder / "blocks-folder", subfolder="unet"))
    assert unet.keys() == {k for k in merged if k.startswith("model.diffusion_model.")}
    for key, theta in unet.items():
        assert torch.equal(theta, merged[key]), key


def test_a_merged_model_generates_and_its_infotext_names_and_hashes_it(studio, tiny_model_dir, gf_home):
    from guardforge.engine.infotext import parse_infotext
    from guardforge.models.loading import load_pipeline

    small = dict(prompt="a red square", steps=2, width=32, height=32, seed=5, sampler="Euler")
    result = studio.merge_models(MergeRequest(primary="tiny-sd", secondary="tiny-sd-b", alpha=0.5, name="half"))
    image = studio.generate(GenerationRequest(model="half", **small), save=False).images[0]
    parent = studio.generate(GenerationRequest(model="tiny-sd", **small), save=False).images[0]
    assert image.pil.size == (32, 32) and image.pil.tobytes() != parent.pil.tobytes()
    info = parse_infotext(image.infotext)
    assert (info["Model"], info["Model hash"]) == ("half", result.short_hash)
    assert studio.model(f"{info['Model']} [{info['Model hash']}]").name == "half"  # the title finds it again

    # A VAE baked in draws what the same VAE chosen per request draws.
    baked = studio.merge_models(MergeRequest(primary="tiny-sd", secondary="tiny-sd-b", alpha=0.5, name="half-vae",
                                             bake_in_vae="alt-vae"))
    assert baked.recipe["bake_in_vae"] == "alt-vae" and baked.baked > 0
    with_baked = studio.generate(GenerationRequest(model="half-vae", **small), save=False).images[0]
    chosen = studio.generate(GenerationRequest(model="half", vae="alt-vae", **small), save=False).images[0]
    assert with_baked.pil.tobytes() == chosen.pil.tobytes() != image.pil.tobytes()

    # A merged single file loads (with the tiny model's configs: it is not SD 1.5's size) and draws.
    single = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.5, name="half-single"))
    pipe = load_pipeline(studio.model(single.name), studio.settings, config_dir=tiny_model_dir)
    drawn = pipe("a red square", num_inference_steps=1, width=32, height=32, output_type="np").images
    assert drawn.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(drawn)).all())


def test_bake_in_vae_replaces_the_vae_tensors_as_a1111_does(studio, gf_home):
    folder = gf_home / "models" / SD
    result = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.4, name="baked",
                                              bake_in_vae="alt-file.safetensors", fp16=True))
    merged, a, b = tensors(folder / "baked.safetensors"), tensors(folder / "a.safetensors"), \
        tensors(folder / "b.safetensors")
    vae = tensors(gf_home / "models" / "VAE" / "alt-file.safetensors")
    assert result.baked == len(vae) == sum(k.startswith("first_stage_model.") for k in a)
    for key, theta in merged.items():
        bare = key.removeprefix("first_stage_model.")
        expected = vae[bare] if bare != key else 0.6 * a[key] + 0.4 * b[key]
        assert torch.equal(theta, expected.half()), key
    assert json.loads(metadata(folder / "baked.safetensors")["sd_merge_recipe"])["bake_in_vae"] == "alt-file.safetensors"
    with pytest.raises(InvalidRequest, match="'alt-vae' is a diffusers VAE; 'a' is a single-file checkpoint"):
        studio.merge_models(MergeRequest(primary="a", secondary="b", bake_in_vae="alt-vae"))


def test_an_inpainting_model_merges_its_first_four_channels(studio, gf_home):
    folder = gf_home / "models" / SD
    a = tensors(folder / "a.safetensors")
    conv = "model.diffusion_model.input_blocks.0.0.weight"
    inpainting = {**a, conv: torch.cat([a[conv], torch.randn(a[conv].shape[0], 5, *a[conv].shape[2:])], dim=1)}
    save_file(inpainting, str(folder / "a-inpainting.safetensors"))
    with pytest.raises(InvalidRequest, match="A must be the inpainting model"):
        studio.merge_models(MergeRequest(primary="b", secondary="a-inpainting"))

    result = studio.merge_models(MergeRequest(primary="a-inpainting", secondary="b", alpha=0.4))
    assert result.name == "0.6(a-inpainting) + 0.4(b).inpainting"
    merged, b = tensors(folder / result.file), tensors(folder / "b.safetensors")
    assert torch.equal(merged[conv][:, :4], 0.6 * inpainting[conv][:, :4] + 0.4 * b[conv])
    assert torch.equal(merged[conv][:, 4:], inpainting[conv][:, 4:])
    assert result.recipe["is_inpainting"] is True


def test_refusals_come_before_anything_is_written(studio, gf_home):
    folder = gf_home / "models" / SD
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.ones(4)}, str(folder / "xl.safetensors"))
    (folder / "old.ckpt").write_bytes(b"not opened")
    before = sorted(p.name for p in folder.rglob("*"))

    def refused(error, match, **fields):
        with pytest.raises(error, match=match):
            studio.merge_models(MergeRequest(**{"primary": "a", "secondary": "b", **fields}))

    refused(InvalidRequest, "one known family: A 'a' is sd1, B 'xl' is sdxl", secondary="xl")
    refused(InvalidRequest, "must all be single files or all diffusers folders", secondary="tiny-sd-b")
    refused(UnsafeModelFormat, "pickle", secondary="old")
    refused(ModelNotFound, "no checkpoint named 'nope'", secondary="nope")
    refused(InvalidRequest, "replace input 'b'", name="b", overwrite=True)
    refused(InvalidRequest, "shipped with guardforge", name="tiny-shapes", overwrite=True)
    save_file({"x": torch.ones(1)}, str(folder / "taken.safetensors"))
    before.append("taken.safetensors")
    refused(InvalidRequest, "named 'taken' exists; choose another name or overwrite", name="taken")
    assert sorted(p.name for p in folder.rglob("*")) == sorted(before)

    for bad in ("../escape", "/abs", "a/../../x", ".hidden", "sub/.hidden", "x\0y", "c:evil", "a<b"):
        with pytest.raises((InvalidRequest, ValueError)):
            MergeRequest(primary="a", secondary="b", name=bad)
    for fields in ({"mode": "add_difference"}, {"tertiary": "c"}, {"alpha": 1.5}, {"block_weights": [2.0]},
                   {"discard_weights": "("}, {"discard_weights": "(a+)+$"}, {"mode": "lerp"}):
        with pytest.raises(ValueError):
            MergeRequest(primary="a", secondary="b", **fields)

    # --overwrite replaces a model of that name in one rename, and the registry has the new hash at once.
    first = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.2, name="taken", overwrite=True))
    second = studio.merge_models(MergeRequest(primary="a", secondary="b", alpha=0.8, name="taken", overwrite=True))
    assert first.sha256 != second.sha256 and studio.model("taken").short_hash_if_known == second.short_hash
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging file left behind


def test_cli_and_api_merge(studio, gf_home, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app

    # The listing is a table: wide enough for one row per model.
    cli = cli_caller(monkeypatch, capsys, {"GUARDFORGE_GUARD__POLICY": "off", "COLUMNS": "250"})

    code, out, err = cli("models", "merge", "a", "b", "--alpha", "0.25", "--name", "from-cli", "--fp16")
    assert code == 0, err
    sha = hashlib.sha256((gf_home / "models" / SD / "from-cli.safetensors").read_bytes()).hexdigest()
    assert out.startswith(f"from-cli  [{sha[:10]}]  sd1  single_file")
    code, out, _ = cli("models", "list", "--kind", "checkpoint")
    assert code == 0 and sha[:10] in next(line for line in out.splitlines() if "from-cli" in line)
    code, out, err = cli("models", "merge", "a", "b", "--block-weights", "0.5,x")
    assert code == 2 and err.startswith("error: --block-weights") and len(err.strip().splitlines()) == 1
    code, out, err = cli("models", "merge", "a", "b", "--name", "../x")
    assert code == 2 and "leaves Stable-diffusion/" in err and len(err.strip().splitlines()) == 1

    with TestClient(create_app(studio, start_workers=False, mount_ui=False)) as http:
        answer = http.post("/v1/models/merge", json={"primary": "a", "secondary": "b", "alpha": 0.6,
                                                     "name": "from-api"})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert (body["name"], body["file"], body["format"]) == ("from-api", "from-api.safetensors", "single_file")
        listed = {m["name"]: m for m in http.get("/v1/models", params={"kind": "checkpoint"}).json()["models"]}
        assert listed["from-api"]["hash"] == body["short_hash"]
        for payload, status in (({"primary": "a", "secondary": "b", "name": "../../x"}, 422),
                                ({"primary": "a", "secondary": "nope"}, 404),
                                ({"primary": "a", "secondary": "b", "name": "from-api"}, 422)):
            answer = http.post("/v1/models/merge", json=payload)
            assert answer.status_code == status, answer.text

    keyed = Studio(Settings(home=gf_home, device="cpu", guard={"policy": "off"}, server={"require_auth": True}))
    with TestClient(create_app(keyed, start_workers=False, mount_ui=False)) as http:
        assert http.post("/v1/models/merge", json={"primary": "a", "secondary": "b"}).status_code == 401


def test_the_streamed_writer_writes_what_safetensors_reads(tmp_path):
    from guardforge.models.merge import Planned, write_streamed

    made = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor(3.5, dtype=torch.bfloat16),
            "e": torch.empty(0, 4), "i": torch.tensor([1, 2, 3], dtype=torch.int64)}
    dtypes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
    write_streamed(tmp_path / "x.safetensors",
                   [Planned(k, dtypes[v.dtype], tuple(v.shape), lambda v=v: v) for k, v in made.items()],
                   {"format": "pt"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == made.keys() and all(torch.equal(back[k], v) for k, v in made.items())
    raw = (tmp_path / "x.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0 and json.loads(raw[8:8 + length])["__metadata__"] == {"format": "pt"}
