"""ControlNet preprocessors (sd-webui-controlnet's "modules") that need no downloaded weights.

Names and defaults follow sd-webui-controlnet, so an A1111 client's unit means the same here: the module list,
the threshold sliders (threshold_a / threshold_b) and their defaults, the short-side resize to processor_res.
Annotators that need a network's weights (depth, openpose, HED, ...) are listed as unavailable, with the reason,
rather than left out: a client asking for one learns why it cannot have it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass(frozen=True)
class Slider:
    """One of sd-webui-controlnet's preprocessor sliders, as its /controlnet/module_list describes it."""

    name: str
    value: float
    min: float
    max: float
    step: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in (("name", self.name), ("value", self.value), ("min", self.min),
                                  ("max", self.max), ("step", self.step)) if v is not None}


@dataclass(frozen=True)
class Detected:
    """A preprocessed control image; `mask` (L, 255 = to generate) only for the inpaint modules."""

    image: Image.Image
    mask: Image.Image | None = None


Run = Callable[["np.ndarray", int, float, float, int], "np.ndarray"]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Run | None = None  # (rgb HxWx3 uint8, resolution, threshold_a, threshold_b, seed) -> HxW(x3) uint8
    unavailable: str | None = None  # why it cannot run here
    uses_resolution: bool = True  # False: works at the image's own size (processor_res is ignored)
    sliders: tuple[Slider, ...] = field(default=())
    inpaint: bool = False  # marks the masked pixels for an inpaint ControlNet instead of transforming pixels

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def default(self, which: int) -> float | None:
        return self.sliders[which].value if len(self.sliders) > which else None


# -- the transforms (sd-webui-controlnet's annotator code, reimplemented on OpenCV and numpy) -----------------

# The largest map a preprocessor makes: processor_res sets the short side, so a long thin image would otherwise
# grow without bound (a 64 x 16384 image at 4096 is 4096 x 1048576).
MAX_MAP_PIXELS = 4096 * 4096


def _resize_short(img: np.ndarray, resolution: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    k = resolution / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    if size[0] * size[1] > MAX_MAP_PIXELS:
        raise InvalidRequest(f"processor_res {resolution} on a {w}x{h} image makes a {size[0]}x{size[1]} map, over "
                             f"{MAX_MAP_PIXELS} pixels; lower processor_res or crop the image")
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def _canny(img, res, low, high, seed):
    import cv2

    return cv2.Canny(_resize_short(img, res), low, high)


def _threshold(img, res, thr, _b, seed):
    import numpy as np

    img = _resize_short(img, res)
    out = np.zeros(img.shape[:2], dtype=np.uint8)
    out[img.min(axis=2) > thr] = 255
    return out


def _invert(img, res, _a, _b, seed):
    return 255 - img


def _tile_resample(img, res, rate, _b, seed):
    import cv2

    # The tile model sees a blurrier copy: the image downsampled by `rate` (1 keeps it as it is).
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, int(w / rate)), max(1, int(h / rate))), interpolation=cv2.INTER_AREA)


def _blur_gaussian(img, res, sigma, _b, seed):
    import cv2

    return cv2.GaussianBlur(_resize_short(img, res), (0, 0), float(sigma))


def _scribble_xdog(img, res, thr, _b, seed):
    import cv2
    import numpy as np

    img = _resize_short(img, res).astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(img, (0, 0), 5.0) - cv2.GaussianBlur(img, (0, 0), 0.5), axis=2))
    dog = dog.clip(0, 255).astype(np.uint8)
    out = np.zeros(img.shape[:2], dtype=np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > thr] = 255
    return out


def _lineart_standard(img, res, _a, _b, seed):
    import cv2
    import numpy as np

    x = _resize_short(img, res).astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def _color(img, res, _a, _b, seed):
    import cv2

    img = _resize_short(img, res)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _recolor(channel: Callable) -> Run:
    def run(img, res, gamma, _b, seed):
        import numpy as np

        value = channel(_resize_short(img, res)).astype(np.float32) / 255.0
        return (np.power(value, gamma) * 255.0).clip(0, 255).astype(np.uint8)

    return run


def _luminance(img):
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[:, :, 0]


def _intensity(img):
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[:, :, 2]


def _shuffle(img, res, _a, _b, seed):
    import cv2
    import numpy as np

    # sd-webui-controlnet's ContentShuffleDetector: a smooth random flow field remaps the pixels. Seeded (with
    # the request's seed) so a seed gives the same image again, where sd-webui-controlnet draws it unseeded.
    img = _resize_short(img, res)
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)

    def noise_disk(f: int = 256) -> np.ndarray:
        noise = rng.uniform(0, 1, size=(h // f + 2, w // f + 2)).astype(np.float32)
        noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
        noise -= noise.min()
        return noise / max(float(noise.max()), 1e-6)

    flow = np.stack([noise_disk() * (w - 1), noise_disk() * (h - 1)], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def _identity(img, res, _a, _b, seed):
    return img


def _needs(weights: str) -> str:
    return (f"needs the {weights} annotator weights, which guardforge neither ships nor downloads; preprocess "
            "the image with another tool and send the result with module \"none\"")


_RES = Slider("Resolution", 512, 64, 2048)
_REFERENCE = ("hooks the UNet's attention instead of running a ControlNet model; guardforge does not build it")
_AVAILABLE: tuple[Preprocessor, ...] = (
    Preprocessor("none", _identity, uses_resolution=False),
    Preprocessor("invert", _invert, uses_resolution=False),
    Preprocessor("canny", _canny, sliders=(_RES, Slider("Canny Low Threshold", 100, 1, 255, 1),
                                           Slider("Canny High Threshold", 200, 1, 255, 1))),
    Preprocessor("threshold", _threshold, sliders=(_RES, Slider("Binarization Threshold", 127, 0, 255, 1))),
    Preprocessor("tile_resample", _tile_resample, uses_resolution=False,
                 sliders=(Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),)),
    Preprocessor("blur_gaussian", _blur_gaussian, sliders=(_RES, Slider("Sigma", 9.0, 0.01, 64.0, 0.01))),
    Preprocessor("scribble_xdog", _scribble_xdog, sliders=(_RES, Slider("XDoG Threshold", 32, 1, 64, 1))),
    Preprocessor("lineart_standard", _lineart_standard, sliders=(_RES,)),
    Preprocessor("shuffle", _shuffle, sliders=(_RES,)),
    Preprocessor("color", _color, sliders=(_RES,)),
    Preprocessor("recolor_luminance", _recolor(_luminance),
                 sliders=(_RES, Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001))),
    Preprocessor("recolor_intensity", _recolor(_intensity),
                 sliders=(_RES, Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001))),
    Preprocessor("inpaint", _identity, uses_resolution=False, inpaint=True),
    Preprocessor("inpaint_only", _identity, uses_resolution=False, inpaint=True),
)
_UNAVAILABLE: dict[str, str] = {
    "depth": _needs("MiDaS depth"), "depth_leres": _needs("LeReS depth"), "depth_leres++": _needs("LeReS depth"),
    "depth_zoe": _needs("ZoeDepth"), "depth_anything": _needs("Depth Anything"), "normal_map": _needs("MiDaS"),
    "normal_bae": _needs("NormalBae"), "openpose": _needs("OpenPose"), "openpose_face": _needs("OpenPose"),
    "openpose_faceonly": _needs("OpenPose"), "openpose_full": _needs("OpenPose"), "openpose_hand": _needs("OpenPose"),
    "dw_openpose_full": _needs("DWPose"), "animal_openpose": _needs("RTMPose animal"), "mlsd": _needs("M-LSD"),
    "hed": _needs("HED"), "hed_safe": _needs("HED"), "scribble_hed": _needs("HED"), "te_hed": _needs("TEED"),
    "pidinet": _needs("PiDiNet"), "pidinet_safe": _needs("PiDiNet"), "pidinet_scribble": _needs("PiDiNet"),
    "pidinet_sketch": _needs("PiDiNet"), "segmentation": _needs("UniFormer segmentation"),
    "oneformer_coco": _needs("OneFormer"), "oneformer_ade20k": _needs("OneFormer"),
    "anime_face_segment": _needs("anime face segmentation"), "lineart": _needs("informative-drawings lineart"),
    "lineart_coarse": _needs("informative-drawings lineart"), "lineart_anime": _needs("anime lineart"),
    "lineart_anime_denoise": _needs("anime lineart"), "mediapipe_face": _needs("MediaPipe face mesh"),
    "densepose": _needs("DensePose"), "clip_vision": _needs("CLIP vision"), "inpaint_only+lama": _needs("LaMa"),
    "reference_only": _REFERENCE, "reference_adain": _REFERENCE, "reference_adain+attn": _REFERENCE,
    "tile_colorfix": _REFERENCE, "tile_colorfix+sharp": _REFERENCE,
}
PREPROCESSORS: dict[str, Preprocessor] = {
    **{p.name: p for p in _AVAILABLE},
    **{name: Preprocessor(name, unavailable=why) for name, why in _UNAVAILABLE.items()},
}
# sd-webui-controlnet's long names (its UI's and `alias_names=true`'s spelling) for the short ones above.
ALIASES: dict[str, str] = {
    "invert": "invert (from white bg & black line)",
    "lineart_standard": "lineart_standard (from white bg & black line)",
    "lineart": "lineart_realistic", "color": "t2ia_color_grid", "clip_vision": "t2ia_style_clipvision",
    "pidinet_sketch": "t2ia_sketch_pidi", "depth": "depth_midas", "normal_map": "normal_midas",
    "hed": "softedge_hed", "hed_safe": "softedge_hedsafe", "pidinet": "softedge_pidinet",
    "pidinet_safe": "softedge_pidisafe", "segmentation": "seg_ufade20k", "oneformer_coco": "seg_ofcoco",
    "oneformer_ade20k": "seg_ofade20k", "pidinet_scribble": "scribble_pidinet",
    "inpaint": "inpaint_global_harmonious", "anime_face_segment": "seg_anime_face", "te_hed": "softedge_teed",
}
_BY_ALIAS = {alias.lower(): name for name, alias in ALIASES.items()}


def canonical_module(name: str) -> str | None:
    """The short name for a module spelt either way (any case); None if unknown."""
    key = name.strip().lower()
    if key in PREPROCESSORS:
        return key
    return _BY_ALIAS.get(key)


def preprocessor(name: str) -> Preprocessor:
    """The module `name`, or InvalidRequest saying why it is unknown or cannot run."""
    key = canonical_module(name)
    if key is None:
        raise InvalidRequest(f"unknown ControlNet module {name!r}; choose one of: {', '.join(available_modules())}")
    found = PREPROCESSORS[key]
    if not found.available:
        # The name as the caller spelt it first: "depth_midas" answered as "'depth' is unavailable" looked like
        # a message about some other request.
        named = repr(key) if name.strip().lower() == key else f"{name.strip()!r} ({key!r})"
        raise InvalidRequest(f"ControlNet module {named} is unavailable: it {found.unavailable}")
    return found


def available_modules() -> list[str]:
    return [p.name for p in _AVAILABLE]


def detect(image: Image.Image, module: str, resolution: int = 512, threshold_a: float | None = None,
           threshold_b: float | None = None, seed: int = 0, mask: Image.Image | None = None) -> Detected:
    """Run the module on an image; None thresholds take the module's defaults.

    The inpaint modules need a mask (255 = generate): `mask`, else the image's transparent pixels.
    """
    import numpy as np
    from PIL import Image

    found = preprocessor(module)
    if found.inpaint:
        if mask is None and image.mode in ("RGBA", "LA", "PA") and image.getextrema()[-1][0] < 255:
            mask = image.convert("RGBA").getchannel("A").point(lambda a: 255 if a < 128 else 0)
        if mask is None:
            raise InvalidRequest(f"ControlNet module {found.name!r} needs a mask: inpaint with a mask, or send a "
                                 "control image whose transparent pixels mark what to generate")
        return Detected(image.convert("RGB"), mask.convert("L").resize(image.size, Image.NEAREST))
    a = found.default(1 if found.uses_resolution else 0) if threshold_a is None else threshold_a
    b = found.default(2 if found.uses_resolution else 1) if threshold_b is None else threshold_b
    out = found.run(np.asarray(image.convert("RGB")), int(resolution), a, b, int(seed) % 2**32)
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=2)
    return Detected(Image.fromarray(np.ascontiguousarray(out, dtype=np.uint8), "RGB"))
