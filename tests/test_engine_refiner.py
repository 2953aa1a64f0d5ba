"""The SDXL refiner hand-over (engine/refiner.py) on tiny real SDXL models saved as diffusers folders: a base
(two CLIP encoders) and a refiner (second encoder only, aesthetic-score conditioning), as diffusers' own
SDXL and SDXL-img2img tests build them."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guardforge.engine.request import GenerationRequest
from tests.inprocess_cli import cli_caller


def _sdxl_parts(tokenizer_dir: Path, refiner: bool, seed: int) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tests.tiny import write_char_tokenizer

    torch.manual_seed(seed)
    # The refiner's time embedding takes 5 numbers (sizes, crop, aesthetic score) where the base's takes 6, and
    # its cross-attention reads the second encoder alone (32 wide) where the base's reads both (64).
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=72 if refiner else 80, cross_attention_dim=32 if refiner else 64,
        norm_num_groups=1)
    torch.manual_seed(0)  # one VAE for both: the refiner must share the base's latent space
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32)
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=3, pad_token_id=1, vocab_size=1000,
                            projection_dim=32)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tokenizer_dir)))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    parts = dict(vae=vae, unet=unet, text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=tokenizer,
                 scheduler=scheduler)
    if refiner:
        return {**parts, "text_encoder": None, "tokenizer": None}
    return {**parts, "text_encoder": CLIPTextModel(config), "tokenizer": tokenizer}


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionXLPipeline

    with tempfile.TemporaryDirectory() as scratch:  # the tokenizer's files, read in and saved with the pipeline
        StableDiffusionXLPipeline(**_sdxl_parts(Path(scratch), False, seed)).save_pretrained(
            folder, safe_serialization=True)
    return folder


def save_tiny_refiner(folder: Path, seed: int = 1) -> Path:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    with tempfile.TemporaryDirectory() as scratch:
        StableDiffusionXLImg2ImgPipeline(**_sdxl_parts(Path(scratch), True, seed), requires_aesthetics_score=True,
                                         force_zeros_for_empty_prompt=False).save_pretrained(
            folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory) -> Path:
    """A models folder: tiny-xl (SDXL base), tiny-xl-refiner (SDXL refiner), other-xl (a second SDXL base)."""
    root = tmp_path_factory.mktemp("xl") / "models" / "Stable-diffusion"
    save_tiny_sdxl(root / "tiny-xl")
    save_tiny_refiner(root / "tiny-xl-refiner")
    save_tiny_sdxl(root / "other-xl", seed=5)
    return root.parent


@pytest.fixture
def home(tmp_path, sdxl_models, tiny_model_dir, monkeypatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(sdxl_models, home / "models", symlinks=True)
    shutil.copytree(tiny_model_dir, home / "models" / "Stable-diffusion" / "tiny-sd")
    for sub in ("Lora", "VAE", "ControlNet"):
        (home / "models" / sub).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("GUARDFORGE_HOME", str(home))
    return home


@pytest.fixture
def studio(home):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=home, default_model="tiny-xl", device="cpu",
                             guard={"policy": "off"}))
    yield studio
    studio.pipelines.unload_all()


def request(**fields) -> GenerationRequest:
    base = dict(prompt="a (red:1.2) square", negative_prompt="blurry", model="tiny-xl", steps=6, seed=11,
                sampler="Euler", width=32, height=32)
    return GenerationRequest(**{**base, **fields})


def refined(switch_at=0.5, checkpoint="tiny-xl-refiner", **fields) -> GenerationRequest:
    return request(refiner={"checkpoint": checkpoint, "switch_at": switch_at}, **fields)


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image.pil.convert("RGB"), dtype=np.int16) for image in result.images])


def png_b64(size=(32, 32), color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class UNetCalls:
    """Counts a UNet's forward calls through torch's own hook (the model runs unchanged)."""

    def __init__(self, unet):
        self.count = 0
        self.handle = unet.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1

    def close(self):
        self.handle.remove()


def test_the_refiner_runs_its_share_of_the_steps_and_changes_the_image(studio):
    from guardforge.engine.samplers import build_scheduler

    plain = studio.generate(request(), save=False)
    base = studio.pipelines.get("tiny-xl").pipeline
    refiner = studio.pipelines.get("tiny-xl-refiner").pipeline
    assert type(refiner).__name__ == "StableDiffusionXLImg2ImgPipeline" and refiner.text_encoder is None
    base_calls, refiner_calls = UNetCalls(base.unet), UNetCalls(refiner.unet)
    events = []
    try:
        half = studio.generate(refined(0.5), on_progress=events.append, save=False)
    finally:
        base_calls.close()
        refiner_calls.close()
    # Euler at 6 steps ("leading" spacing: timesteps 831, 665, 499, 333, 167, 1): the base runs those at or above
    # the switch's timestep, 500, and the refiner the rest; one UNet call per step (CFG batches both halves).
    schedule = build_scheduler(base.scheduler.config, "Euler", "Automatic")
    schedule.set_timesteps(6)
    assert schedule.timesteps.tolist() == [831, 665, 499, 333, 167, 1]
    assert (base_calls.count, refiner_calls.count) == (2, 4)
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6] and {e.total for e in events} == {6}
    near_end = studio.generate(refined(0.95), save=False)
    assert pixels(half).shape == pixels(plain).shape == (1, 32, 32, 3)
    assert not np.array_equal(pixels(half), pixels(plain))
    assert not np.array_equal(pixels(half), pixels(near_end))
    assert studio.pipelines.loaded() == ["tiny-xl", "tiny-xl-refiner"]  # both from the cache, both kept


def test_a_refined_image_is_reproducible_per_seed_and_in_a_batch(studio):
    first = studio.generate(refined(0.6, sampler="Euler a", batch_size=2, seed=40), save=False)
    again = studio.generate(refined(0.6, sampler="Euler a", seed=41), save=False)
    other = studio.generate(refined(0.6, sampler="Euler a", seed=42), save=False)
    assert first.seeds == [40, 41]
    # Seed 41 alone gives the batch's second image: each image keeps its own generator through both parts.
    assert np.abs(pixels(first)[1] - pixels(again)[0]).max() <= 1
    assert not np.array_equal(pixels(again), pixels(other))


def test_img2img_hands_over_from_the_strength_start(studio):
    from guardforge.engine.refiner import planned_steps, switch_fraction
    from guardforge.engine.samplers import build_scheduler

    ask = refined(0.5, init_image=png_b64(), denoising_strength=0.5, steps=8)
    assert switch_fraction(ask) == pytest.approx(0.75)  # half-way from the strength's start (0.5) to the end
    refiner = studio.pipelines.get("tiny-xl-refiner").pipeline
    refiner_calls = UNetCalls(refiner.unet)
    events = []
    try:
        result = studio.generate(ask, on_progress=events.append, save=False)
    finally:
        refiner_calls.close()
    def fresh():
        return build_scheduler(refiner.scheduler.config, "Euler", "Automatic")
    assert planned_steps(fresh(), fresh(), ask, 0.75) == 4 == events[-1].total == events[-1].step
    assert refiner_calls.count == 2
    plain = studio.generate(request(init_image=png_b64(), denoising_strength=0.5, steps=8), save=False)
    assert not np.array_equal(pixels(result), pixels(plain))
    assert "Refiner: tiny-xl-refiner [" in result.images[0].infotext
    assert "Denoising strength: 0.5" in result.images[0].infotext


def test_infotext_is_a1111s_and_reads_back(studio):
    from guardforge.engine.infotext import parse_infotext, request_from_infotext

    result = studio.generate(refined(0.8), save=False)
    text = result.images[0].infotext
    short = studio.model("tiny-xl-refiner").short_hash()
    assert text.endswith(f"Refiner: tiny-xl-refiner [{short}], Refiner switch at: 0.8")
    assert parse_infotext(text)["Refiner"] == f"tiny-xl-refiner [{short}]"
    again = request_from_infotext(text)
    assert again.refiner.switch_at == 0.8 and again.refiner.checkpoint == f"tiny-xl-refiner [{short}]"
    # The A1111 title resolves to the same checkpoint, and the same image comes back.
    assert studio.usable_refiner(again).name == "tiny-xl-refiner"
    assert np.array_equal(pixels(studio.generate(again, save=False)), pixels(result))
    assert "Refiner" not in studio.generate(request(), save=False).images[0].infotext


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"refiner": {"checkpoint": "nope"}}, "ModelNotFound", "nope"),
    ({"refiner": {"checkpoint": "tiny-sd"}}, "InvalidRequest",
     "refiner 'tiny-sd' is a sd1 model and the model 'tiny-xl' a sdxl one"),
    ({"model": "tiny-sd", "refiner": {"checkpoint": "tiny-sd"}, "width": None, "height": None}, "InvalidRequest",
     "hands over between two models only for sdxl"),
    ({"refiner": {"checkpoint": "tiny-xl-refiner"}, "init_image": "eA==", "mask": "eA=="}, "InvalidRequest",
     "not inpaint"),
])
def test_refiners_that_cannot_take_over_are_refused_before_any_job(studio, fields, error, message):
    with pytest.raises(Exception) as caught:
        studio.usable_refiner(request(**fields))
    assert type(caught.value).__name__ == error and message in str(caught.value)
    assert studio.pipelines.loaded() == []


def test_the_refiner_prompt_is_weighted_by_its_own_encoder(studio):
    from guardforge.engine.prompts import encode_prompts

    pipe = studio.pipelines.get("tiny-xl-refiner").for_mode("img2img")
    plain = encode_prompts(pipe, "a cat on a mat", "blurry", 1, "cpu").kwargs
    weighted = encode_prompts(pipe, "a (cat:1.5) on a mat", "blurry", 1, "cpu").kwargs
    assert plain["prompt_embeds"].shape == (1, 77, 32) and plain["pooled_prompt_embeds"].shape == (1, 32)
    assert not torch.equal(plain["prompt_embeds"], weighted["prompt_embeds"])
    ids = pipe.tokenizer_2("a cat on a mat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder_2(ids, output_hidden_states=True)
    # What diffusers' own encode_prompt gives the refiner: the penultimate layer and the projected pooled output.
    assert torch.allclose(plain["prompt_embeds"], out.hidden_states[-2], atol=1e-5)
    assert torch.allclose(plain["pooled_prompt_embeds"], out.text_embeds, atol=1e-5)


@pytest.mark.parametrize("switch_at", [0, 1, -0.5, 1.5])
def test_switch_at_must_lie_inside_the_steps(switch_at):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="switch_at"):
        refined(switch_at)


def test_skip_during_the_base_part_ends_the_batch_without_the_refiner(studio):
    import threading

    skip = threading.Event()
    refiner = studio.pipelines.get("tiny-xl-refiner").pipeline
    refiner_calls = UNetCalls(refiner.unet)

    def on_progress(event):
        if event.step == 1:
            skip.set()
    try:
        result = studio.generate(refined(0.5, n_iter=2), on_progress=on_progress, skip=skip, save=False)
    finally:
        refiner_calls.close()
    # The first batch stopped after one base step and was decoded as it was; the second ran both parts (the
    # refiner's 4 steps of 6, as in the first test).
    assert len(result.images) == 2 and refiner_calls.count == 4
    whole = studio.generate(refined(0.5, n_iter=2), save=False)
    assert np.array_equal(pixels(result)[1], pixels(whole)[1])
    assert not np.array_equal(pixels(result)[0], pixels(whole)[0])  # one step in: still mostly noise


def test_cancel_during_the_refiner_part_stops_the_request(studio):
    import threading

    from guardforge.errors import Cancelled

    cancel = threading.Event()

    def on_progress(event):
        if event.step == 5:
            cancel.set()
    with pytest.raises(Cancelled, match="after 5 steps"):
        studio.generate(refined(0.5), on_progress=on_progress, cancel=cancel, save=False)


def test_a_1111_payload_fields_become_the_refiner(studio):
    from guardforge.a1111.adapter import to_generation_request
    from guardforge.a1111.schemas import Img2ImgPayload, Txt2ImgPayload

    short = studio.model("tiny-xl-refiner").short_hash()
    asked, ignored = to_generation_request(Txt2ImgPayload(prompt="x", refiner_checkpoint=f"tiny-xl-refiner [{short}]",
                                                          refiner_switch_at=0.7), "tiny-xl")
    assert asked.refiner.checkpoint == f"tiny-xl-refiner [{short}]" and asked.refiner.switch_at == 0.7
    assert ignored == []
    asked, ignored = to_generation_request(Img2ImgPayload(prompt="x", init_images=[png_b64()],
                                                          refiner_checkpoint="tiny-xl-refiner"), "tiny-xl")
    assert asked.refiner.switch_at == 0.8 and asked.mode == "img2img"  # A1111's default switch
    for none in (None, "", "None"):
        asked, ignored = to_generation_request(Txt2ImgPayload(prompt="x", refiner_checkpoint=none,
                                                              refiner_switch_at=0.5), "tiny-xl")
        assert asked.refiner is None and ignored == ["refiner_switch_at"]


@pytest.fixture
def run_main(home, monkeypatch, capsys):
    """guardforge.cli.main() as the console script calls it, on the SDXL models folder."""
    return cli_caller(monkeypatch, capsys, {"GUARDFORGE_GUARD__POLICY": "off", "GUARDFORGE_DEVICE": "cpu"})


SMALL_CLI = ("-m", "tiny-xl", "--steps", "4", "--seed", "7", "--width", "32", "--height", "32", "--sampler", "Euler")


def test_cli_refiner_flags_and_from_png_round_trip(run_main, home):
    import re

    from guardforge.storage.outputs import read_infotext

    code, out, err = run_main("generate", "a red square", *SMALL_CLI, "--refiner", "tiny-xl-refiner",
                              "--refiner-switch-at", "0.5")
    assert code == 0, err
    [path] = re.findall(r"^(\S+\.png)  seed=7", out, re.MULTILINE)
    text = read_infotext(Path(path))
    assert re.search(r"Refiner: tiny-xl-refiner \[[0-9a-f]{10}\], Refiner switch at: 0.5$", text), text
    code, out, err = run_main("generate", "--from-png", path)
    assert code == 0, err
    [again] = re.findall(r"^(\S+\.png)  seed=7", out, re.MULTILINE)
    assert read_infotext(Path(again)) == text
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))
    # Overrides: another switch keeps the image's refiner; None drops it.
    code, out, err = run_main("generate", "--from-png", path, "--refiner-switch-at", "0.75")
    [moved] = re.findall(r"^(\S+\.png)  seed=7", out, re.MULTILINE)
    assert "Refiner switch at: 0.75" in read_infotext(Path(moved))
    code, out, err = run_main("generate", "--from-png", path, "--refiner", "None")
    [plain] = re.findall(r"^(\S+\.png)  seed=7", out, re.MULTILINE)
    assert "Refiner" not in read_infotext(Path(plain))


@pytest.mark.parametrize(("args", "message"), [
    (("--refiner", "nope"), "error: no checkpoint named 'nope'"),
    (("--refiner", "tiny-sd"), "error: refiner 'tiny-sd' is a sd1 model and the model 'tiny-xl' a sdxl one"),
    (("--refiner", "tiny-xl-refiner", "--refiner-switch-at", "1"), "error: refiner.switch_at: Input should be less"),
    (("--refiner-switch-at", "0.5"), "error: --refiner-switch-at needs a refiner: give --refiner NAME"),
])
def test_cli_refiner_errors_are_one_line(run_main, args, message):
    code, _, err = run_main("generate", "x", *SMALL_CLI, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert "Traceback" not in err


@pytest.fixture
def client(studio):
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app

    with TestClient(create_app(studio, mount_ui=False)) as http:
        yield http


def test_a1111_and_native_routes_take_a_refiner(client, studio):
    short = studio.model("tiny-xl-refiner").short_hash()
    payload = {"prompt": "a red square", "steps": 4, "seed": 3, "width": 32, "height": 32, "sampler_name": "Euler",
               "override_settings": {"sd_model_checkpoint": "tiny-xl"},
               "refiner_checkpoint": f"tiny-xl-refiner [{short}]", "refiner_switch_at": 0.5}
    answer = client.post("/sdapi/v1/txt2img", json=payload)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["infotexts"][0].endswith(f"Refiner: tiny-xl-refiner [{short}], Refiner switch at: 0.5")
    assert info["guardforge"]["ignored_fields"] == []
    image = answer.json()["images"][0]
    parsed = client.post("/sdapi/v1/png-info", json={"image": image}).json()["parameters"]
    assert parsed["Refiner"] == f"tiny-xl-refiner [{short}]" and parsed["Refiner switch at"] == "0.5"
    # The parameters read back make the same request: the same pixels.
    again = client.post("/sdapi/v1/txt2img", json={**payload, "refiner_checkpoint": parsed["Refiner"],
                                                   "refiner_switch_at": float(parsed["Refiner switch at"])})
    assert again.json()["images"][0] == image

    for bad, status, text in [
        ({"refiner_checkpoint": "nope"}, 404, "nope"),
        ({"refiner_checkpoint": "tiny-sd"}, 422, "a sd1 model and the model 'tiny-xl' a sdxl one"),
        ({"refiner_switch_at": 1.0}, 422, "switch_at"),
        ({"refiner_switch_at": 0}, 422, "switch_at"),
    ]:
        answer = client.post("/sdapi/v1/txt2img", json={**payload, **bad})
        assert answer.status_code == status and text in answer.text, answer.text
    answer = client.post("/v1/jobs", json={"prompt": "x", "model": "tiny-xl", "steps": 2,
                                           "refiner": {"checkpoint": "tiny-sd", "switch_at": 0.5}})
    assert answer.status_code == 422 and "tiny-sd" in answer.text and "sdxl" in answer.text
    answer = client.post("/v1/jobs", json={"prompt": "x", "model": "tiny-xl", "steps": 2,
                                           "refiner": {"checkpoint": "../tiny-xl-refiner", "switch_at": 0.5}})
    assert 400 <= answer.status_code < 500, answer.text


def test_any_two_sdxl_models_pair(studio):
    # An SDXL base as the refiner: its img2img pipeline (from_pipe, the same weights) takes over with both encoders.
    other = studio.generate(refined(0.5, checkpoint="other-xl"), save=False)
    refiner = studio.generate(refined(0.5), save=False)
    assert not np.array_equal(pixels(other), pixels(refiner))
    assert "Refiner: other-xl [" in other.images[0].infotext
    # max_loaded_models (2) holds the base and the refiner of the last request: other-xl made room.
    assert studio.pipelines.loaded() == ["tiny-xl", "tiny-xl-refiner"]


@pytest.mark.parametrize("sampler", ["Heun", "DPM2", "DPM++ 2M", "DPM++ SDE", "Euler a"])
@pytest.mark.parametrize("img2img", [False, True])
def test_progress_ends_at_its_total_for_every_kind_of_sampler(studio, sampler, img2img):
    events = []
    extra = {"init_image": png_b64(), "denoising_strength": 0.6} if img2img else {}
    studio.generate(refined(0.7, sampler=sampler, steps=5, **extra), on_progress=events.append, save=False)
    assert events[-1].step == events[-1].total and len({e.total for e in events}) == 1
    assert [e.step for e in events] == list(range(1, events[-1].total + 1))


def test_a_pickle_refiner_is_refused_as_a_pickle_model_is(studio, home):
    from guardforge.errors import UnsafeModelFormat

    (home / "models" / "Stable-diffusion" / "old-refiner.ckpt").write_bytes(b"not unpickled")
    studio.refresh_models()
    with pytest.raises(UnsafeModelFormat, match="old-refiner"):
        studio.usable_refiner(refined(checkpoint="old-refiner"))


def test_a_half_precision_hand_over_and_a_skipped_base_part_decode(studio):
    import threading

    # SDXL's VAE is upcast to fp32 to decode (force_upcast): the skipped part's own decode must do as the pipeline.
    skip = threading.Event()

    def on_progress(event):
        if event.step == 1:
            skip.set()
    half = refined(0.5, n_iter=2, memory={"dtype": "fp16"})
    result = studio.generate(half, on_progress=on_progress, skip=skip, save=False)
    loaded = studio.pipelines.get("tiny-xl", memory=half.memory)
    assert loaded.pipeline.unet.dtype == torch.float16
    assert loaded.pipeline.vae.config.force_upcast and loaded.pipeline.vae.dtype == torch.float16  # put back
    assert len(result.images) == 2
    assert pixels(result)[0].std() > 0 and pixels(result)[1].std() > 0  # not a blank (NaN-decoded) image


def test_prompt_editing_counts_on_through_the_refiners_share(studio):
    # 6 steps handed over at 0.5: the base denoises steps 0-2, the refiner 3-5 (A1111's step count goes on).
    cat = pixels(studio.generate(refined(prompt="a cat"), save=False))
    dog = pixels(studio.generate(refined(prompt="a dog"), save=False))
    assert np.array_equal(pixels(studio.generate(refined(prompt="a [cat:dog:0]"), save=False)), dog)
    assert np.array_equal(pixels(studio.generate(refined(prompt="a [cat:dog:5]"), save=False)), cat)
    # Step 5 reads step 5's entry, "a dog": only the refiner's last step switches, through its own encoder.
    late = pixels(studio.generate(refined(prompt="a [cat:dog:4]"), save=False))
    assert not np.array_equal(late, cat) and not np.array_equal(late, dog)
