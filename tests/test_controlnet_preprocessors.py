"""ControlNet preprocessors and control-image sizing, against OpenCV and sd-webui-controlnet's definitions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from guardforge.engine.controlnet import (
    ControlNetUnit,
    fit,
    pixel_perfect_resolution,
    prepare_unit,
    unit_infotext,
    units_from_infotext,
)
from guardforge.engine.controlnet_preprocessors import PREPROCESSORS, available_modules, detect
from guardforge.engine.infotext import parse_infotext
from guardforge.errors import InvalidRequest


def drawing(size=(96, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 10, 70, 50), outline="black", width=3)
    draw.rectangle((5, 5, 30, 30), fill=(200, 40, 40))
    return image


def test_canny_is_opencvs_on_the_image_resized_to_processor_res():
    image = drawing()
    got = np.asarray(detect(image, "canny", 128, 50, 150).image)
    resized = cv2.resize(np.asarray(image), (192, 128), interpolation=cv2.INTER_CUBIC)  # short side 64 -> 128
    want = cv2.Canny(resized, 50, 150)
    assert got.shape == (128, 192, 3) and (got[..., 0] == want).all() and (got[..., 2] == want).all()
    assert set(np.unique(got)) == {0, 255}
    # None thresholds take A1111's defaults, 100 and 200.
    default = np.asarray(detect(image, "canny", 64).image)[..., 0]
    assert (default == cv2.Canny(np.asarray(image), 100, 200)).all()


def test_every_available_module_runs_and_changes_what_it_should():
    image = drawing()
    outputs = {}
    for name in available_modules():
        if PREPROCESSORS[name].inpaint:
            continue
        result = detect(image, name, 64, seed=3).image
        assert result.mode == "RGB"
        outputs[name] = np.asarray(result)
    assert (outputs["none"] == np.asarray(image)).all()
    assert (outputs["invert"] == 255 - np.asarray(image)).all()
    # The line detectors find the dark outline, and nothing on a blank page.
    for name in ("scribble_xdog", "lineart_standard", "canny"):
        assert outputs[name].max() == 255 or outputs[name].max() > 100, name
        blank = np.asarray(detect(Image.new("RGB", (64, 64), "white"), name, 64).image)
        assert blank.max() == 0, name
    assert set(np.unique(outputs["threshold"])) <= {0, 255}
    assert outputs["blur_gaussian"].std() < np.asarray(image).std()
    assert np.asarray(detect(image, "tile_resample", 64, 2.0).image).shape == (32, 48, 3)
    # shuffle: seeded, so one seed gives one image, another seed another
    again = np.asarray(detect(image, "shuffle", 64, seed=3).image)
    assert (again == outputs["shuffle"]).all()
    assert (np.asarray(detect(image, "shuffle", 64, seed=4).image) != again).any()


def test_unavailable_and_unknown_modules_say_why():
    with pytest.raises(InvalidRequest, match="'openpose' is unavailable: it needs the OpenPose annotator weights"):
        detect(drawing(), "openpose")
    # sd-webui-controlnet's long name is answered with the name sent, then the short one
    with pytest.raises(InvalidRequest, match=r"^ControlNet module 'depth_midas' \('depth'\) is unavailable: it needs"):
        detect(drawing(), "depth_midas")
    with pytest.raises(InvalidRequest, match="unknown ControlNet module 'zzz'"):
        detect(drawing(), "zzz")
    # inpaint modules read a mask: given, or the image's transparency
    with pytest.raises(InvalidRequest, match="needs a mask"):
        detect(drawing(), "inpaint_only")
    rgba = drawing().convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    detected = detect(rgba, "inpaint_only")
    assert detected.mask.getpixel((0, 0)) == 255 and detected.mask.getpixel((1, 1)) == 0


def test_a_long_thin_image_cannot_make_a_huge_map():
    with pytest.raises(InvalidRequest, match="processor_res 4096 on a 4096x16 image makes a 1048576x4096 map"):
        detect(Image.new("RGB", (4096, 16), "white"), "canny", 4096)


def test_fit_modes_as_sd_webui_controlnet():
    image = drawing((100, 50))
    assert fit(image, (64, 64), "Just Resize").size == (64, 64)
    cropped = fit(image, (64, 64), "Crop and Resize")  # scaled to cover 64x64 (128x64), centre cropped
    assert cropped.size == (64, 64)
    filled = np.asarray(fit(image, (64, 64), "Resize and Fill"))  # 64x32 inside, padded top and bottom
    assert filled.shape == (64, 64, 3) and (filled[0] == filled[0, 0]).all() and (filled[0, 0] == 255).all()
    # an edge map stays black and white through a resize
    edges = detect(image, "canny", 50).image
    assert set(np.unique(np.asarray(fit(edges, (37, 37), "Crop and Resize")))) <= {0, 255}


def test_pixel_perfect_resolution():
    assert pixel_perfect_resolution((100, 50), (64, 64), "Crop and Resize") == 64
    assert pixel_perfect_resolution((100, 50), (64, 64), "Resize and Fill") == 32
    assert pixel_perfect_resolution((512, 512), (1024, 768), "Just Resize") == 1024
    unit = ControlNetUnit(model="m", module="canny", pixel_perfect=True, processor_res=512)
    assert prepare_unit(unit, drawing((100, 50)), (64, 64), seed=0).processor_res == 64


def test_infotext_round_trip_of_a_unit():
    unit = ControlNetUnit(model="cn", module="canny", weight=0.5, guidance_end=0.8, threshold_a=50,
                          control_mode="My prompt is more important", resize_mode="Just Resize")
    prepared = prepare_unit(unit, drawing(), (32, 32), seed=0)
    text = f'a cat\nSteps: 2, Seed: 1, ControlNet 0: "{unit_infotext(prepared, "cn [0123456789]")}"'
    [restored] = units_from_infotext(parse_infotext(text))
    assert restored == {"module": "canny", "model": "cn [0123456789]", "weight": "0.5", "resize_mode": "Just Resize",
                        "processor_res": "512", "threshold_a": "50", "threshold_b": "200", "guidance_start": "0",
                        "guidance_end": "0.8", "pixel_perfect": False, "control_mode": "My prompt is more important"}
    again = ControlNetUnit(**restored)
    assert (again.weight, again.guidance_end, again.threshold_b, again.model) == (0.5, 0.8, 200, "cn [0123456789]")
    # A unit written by sd-webui-controlnet itself, with fields guardforge has no use for.
    theirs = ('x\nSteps: 20, Sampler: Euler, ControlNet 0: "Module: depth_midas, '
              'Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1.0, Resize Mode: Crop and Resize, '
              'Processor Res: 512, Threshold A: -1.0, Threshold B: -1.0, '
              'Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: True, Control Mode: Balanced, '
              'Hr Option: Both, Save Detected Map: True"')
    [unit] = units_from_infotext(parse_infotext(theirs))
    assert unit["model"] == "control_v11f1p_sd15_depth [cfd03158]" and "threshold_a" not in unit
    assert unit["pixel_perfect"] is True
