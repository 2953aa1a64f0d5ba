"""ControlNet on the engine's pipelines: control images prepared as sd-webui-controlnet prepares them, and the
units run through diffusers' StableDiffusion(XL)ControlNet* pipelines, built with from_pipe on the loaded
checkpoint so no weights are copied.

Control modes, as sd-webui-controlnet defines them (scripts/controlnet.py, scripts/hook.py):
- "Balanced": the residuals at the unit's weight, added to both halves of the CFG batch.
- "My prompt is more important" (its soft injection): the 13 residuals scaled down layer by layer, the deepest
  by 1 and each shallower one by a further 0.825 (0.825**(12 - i) x weight), on both halves.
- "ControlNet is more important" (soft injection and cfg injection): the same scaling, and the control only in
  the conditional half, so the negative prompt's prediction runs without it and CFG pushes toward the control.
diffusers' ControlNetModel applies exactly that scaling with guess_mode=True (torch.logspace(-1, 0, 13) is
0.825**(12 - i) to three digits), and its guess mode is the cfg injection; but a pipeline takes guess mode for
all units at once, so UnitControlNets below applies it per unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from guardforge.engine.controlnet_preprocessors import Detected, detect, preprocessor
from guardforge.engine.controlnet_unit import ControlNetUnit
from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from guardforge.engine.request import GenerationRequest
    from guardforge.models.cache import LoadedModel

Mode = str  # "txt2img" | "img2img" | "inpaint"


# -- sizing the control image to the output, as sd-webui-controlnet does --------------------------------------

def pixel_perfect_resolution(image_size: tuple[int, int], target: tuple[int, int], resize_mode: str) -> int:
    """sd-webui-controlnet's pixel-perfect processor_res: the short side the image has once fitted to the output."""
    (raw_w, raw_h), (w, h) = image_size, target
    k_h, k_w = h / raw_h, w / raw_w
    k = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return max(1, round(k * min(raw_w, raw_h)))


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """sd-webui-controlnet's high_quality_resize, without its edge thinning: a map of few colours (segmentation)
    resized nearest; a black-and-white map (edges) averaged, then cut back to black and white at Otsu's threshold,
    so thin lines survive a shrink instead of fading under a fixed cut; anything else area-shrunk or cubic-grown."""
    import cv2
    import numpy as np

    pixels = np.asarray(image)
    if pixels.shape[1::-1] == tuple(size):
        return image
    # Colours counted on one packed integer per pixel: np.unique over rows (axis=0) took 0.3 s for a 512 map.
    flat = pixels.reshape(-1, pixels.shape[2] if pixels.ndim == 3 else 1).astype(np.uint32)
    packed = sum(flat[:, channel] << (8 * channel) for channel in range(flat.shape[1]))
    # A photo shows 200 colours in a sample already: only a map with few colours needs the full count.
    sample = packed[::max(1, packed.size // 4096)]
    colours = 200 if len(np.unique(sample)) >= 200 else len(np.unique(packed))
    shrink = size[0] * size[1] < pixels.shape[0] * pixels.shape[1]
    binary = colours == 2 and pixels.min() < 16 and pixels.max() > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    resized = cv2.resize(pixels, size, interpolation=interpolation)
    if binary:
        grey = resized.mean(axis=2).astype(np.uint8) if resized.ndim == 3 else resized
        _, cut = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.stack([cut] * 3, axis=2) if resized.ndim == 3 else cut
    return Image.fromarray(resized)


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    import numpy as np

    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]], axis=0)
    return tuple(int(v) for v in np.median(border, axis=0).reshape(-1))


def fit(image: Image.Image, size: tuple[int, int], resize_mode: str, fill: tuple[int, ...] | int | None = None):
    """The image at `size`: stretched ("Just Resize"), scaled to cover and centre-cropped ("Crop and Resize"), or
    scaled to fit inside and padded ("Resize and Fill", with the border's median colour unless `fill`)."""
    w, h = size
    if resize_mode == "Just Resize":
        return _resize(image, (w, h))
    raw_w, raw_h = image.size
    k = (max if resize_mode == "Crop and Resize" else min)(w / raw_w, h / raw_h)
    scaled = _resize(image, (max(1, round(raw_w * k)), max(1, round(raw_h * k))))
    if resize_mode == "Crop and Resize":
        left, top = (scaled.width - w) // 2, (scaled.height - h) // 2
        return scaled.crop((left, top, left + w, top + h))
    colour = fill if fill is not None else _border_colour(scaled)
    canvas = Image.new(scaled.mode, (w, h), colour)
    canvas.paste(scaled, ((w - scaled.width) // 2, (h - scaled.height) // 2))
    return canvas


# -- preparing a request's units ------------------------------------------------------------------------------

@dataclass
class PreparedControl:
    """One unit ready to run: its preprocessed image at the output size (what the ControlNet reads; for the
    inpaint modules with the masked pixels black) and the mask the inpaint modules mark (-1) in it."""

    unit: ControlNetUnit
    image: Image.Image
    mask: Image.Image | None
    threshold_a: float | None
    threshold_b: float | None
    processor_res: int

    def condition(self) -> Any:
        """What diffusers takes as this unit's control image: the PIL image, or for an inpaint module the
        tensor diffusers' inpaint ControlNets read, the masked pixels at -1 (its make_inpaint_condition)."""
        if self.mask is None:
            return self.image
        import numpy as np
        import torch

        pixels = np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0
        pixels[np.asarray(self.mask) > 127] = -1.0
        return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def effective_thresholds(unit: ControlNetUnit) -> tuple[float | None, float | None]:
    """The thresholds the module runs with (its defaults where the unit has none); None where it takes none."""
    found = preprocessor(unit.module)
    first = 1 if found.uses_resolution else 0
    a = unit.threshold_a if unit.threshold_a is not None else found.default(first)
    b = unit.threshold_b if unit.threshold_b is not None else found.default(first + 1)
    return (a if found.default(first) is not None else None, b if found.default(first + 1) is not None else None)


def prepare_unit(unit: ControlNetUnit, image: Image.Image, size: tuple[int, int], seed: int,
                 mask: Image.Image | None = None) -> PreparedControl:
    """Preprocess one unit's image (at processor_res, or pixel-perfect) and fit it to the output `size`."""
    found = preprocessor(unit.module)
    resolution = (pixel_perfect_resolution(image.size, size, unit.resize_mode) if unit.pixel_perfect
                  else unit.processor_res)
    a, b = effective_thresholds(unit)
    detected: Detected = detect(image, found.name, resolution, a, b, seed=seed, mask=mask)
    fitted = fit(detected.image.convert("RGB"), size, unit.resize_mode)
    fitted_mask = None
    if detected.mask is not None:
        # Padding added by "Resize and Fill" counts as masked: the model paints it (outpainting, as in A1111).
        fitted_mask = fit(detected.mask, size, unit.resize_mode, fill=255)
        fitted = Image.composite(Image.new("RGB", size), fitted, fitted_mask)
    return PreparedControl(unit, fitted, fitted_mask, a, b, resolution if found.uses_resolution else unit.processor_res)


def inpaint_mask(request: GenerationRequest, mask: Image.Image | None) -> Image.Image | None:
    """The request's mask as the inpaint modules read it (255 = repaint), before blur: A1111's binary mask."""
    if mask is None:
        return None
    from guardforge.engine.pipelines import binary_mask

    binary = binary_mask(mask)
    return ImageOps.invert(binary) if request.inpainting_mask_invert else binary


def prepare_controls(request: GenerationRequest, images: list[Image.Image | None], init_image: Image.Image | None,
                     mask: Image.Image | None, size: tuple[int, int], seed: int) -> list[PreparedControl]:
    """Every unit of the request prepared; `images` are the units' decoded images (None: the init image)."""
    prepared = []
    inpaint = inpaint_mask(request, mask)
    for index, (unit, image) in enumerate(zip(request.controlnet, images, strict=True)):
        source = image if image is not None else init_image
        if source is None:
            raise InvalidRequest(f"controlnet unit {index} has no image, and there is no init_image to use instead")
        prepared.append(prepare_unit(unit, source, size, seed, mask=inpaint))
    return prepared


# -- running ---------------------------------------------------------------------------------------------------

def unit_controlnets(nets: list, modes: list[str]):
    """A diffusers MultiControlNetModel (so the pipelines take it as theirs) that gives each unit its own
    control mode; see the module's docstring."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    class UnitControlNets(MultiControlNetModel):
        def __init__(self):
            super().__init__(nets)
            self.modes = list(modes)
            # Set by ControlRun for the run: whether the batch is [negative half, positive half].
            self.classifier_free: Callable[[], bool] = lambda: False

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                    class_labels=None, timestep_cond=None, attention_mask=None, added_cond_kwargs=None,
                    cross_attention_kwargs=None, guess_mode=False, return_dict=True):
            # guess_mode True from the pipeline: it already passes the conditional half alone (a shuffle-type
            # ControlNet with global_pool_conditions); the unconditional half gets no control anyway.
            halves = not guess_mode and self.classifier_free()
            down = mid = None
            for image, scale, net, mode in zip(controlnet_cond, conditioning_scale, self.nets, self.modes,
                                               strict=True):
                d, m = net(sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                           controlnet_cond=image, conditioning_scale=scale, class_labels=class_labels,
                           timestep_cond=timestep_cond, attention_mask=attention_mask,
                           added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                           guess_mode=guess_mode or mode != "Balanced", return_dict=False)
                if mode == "ControlNet is more important" and halves:
                    keep = _positive_half(sample.shape[0], sample.device, sample.dtype)
                    d = [x * keep for x in d]
                    m = m * keep
                down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
                mid = m if mid is None else mid + m
            return down, mid

    return UnitControlNets()


def _positive_half(batch: int, device, dtype):
    import torch

    keep = torch.ones(batch, 1, 1, 1, device=device, dtype=dtype)
    keep[: batch // 2] = 0
    return keep


def _check_fits(loaded: LoadedModel, nets: list, names: list[str]) -> None:
    unet = getattr(loaded.pipeline, "unet", None)
    if unet is None:
        raise InvalidRequest(f"ControlNet runs on SD 1.x and SDXL checkpoints; {loaded.entry.name!r} has no UNet "
                             "(SD3 and Flux ControlNets are not built in)")
    for net, name in zip(nets, names, strict=True):
        theirs = (net.config.cross_attention_dim, tuple(net.config.block_out_channels), net.config.in_channels,
                  net.config.addition_embed_type)
        # The UNet's output width is the latent's (a 9-channel inpainting UNet reads more than the latent).
        ours = (unet.config.cross_attention_dim, tuple(unet.config.block_out_channels), unet.config.out_channels,
                unet.config.addition_embed_type)
        if theirs != ours:
            raise InvalidRequest(
                f"ControlNet {name!r} does not fit checkpoint {loaded.entry.name!r}: it was made for a UNet with "
                f"cross-attention {theirs[0]}, blocks {list(theirs[1])}, {theirs[2]} latent channels, the "
                f"checkpoint's has {ours[0]}, {list(ours[1])}, {ours[2]} (an SD 1.x ControlNet needs an SD 1.x "
                "checkpoint, an SDXL one SDXL)")


class ControlRun:
    """What Engine.run needs for a request's units: the pipeline for a mode and the call's extra arguments."""

    def __init__(self, controls: list[PreparedControl], nets: list, names: list[str]):
        self.controls = controls
        self.nets = nets
        self.names = names

    def pipeline(self, loaded: LoadedModel, mode: Mode) -> DiffusionPipeline:
        """The ControlNet pipeline for `mode`, made once per loaded model (from_pipe: the checkpoint's modules,
        shared), with this request's ControlNets in it. Call with loaded.lock held, as Engine.run does."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

        _check_fits(loaded, self.nets, self.names)
        multi = unit_controlnets(self.nets, [c.unit.control_mode for c in self.controls])
        key = f"controlnet:{mode}"
        pipe = loaded._modes.get(key)
        if pipe is None:
            auto = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                    "inpaint": AutoPipelineForInpainting}[mode]
            pipe = loaded._modes[key] = auto.from_pipe(loaded.pipeline, controlnet=multi)
        else:
            pipe.controlnet = multi
        multi.classifier_free = lambda: bool(pipe.do_classifier_free_guidance)
        return pipe

    def inputs(self, mode: Mode) -> dict[str, Any]:
        """The ControlNet arguments of the pipeline call for `mode` (txt2img names the control image `image`)."""
        return {
            "image" if mode == "txt2img" else "control_image": [c.condition() for c in self.controls],
            "controlnet_conditioning_scale": [c.unit.weight for c in self.controls],
            "control_guidance_start": [c.unit.guidance_start for c in self.controls],
            "control_guidance_end": [c.unit.guidance_end for c in self.controls],
        }

    @staticmethod
    def release(pipe: DiffusionPipeline) -> None:
        """Let go of the request's ControlNets, so an evicted one's memory comes back once the run ends."""
        pipe.controlnet = None


def unit_infotext(control: PreparedControl, model_title: str) -> str:
    """sd-webui-controlnet's infotext value for a unit: `Module: canny, Model: name [hash], Weight: 1, ...`."""
    from guardforge.engine.infotext import _number

    unit = control.unit
    values = {
        "Module": unit.module, "Model": model_title, "Weight": _number(unit.weight),
        "Resize Mode": unit.resize_mode, "Processor Res": control.processor_res,
        "Threshold A": _number(control.threshold_a) if control.threshold_a is not None else -1,
        "Threshold B": _number(control.threshold_b) if control.threshold_b is not None else -1,
        "Guidance Start": _number(unit.guidance_start), "Guidance End": _number(unit.guidance_end),
        "Pixel Perfect": unit.pixel_perfect, "Control Mode": unit.control_mode,
    }
    return ", ".join(f"{key}: {value}" for key, value in values.items())


_UNIT_FIELDS = {
    "Module": "module", "Model": "model", "Weight": "weight", "Resize Mode": "resize_mode",
    "Processor Res": "processor_res", "Threshold A": "threshold_a", "Threshold B": "threshold_b",
    "Guidance Start": "guidance_start", "Guidance End": "guidance_end", "Pixel Perfect": "pixel_perfect",
    "Control Mode": "control_mode",
}


def units_from_infotext(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The units (without images: a PNG does not hold them) of parsed infotext's "ControlNet N" entries."""
    import re

    units = []
    for key in sorted((k for k in params if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1])):
        unit: dict[str, Any] = {}
        for part in re.finditer(r"(?:^|, )([A-Z][A-Za-z ]+): (.*?)(?=, [A-Z][A-Za-z ]+: |$)", str(params[key])):
            name = _UNIT_FIELDS.get(part.group(1))
            if name is None:
                continue  # fields sd-webui-controlnet writes that guardforge has no use for (Hr Option, ...)
            value: Any = part.group(2)
            if name == "pixel_perfect":
                value = value == "True"
            elif name in ("threshold_a", "threshold_b") and float(value) == -1:
                continue
            unit[name] = value
        # An IP-Adapter unit (sd-webui-controlnet writes it as a ControlNet unit) is the request's ip_adapter.
        if "model" in unit and not str(unit.get("module", "")).lower().startswith("ip-adapter"):
            units.append(unit)
    return units
