"""A1111's /sdapi/v1 request and response shapes (StableDiffusionProcessingAPI and friends), as its clients send
and read them; fields guardforge does not use are accepted and reported as ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from guardforge.engine.request import SCHEDULE_TYPES

# A1111's scheduler names -> our schedule types; the rest of A1111's list has no diffusers twin here.
SCHEDULES = {schedule.lower(): schedule for schedule in SCHEDULE_TYPES}
_DEFAULT_RHO = {"karras": 7.0}
SCHEDULERS_LISTED = [{"name": name, "label": label, "aliases": None, "default_rho": _DEFAULT_RHO.get(name, -1.0),
                      "need_inner_model": False} for name, label in SCHEDULES.items()]


class Txt2ImgPayload(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI; fields guardforge does not use are accepted and reported."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients send the sampler here
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None  # None: guardforge's default (20)
    cfg_scale: float = 7.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    refiner_checkpoint: str | None = None  # None, "" or "None": no refiner, as A1111 reads it
    refiner_switch_at: float | None = None  # None: A1111's UI default, 0.8


class Img2ImgPayload(Txt2ImgPayload):
    """A1111's StableDiffusionImg2ImgProcessingAPI: init_images, optional mask (inpaint)."""

    init_images: list[str] = Field(..., min_length=1)
    mask: str | None = None  # "" is no mask, as A1111 reads it
    mask_blur: int = 4
    inpainting_mask_invert: int = 0
    inpainting_fill: int | None = None  # an index into FILLS ("Masked content"); None: guardforge's default
    include_init_images: bool = False
    # The one A1111 img2img script that runs here is "poor man's outpainting" (adapter.outpaint_script).
    script_name: str | None = None
    script_args: list[Any] | None = None

    @field_validator("init_images")
    @classmethod
    def _first_is_an_image(cls, value: list[str]) -> list[str]:
        if not value[0].strip():  # the one guardforge uses; A1111 would fail decoding it
            raise ValueError("init_images[0] is empty: send a base64 image (or a data: URL)")
        return value


class ImageResponse(BaseModel):
    """A1111's answer: base64 PNGs, the parameters as received, and `info` as a JSON string."""

    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class PngInfoRequest(BaseModel):
    """A1111's PNGInfoRequest."""

    image: str = Field(..., description="The image as base64 (or a data URL): PNG, JPEG, WebP, ...")


class PngInfoResponse(BaseModel):
    """A1111's PNGInfoResponse."""

    info: str = Field(..., description="The infotext (generation parameters) as stored; empty if none")
    items: dict[str, Any] = Field(..., description="The image's other text fields")
    parameters: dict[str, Any] = Field(..., description="The infotext parsed as A1111 parses it (values are "
                                       "strings; Size becomes Size-1 and Size-2)")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(..., ge=0, le=1)
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class Lora(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = {}


class ExtrasPayload(BaseModel):
    """A1111's ExtrasBaseRequest: the extras tab's upscale (face restoration is not here and is reported)."""

    model_config = ConfigDict(extra="allow")

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: scale to "
                             "upscaling_resize_w x upscaling_resize_h")
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleImagePayload(ExtrasPayload):
    image: str = Field("", description="The image as base64 (or a data URL)")


class FileData(BaseModel):
    data: str = Field(..., description="The image as base64 (or a data URL)")
    name: str = ""


class ExtrasBatchImagesPayload(ExtrasPayload):
    imageList: list[FileData] = Field(..., min_length=1)  # noqa: N815 (A1111's name)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class UpscalerItem(BaseModel):
    """A1111's UpscalerItem."""

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscaleMode(BaseModel):
    name: str
