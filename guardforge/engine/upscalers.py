"""Upscalers as A1111 has them: "Lanczos" and "Nearest" (PIL), "None", and the ESRGAN-family models of the models
folder's ESRGAN/ and RealESRGAN/ (registry kind "upscaler"), with A1111's rules for reaching a size: run the model
until the image is at least that large (at most three times), then Lanczos to the size exactly.

Also the upscale request and result that every interface shares, and A1111's latent upscale modes (hires fix)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from guardforge.errors import InvalidRequest
from guardforge.guard.verdict import Verdict

if TYPE_CHECKING:
    import torch

    from guardforge.models.registry import ModelEntry, ModelRegistry
    from guardforge.settings import Settings

# A1111's names; "None" upscales nothing in the extras tab and resizes with Lanczos elsewhere, as there.
PIL_UPSCALERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
BUILTIN_UPSCALERS = ("None", *PIL_UPSCALERS)
# A1111's shared.latent_upscale_modes: torch interpolate mode and antialias, on the latents (hires fix only).
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
MAX_MODEL_PASSES = 3  # A1111's Upscaler.upscale: a x2 model reaches x8 in three runs, then stops
# Input pixels per tile side and context around each: multiples of 4, so that nets which pixel-unshuffle their
# input (Real-ESRGAN x2plus by 2, 1x models by 4) get whole blocks in every tile.
TILE = 192
TILE_OVERLAP = 16
_KEEP_LOADED = 2  # upscaler nets kept per Studio: a few hundred MB at most, while a hires batch reuses one


class UpscaleRequest(BaseModel):
    """One image made larger: by `scale`, or to `width` x `height` (cropped to fill them, unless `crop` is off,
    which keeps the aspect and only covers them). `upscaler_2` is blended over at `upscaler_2_visibility`."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="base64 (or a data: URL): PNG, JPEG, WebP, ...")
    upscaler: str = Field("Lanczos", max_length=1000, description="None, Lanczos, Nearest or a model from "
                          "GET /v1/upscalers")
    scale: float = Field(2.0, gt=0, le=8)
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    crop: bool = True
    upscaler_2: str | None = Field(None, max_length=1000)
    upscaler_2_visibility: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _both_sides(self) -> UpscaleRequest:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height (upscale to a size), or neither (upscale by scale)")
        return self


class UpscaleResult(BaseModel):
    """What came out, after the guard: `pil` is the delivered image (blurred if the policy said so; None when
    blocked). `blocked`: the input image was refused and nothing ran."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    width: int
    height: int
    upscaler: str
    info: dict[str, Any] = {}  # A1111's "Postprocess ..." keys, as its extras tab reports them
    input_verdict: Verdict | None = None
    verdict: Verdict | None = None
    action: str = "allow"
    blocked: bool = False
    elapsed_s: float = 0.0
    device: str | None = None
    # The source image's generation parameters: A1111's extras keep them in the upscaled file, so PNG info and
    # --from-png still read how the picture was made.
    infotext: str = ""
    pil: Any = Field(default=None, exclude=True, repr=False)

    def png_bytes(self) -> bytes:
        """The delivered image as A1111's extras write it: a PNG with the source's `parameters` and a
        `postprocessing` text of what was done. Only for a delivered image (pil set)."""
        import io

        from PIL import PngImagePlugin

        chunks = PngImagePlugin.PngInfo()
        if self.infotext:
            chunks.add_text("parameters", self.infotext)
        postprocessing = ", ".join(f"{k}: {v}" for k, v in self.info.items())
        if postprocessing:
            chunks.add_text("postprocessing", postprocessing)
        buffer = io.BytesIO()
        self.pil.save(buffer, format="PNG", pnginfo=chunks)
        return buffer.getvalue()


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of the upscaler list: a built-in (entry None) or a model file, with its scale when known."""

    name: str
    entry: ModelEntry | None
    scale: float | None


@dataclass
class _Net:
    net: Any
    scale: int
    unshuffle: int


def _round8(value: float) -> int:
    return int(value) // 8 * 8


def cover_size(size: tuple[int, int], width: int, height: int) -> float:
    """The scale that makes `size` cover width x height."""
    return max(width / size[0], height / size[1])


def center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


class Upscalers:
    """The upscalers of one Studio: lists them, checks names, loads model files (kept for the next call), runs
    them tiled on a device. Holds no request state. One model run at a time per device: upscales are answered
    at once rather than queued, so without it N concurrent calls would hold N times a run's memory."""

    def __init__(self, settings: Settings, registry: ModelRegistry, tile: int = TILE, overlap: int = TILE_OVERLAP):
        self.settings = settings
        self.registry = registry
        self.tile = tile
        self.overlap = overlap
        self._nets: OrderedDict[tuple, _Net] = OrderedDict()
        self._scales: dict[tuple, int | None] = {}
        self._lock = threading.Lock()
        self._device_locks: dict[str, threading.Lock] = {}

    # -- names -----------------------------------------------------------------------------------------------
    def listed(self) -> list[UpscalerInfo]:
        """Built-ins first ("None" first, as A1111), then the model files by name."""
        builtins = [UpscalerInfo(name, None, None if name == "None" else 4.0) for name in BUILTIN_UPSCALERS]
        return builtins + [UpscalerInfo(e.name, e, self.model_scale(e)) for e in self.registry.list("upscaler")]

    def names(self) -> list[str]:
        return [info.name for info in self.listed()]

    def resolve(self, name: str, *, hires: bool = False) -> ModelEntry | None:
        """None for a built-in; the registry's entry for a model file (ModelNotFound, PathEscape for a name that
        leaves the folder, UnsafeModelFormat for a pickle the settings refuse). `hires`: the name is hires fix's,
        where the latent modes are upscalers too, so a miss lists them."""
        from guardforge.errors import ModelNotFound
        from guardforge.models.loading import check_loadable

        if name in BUILTIN_UPSCALERS:
            return None
        if name in LATENT_UPSCALE_MODES:
            raise InvalidRequest(f"{name!r} upscales latents: it is for hires fix only; here use one of "
                                 f"{', '.join(BUILTIN_UPSCALERS)} or a model from the ESRGAN/ or RealESRGAN/ folder")
        try:
            entry = self.registry.resolve(name, kind="upscaler")
        except ModelNotFound:
            # The registry knows only the model files; "known: none" would hide the built-ins a caller can use.
            known = [*(LATENT_UPSCALE_MODES if hires else ()), *self.names()]
            raise ModelNotFound(f"no upscaler named {name!r}; known: {', '.join(known)} "
                                "(model files go in the models folder's ESRGAN/ or RealESRGAN/)") from None
        check_loadable(entry, self.settings)
        return entry

    def model_scale(self, entry: ModelEntry) -> int | None:
        """A model file's own scale, read from the tensors' shapes (a safetensors header only); None when it
        cannot be read without unpickling a file the settings refuse, or is no ESRGAN-family model."""
        from guardforge.engine.esrgan import architecture_of
        from guardforge.models.families import read_safetensors_header

        key = (entry.path, entry._signature)
        if key not in self._scales:
            try:
                if entry.path.suffix.lower() == ".safetensors":
                    self._scales[key] = architecture_of(read_safetensors_header(entry.path))[0].scale
                elif entry.is_pickle and not self.settings.allow_pickle:
                    return None
                else:
                    self._scales[key] = architecture_of(self._read(entry))[0].scale
            except (InvalidRequest, OSError, ValueError):
                self._scales[key] = None
        return self._scales[key]

    # -- sizes -------------------------------------------------------------------------------------------------
    def check_passes(self, name: str, size: tuple[int, int], dest: tuple[int, int], max_pixels: int) -> None:
        """Refuse (InvalidRequest) an upscale whose model runs would pass `max_pixels` on the way to `dest`: a
        x4 model run for x2 makes the x4 image first."""
        entry = self.resolve(name)
        if dest[0] * dest[1] > max_pixels:
            raise InvalidRequest(f"the upscaled image would be {dest[0]}x{dest[1]}, over this server's limit of "
                                 f"{max_pixels} pixels")
        if entry is None:
            return
        scale = self.model_scale(entry)
        if scale is None:
            self.net(entry, _cpu())  # says why it cannot be read
            return
        width, height = size
        for _ in range(MAX_MODEL_PASSES):
            if width >= dest[0] and height >= dest[1]:
                break
            width, height = width * scale, height * scale
            if width * height > max_pixels:
                raise InvalidRequest(f"{name!r} is a x{scale} model: reaching {dest[0]}x{dest[1]} makes a "
                                     f"{width}x{height} image first, over this server's limit of {max_pixels} "
                                     "pixels; upscale a smaller image or use Lanczos")

    # -- running -----------------------------------------------------------------------------------------------
    def _read(self, entry: ModelEntry) -> dict:
        from guardforge.models.loading import check_loadable

        check_loadable(entry, self.settings)
        if entry.path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(entry.path))
        import pickle

        import torch

        # Only with allow_pickle (check_loadable), and even then weights_only: tensors and containers come
        # back, any object that would run code is refused.
        try:
            state = torch.load(entry.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise InvalidRequest(f"upscaler {entry.name!r}: {entry.path.suffix} file not readable as weights "
                                 f"only ({str(exc).splitlines()[0][:200]})") from None
        if not isinstance(state, dict):
            raise InvalidRequest(f"upscaler {entry.name!r} holds no state dict")
        return state

    def net(self, entry: ModelEntry, device: torch.device) -> _Net:
        """The entry's network on `device`, loaded once and kept (the last few used)."""
        from guardforge.engine.esrgan import build_network

        key = (entry.path, entry._signature, str(device))
        with self._lock:
            if key in self._nets:
                self._nets.move_to_end(key)
                return self._nets[key]
            try:
                net, arch = build_network(self._read(entry))
            except InvalidRequest as exc:
                raise InvalidRequest(f"upscaler {entry.name!r}: {exc}") from None
            loaded = _Net(net.to(device), arch.scale, arch.unshuffle)
            self._nets[key] = loaded
            while len(self._nets) > _KEEP_LOADED:
                self._nets.popitem(last=False)
            return loaded

    def run_model(self, entry: ModelEntry, image: Image.Image, device: torch.device,
                  cancel: threading.Event | None = None) -> Image.Image:
        """One run of a model file: the image times the model's scale, tiled."""
        import numpy as np
        import torch
        from torch.nn import functional as F

        from guardforge.engine.tiling import run_tiled

        loaded = self.net(entry, device)
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)
        height, width = tensor.shape[-2:]
        block = loaded.unshuffle
        # A net that unshuffles takes whole blocks: pad the edge by repeating it, and cut the padding off after.
        pad_h, pad_w = -height % block, -width % block
        if pad_h or pad_w:
            tensor = F.pad(tensor, (0, pad_w, 0, pad_h), mode="replicate")
        with self._lock:
            device_lock = self._device_locks.setdefault(str(device), threading.Lock())
        with device_lock, torch.inference_mode():
            out = run_tiled(loaded.net, tensor, loaded.scale, self.tile, self.overlap, cancel)
        out = out[:, :, :height * loaded.scale, :width * loaded.scale]
        pixels = (out[0].clamp(0, 1).permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(pixels, "RGB")

    def upscale(self, image: Image.Image, name: str, scale: float, device: torch.device | None = None,
                cancel: threading.Event | None = None) -> Image.Image:
        """A1111's Upscaler.upscale: to (size x scale) rounded down to a multiple of 8, by running the model until
        the image is at least that large (three runs at most), then Lanczos to the size exactly."""
        dest = (_round8(image.width * scale), _round8(image.height * scale))
        return self.resize(image, name, *dest, device=device, cancel=cancel)

    def resize(self, image: Image.Image, name: str, width: int, height: int, device: torch.device | None = None,
               cancel: threading.Event | None = None) -> Image.Image:
        """The image at width x height exactly (not cropped: A1111's "just resize"), made larger with `name`."""
        if width < 1 or height < 1:
            raise InvalidRequest(f"an upscale to {width}x{height} leaves no pixel")
        entry = self.resolve(name)
        image = image.convert("RGB")
        if entry is None:
            return image.resize((width, height), PIL_UPSCALERS.get(name, Image.LANCZOS))
        device = device or _cpu()
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= width and image.height >= height:
                break
            image = self.run_model(entry, image, device, cancel)
        if image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        return image

    # -- the extras tab ----------------------------------------------------------------------------------------
    def plan(self, request: UpscaleRequest, size: tuple[int, int], max_pixels: int) -> tuple[tuple[int, int], dict]:
        """The output size of a request on an image of `size`, and A1111's info keys; InvalidRequest (or
        ModelNotFound) now for what running it would refuse, so that nothing is guarded or loaded in vain."""
        info: dict[str, Any] = {}
        names = [request.upscaler] + ([request.upscaler_2] if self._second(request) else [])
        if request.upscaler == "None":  # A1111 upscales nothing then, whatever upscaler 2 says
            return size, info
        if request.width is not None and request.height is not None:
            scale = cover_size(size, request.width, request.height)
            info["Postprocess upscale to"] = f"{request.width}x{request.height}"
            cover = (max(_round8(size[0] * scale), request.width), max(_round8(size[1] * scale), request.height))
            out = (request.width, request.height) if request.crop else (_round8(size[0] * scale),
                                                                          _round8(size[1] * scale))
        else:
            scale = request.scale
            info["Postprocess upscale by"] = request.scale
            cover = out = (_round8(size[0] * scale), _round8(size[1] * scale))
        if out[0] < 8 or out[1] < 8:
            raise InvalidRequest(f"scaling {size[0]}x{size[1]} by {scale:g} leaves less than 8 pixels a side")
        for name in names:
            self.check_passes(name, size, cover, max_pixels)
        info["Postprocess upscaler"] = request.upscaler
        if self._second(request):
            info["Postprocess upscaler 2"] = request.upscaler_2
            info["Postprocess upscaler 2 visibility"] = request.upscaler_2_visibility
        return out, info

    @staticmethod
    def _second(request: UpscaleRequest) -> bool:
        return bool(request.upscaler_2) and request.upscaler_2 != "None" and request.upscaler_2_visibility > 0

    def run(self, request: UpscaleRequest, image: Image.Image, device: torch.device | None = None,
            cancel: threading.Event | None = None) -> Image.Image:
        """The extras tab's upscale (call plan first): upscaler 1, upscaler 2 blended over it, the crop."""
        image = image.convert("RGB")
        if request.upscaler == "None":
            return image
        if request.width is not None and request.height is not None:
            scale = cover_size(image.size, request.width, request.height)
        else:
            scale = request.scale

        def one(name: str) -> Image.Image:
            result = self.upscale(image, name, scale, device, cancel)
            if request.width is not None and request.height is not None and request.crop:
                # Rounding down to a multiple of 8 can leave it a few pixels short of the size asked for (A1111
                # then pads with black): cover the size, then crop to it.
                if result.width < request.width or result.height < request.height:
                    cover = cover_size(result.size, request.width, request.height)
                    result = result.resize((max(request.width, round(result.width * cover)),
                                            max(request.height, round(result.height * cover))), Image.LANCZOS)
                result = center_crop(result, request.width, request.height)
            return result

        first = one(request.upscaler)
        if self._second(request):
            second = one(request.upscaler_2)
            if second.size != first.size:
                second = second.resize(first.size, Image.LANCZOS)
            first = Image.blend(first, second, request.upscaler_2_visibility)
        return first


def _cpu():
    import torch

    return torch.device("cpu")
