"""ControlNet through Studio.generate on the tiny SD model and a tiny random ControlNet: the units steer the image,
weights, spans, control modes and several units act as sd-webui-controlnet defines them, the folder and the single
file load alike, img2img and inpaint run, and the guard reads every control image.

The image backend is a test-only class implementing the guard's backend protocol (it flags magenta images); the
Guard, Policy, Studio, engine, diffusers pipelines and ControlNets are the real ones.
"""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from guardforge.db import Database
from guardforge.engine.request import GenerationRequest
from guardforge.errors import Cancelled, InvalidRequest, ModelNotFound
from guardforge.guard.audit import AuditLog
from guardforge.guard.backends.base import Scores
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from tests.tiny_controlnet import save_tiny_controlnet, save_tiny_controlnet_file, save_tiny_controlnet_ldm_file


class SafeText:
    name = "test-safe-text"
    categories = frozenset({"S1"})

    def score_texts(self, texts):
        return [Scores({"S1": 0.0}) for _ in texts]


class MagentaIsUnsafe:
    """S12 = 1 for an image that is mostly magenta: a stand-in for an image the policy blocks."""

    name = "test-magenta"
    categories = frozenset({"S12"})

    def __init__(self):
        self.seen = 0

    def score_images(self, images):
        self.seen += len(images)
        scores = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
            magenta = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] > 200)
            scores.append(Scores({"S12": float(magenta.mean() > 0.5)}))
        return scores


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def square(size=32, colour="black") -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline=colour, width=2)
    return image


@pytest.fixture(scope="module")
def controlnet_home(tmp_path_factory, tiny_model_dir):
    import shutil

    home = tmp_path_factory.mktemp("cn") / "home"
    shutil.copytree(tiny_model_dir, home / "models" / "Stable-diffusion" / "tiny-sd")
    save_tiny_controlnet(home / "models" / "ControlNet" / "tiny-cn", seed=0)
    save_tiny_controlnet_file(home / "models" / "ControlNet" / "tiny-cn-file.safetensors", seed=0)
    save_tiny_controlnet_ldm_file(home / "models" / "ControlNet" / "tiny-cn-ldm.safetensors", seed=0)
    save_tiny_controlnet(home / "models" / "ControlNet" / "other-cn", seed=1)
    return home


@pytest.fixture(scope="module")
def studio(controlnet_home):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    return Studio(Settings(home=controlnet_home),
                  guard=Guard(load_policy("default"), text_backend=SafeText(), image_backend=MagentaIsUnsafe(),
                              audit=AuditLog(Database(f"sqlite:///{controlnet_home / 'audit.db'}"))))


def generate(studio, units=(), **kw):
    base = {"prompt": "a square", "negative_prompt": "blurry", "model": "tiny-sd", "steps": 3, "seed": 5,
            "sampler": "Euler", "width": 16, "height": 16}
    return studio.generate(GenerationRequest(**{**base, **kw, "controlnet": list(units)}), save=False)


def pixels(result, index=0) -> np.ndarray:
    return np.asarray(result.images[index].pil.convert("RGB"), dtype=np.int16)


def unit(**kw) -> dict:
    return {"image": b64(square()), "module": "canny", "model": "tiny-cn", **kw}


def test_a_unit_steers_the_image_and_weight_zero_is_no_control(studio):
    plain = pixels(generate(studio))
    controlled = generate(studio, [unit()])
    assert np.abs(pixels(controlled) - plain).mean() > 2
    assert np.array_equal(pixels(generate(studio, [unit(weight=0.0)])), plain)
    # Another control image, another image.
    other = generate(studio, [unit(image=b64(square(colour="black").rotate(45, fillcolor="white")))])
    assert not np.array_equal(pixels(other), pixels(controlled))
    info = controlled.images[0].infotext
    entry = studio.usable_controlnet("tiny-cn")
    assert (f'ControlNet 0: "Module: canny, Model: tiny-cn [{entry.short_hash()}], Weight: 1, Resize Mode: Crop and '
            'Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, '
            'Pixel Perfect: False, Control Mode: Balanced"') in info


def test_the_folder_and_the_single_files_are_the_same_controlnet(studio):
    folder = pixels(generate(studio, [unit()]))
    assert np.array_equal(folder, pixels(generate(studio, [unit(model="tiny-cn-file")])))  # diffusers' keys
    assert np.array_equal(folder, pixels(generate(studio, [unit(model="tiny-cn-ldm")])))  # the original keys
    entry = studio.usable_controlnet("tiny-cn-file")
    assert (entry.format, entry.kind) == ("single_file", "controlnet")
    # A1111 titles resolve too
    assert studio.usable_controlnet(f"tiny-cn [{entry.short_hash()}]").name == "tiny-cn"


def test_guidance_span_acts_on_part_of_the_steps(studio):
    plain, full = pixels(generate(studio)), pixels(generate(studio, [unit()]))
    late = pixels(generate(studio, [unit(guidance_start=0.5)]))
    assert not np.array_equal(late, plain) and not np.array_equal(late, full)


def test_control_modes(studio):
    """"My prompt is more important" scales the residuals as diffusers' guess mode does (soft injection);
    "ControlNet is more important" also keeps the control out of the negative half of the CFG batch, which without
    CFG (cfg_scale 1) makes it the same as the former; with CFG it matches diffusers' own guess mode."""
    from diffusers import StableDiffusionControlNetPipeline

    balanced = pixels(generate(studio, [unit()]))
    prompt = pixels(generate(studio, [unit(control_mode="My prompt is more important")]))
    control = pixels(generate(studio, [unit(control_mode="ControlNet is more important")]))
    assert len({balanced.tobytes(), prompt.tobytes(), control.tobytes()}) == 3
    no_cfg = {mode: pixels(generate(studio, [unit(control_mode=mode)], cfg_scale=1.0))
              for mode in ("My prompt is more important", "ControlNet is more important")}
    assert np.array_equal(*no_cfg.values())

    # diffusers' guess mode on the same pipeline, image prepared the same way (a canny map of the square).
    loaded = studio.pipelines.get("tiny-sd")
    net = studio.pipelines.controlnets.get(studio.usable_controlnet("tiny-cn"), loaded.device, torch.float32)
    from guardforge.engine.controlnet import prepare_unit
    from guardforge.engine.controlnet_unit import ControlNetUnit
    from guardforge.engine.samplers import build_scheduler

    control_image = prepare_unit(ControlNetUnit(model="tiny-cn", module="canny"), square(), (16, 16), 5).image
    pipe = StableDiffusionControlNetPipeline.from_pipe(loaded.pipeline, controlnet=net)
    pipe.scheduler = build_scheduler(pipe.scheduler.config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a square", negative_prompt="blurry", image=control_image, num_inference_steps=3, guess_mode=True,
                  generator=torch.Generator().manual_seed(5), width=16, height=16).images[0]
    theirs = np.asarray(theirs, dtype=np.int16)
    # Not bit-equal: diffusers runs the ControlNet on the positive half alone (a batch of 1, not 2 with half
    # zeroed), and the random tiny ControlNet's large residuals carry the float differences through 3 steps.
    # The modes' own distance is twenty times what is left (24 against 1.2 grey levels on average).
    assert np.abs(theirs - control).mean() < 0.1 * np.abs(theirs - balanced).mean()
    assert np.abs(theirs - control).mean() < 0.1 * np.abs(theirs - prompt).mean()


def test_two_units_at_once(studio):
    one = pixels(generate(studio, [unit()]))
    two = generate(studio, [unit(), unit(model="other-cn", module="invert", weight=0.7)])
    assert not np.array_equal(pixels(two), one)
    assert 'ControlNet 1: "Module: invert, Model: other-cn' in two.images[0].infotext
    # the same model twice, each unit with its own weight
    assert not np.array_equal(pixels(generate(studio, [unit(), unit(weight=0.5)])), one)


def test_batches_keep_seeds_and_each_image_matches_its_single_run(studio):
    batch = generate(studio, [unit()], batch_size=2, n_iter=2)
    assert batch.seeds == [5, 6, 7, 8]
    single = generate(studio, [unit()], seed=7)
    assert np.array_equal(pixels(batch, 2), pixels(single))


def test_img2img_takes_the_init_image_when_a_unit_has_none(studio):
    init = b64(square(colour="blue"))
    plain = pixels(generate(studio, init_image=init, denoising_strength=0.8))
    implicit = generate(studio, [{"module": "canny", "model": "tiny-cn"}], init_image=init, denoising_strength=0.8)
    explicit = generate(studio, [unit(image=init)], init_image=init, denoising_strength=0.8)
    assert np.array_equal(pixels(implicit), pixels(explicit))
    assert not np.array_equal(pixels(implicit), plain)
    assert "Denoising strength: 0.8" in implicit.images[0].infotext


def test_inpaint_with_a_control_keeps_the_unmasked_pixels(studio):
    init = square(colour="blue")
    mask = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 7, 15), fill=255)
    result = generate(studio, [unit(module="inpaint_only")], init_image=b64(init), mask=b64(mask), mask_blur=0)
    out = pixels(result)
    original = np.asarray(init.resize((16, 16), Image.LANCZOS), dtype=np.int16)
    assert np.array_equal(out[:, 9:], original[:, 9:])  # outside the mask: the original, exactly
    assert np.abs(out[:, :8] - original[:, :8]).mean() > 2
    plain = generate(studio, init_image=b64(init), mask=b64(mask), mask_blur=0)
    assert not np.array_equal(out, pixels(plain))


def test_lora_and_prompt_weights_with_a_control(studio, controlnet_home):
    from tests.test_engine_lora import save_tiny_lora

    save_tiny_lora(controlnet_home / "models" / "Stable-diffusion" / "tiny-sd" / "unet",
                   controlnet_home / "models" / "Lora" / "ink.safetensors", seed=1)
    controlled = pixels(generate(studio, [unit()]))
    with_lora = generate(studio, [unit()], prompt="a square <lora:ink:1>")
    assert not np.array_equal(pixels(with_lora), controlled)
    assert not np.array_equal(pixels(generate(studio, [unit()], prompt="a (square:1.5)")), controlled)
    loaded = studio.pipelines.get("tiny-sd")
    assert not loaded.pipeline.get_list_adapters()  # the LoRA is gone again, from the shared UNet
    assert np.array_equal(pixels(generate(studio, [unit()])), controlled)


def test_cancel_stops_a_controlled_run(studio):
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        studio.generate(GenerationRequest(prompt="x", model="tiny-sd", steps=4, width=16, height=16,
                                          controlnet=[unit()]),
                        on_progress=lambda event: cancel.set(), cancel=cancel, save=False)
    # The pipeline let go of the ControlNets, and the next run works.
    assert generate(studio, [unit()]).images


def test_skip_and_interrupt_with_a_control(studio):
    skip, interrupt = threading.Event(), threading.Event()
    seen = []

    def on_progress(event):
        seen.append(event.batch_index)
        if event.batch_index == 0 and event.step == 1:
            skip.set()  # the first batch ends early; the second runs in full
        if event.batch_index == 1 and event.step == 5:
            interrupt.set()  # and the third never starts

    result = studio.generate(GenerationRequest(prompt="x", model="tiny-sd", steps=3, width=16, height=16, seed=1,
                                               n_iter=3, sampler="Euler", controlnet=[unit()]),
                             on_progress=on_progress, skip=skip, interrupt=interrupt, save=False)
    assert result.seeds == [1, 2] and seen.count(0) == 1 and 2 not in seen


def test_the_guard_reads_the_control_image_and_its_preprocessed_form(studio):
    backend = studio.guard.backend("image")
    seen = backend.seen
    magenta = Image.new("RGB", (32, 32), (255, 0, 255))
    blocked = generate(studio, [unit(image=b64(magenta), module="none")])
    assert blocked.blocked and blocked.images == [] and "S12" in blocked.prompt_verdict.violated
    # Green passes as sent, but "invert" turns it into magenta before the ControlNet reads it.
    green = Image.new("RGB", (32, 32), (0, 255, 0))
    inverted = generate(studio, [unit(image=b64(green), module="invert")])
    assert inverted.blocked and inverted.images == []
    assert backend.seen - seen == 1 + 2  # magenta (module none: sent alone), green and its inverted form
    assert not generate(studio, [unit(image=b64(green), module="none")]).blocked


def test_detect_guards_its_input_and_its_map(studio):
    magenta, green = Image.new("RGB", (32, 32), (255, 0, 255)), Image.new("RGB", (32, 32), (0, 255, 0))
    ImageDraw.Draw(green).rectangle((8, 8, 24, 24), outline="black", width=2)
    blocked_input, blocked_map, fine = studio.detect_control([b64(magenta), b64(green), b64(square())], "invert",
                                                             processor_res=64)
    assert blocked_input.image is None and blocked_input.verdict.action == "block"
    # Green in, magenta out: the map is an output image, so the default policy's S12 action for outputs (blur)
    # applies to it, where the same image sent in is blocked.
    assert blocked_map.verdict.action == "blur" and blocked_map.verdict.checkpoint == "output_image"
    assert not np.array_equal(np.asarray(blocked_map.image), 255 - np.asarray(green))  # delivered blurred
    assert fine.verdict.action == "allow"
    assert (np.asarray(fine.image) == 255 - np.asarray(square())).all()


def test_a_controlnet_for_another_architecture_is_refused_clearly(studio, controlnet_home):
    from diffusers import ControlNetModel

    ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, in_channels=4, cross_attention_dim=48,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=8,
                    norm_num_groups=32, conditioning_embedding_out_channels=(16, 32)).save_pretrained(
        controlnet_home / "models" / "ControlNet" / "wide-cn")
    with pytest.raises(InvalidRequest, match="'wide-cn' does not fit checkpoint 'tiny-sd': it was made for a UNet "
                                             "with cross-attention 48"):
        generate(studio, [unit(model="wide-cn")])
    assert studio.pipelines.controlnets.loaded() == [] or all("wide-cn" not in key
                                                              for key in studio.pipelines.controlnets.loaded())
    # Refused at submit too, from the configs, before anything is queued or loaded (a 4xx over HTTP).
    with pytest.raises(InvalidRequest, match="'wide-cn' does not fit checkpoint 'tiny-sd'"):
        studio.submit(GenerationRequest(prompt="x", model="tiny-sd", controlnet=[unit(model="wide-cn")]))
    with pytest.raises(ModelNotFound, match="no controlnet named 'tiny-sd'; known: other-cn, tiny-cn"):
        generate(studio, [unit(model="tiny-sd")])  # a checkpoint is not a ControlNet


def test_latent_blend_inpaint_with_a_control_on_tiny_shapes(tmp_path):
    """tiny-shapes' 8-channel latents take the engine's latent-blend inpaint (img2img with the known region put
    back each step); with a unit, the ControlNet img2img pipeline runs it."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from guardforge.models.registry import shipped_models_dir
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    unet = UNet2DConditionModel.from_pretrained(shipped_models_dir() / "tiny-shapes" / "unet")
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))  # VAE scale 4
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            module.weight.normal_(0, 0.3)
    home = tmp_path / "home"
    net.save_pretrained(home / "models" / "ControlNet" / "shapes-cn")
    studio = Studio(Settings(home=home), guard=Guard(load_policy("default"), text_backend=SafeText(),
                                                     image_backend=MagentaIsUnsafe(), audit=None))
    init = square(64, colour="blue")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    base = {"prompt": "a red circle", "model": "tiny-shapes", "steps": 3, "seed": 2, "sampler": "Euler",
            "init_image": b64(init), "mask": b64(mask), "mask_blur": 0}
    plain = studio.generate(GenerationRequest(**base), save=False)
    controlled = studio.generate(GenerationRequest(**base, controlnet=[unit(model="shapes-cn")]), save=False)
    out = pixels(controlled)
    assert np.array_equal(out[:, 33:], np.asarray(init, dtype=np.int16)[:, 33:])  # kept exactly
    assert np.abs(out[:, :32] - pixels(plain)[:, :32]).mean() > 1  # the control changed the repainted half


def test_sdxl_controlnet_txt2img_and_img2img(tmp_path, tmp_path_factory):
    """SDXL: diffusers' StableDiffusionXLControlNet(Img2Img)Pipeline from_pipe'd on a tiny SDXL pipeline (two text
    encoders, text_time conditioning), with a ControlNet made from its UNet."""
    from diffusers import ControlNetModel

    from guardforge.engine.controlnet import ControlRun, prepare_unit
    from guardforge.engine.controlnet_unit import ControlNetUnit
    from guardforge.engine.pipelines import Engine
    from guardforge.models.cache import LoadedModel
    from guardforge.settings import MemorySettings, Settings
    from tests.test_engine_prompts import sdxl as sdxl_fixture

    pipe = sdxl_fixture.__wrapped__(tmp_path_factory)
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            module.weight.normal_(0, 0.3)
    loaded = LoadedModel(entry=None, pipeline=pipe, memory=MemorySettings(), device=torch.device("cpu"))
    engine = Engine(Settings(home=tmp_path))
    for init in (None, b64(square(32, colour="blue"))):
        request = GenerationRequest(prompt="a square", negative_prompt="dog", steps=2, seed=3, sampler="Euler",
                                    init_image=init, controlnet=[ControlNetUnit(model="x", module="canny",
                                                                                image=b64(square()))])
        init_image = Image.open(io.BytesIO(base64.b64decode(init))) if init else None
        [(plain, _)] = engine.run(loaded, request.model_copy(update={"controlnet": []}), init_image=init_image)
        control = ControlRun([prepare_unit(request.controlnet[0], square(), (32, 32), 3)], [net], ["x"])
        [(controlled, _)] = engine.run(loaded, request, init_image=init_image, control=control)
        assert controlled.size == (32, 32)
        assert np.abs(np.asarray(controlled, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).mean() > 1
    assert type(loaded._modes["controlnet:img2img"]).__name__ == "StableDiffusionXLControlNetImg2ImgPipeline"
