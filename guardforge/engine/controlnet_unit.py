"""One ControlNet unit of a request, in sd-webui-controlnet's terms, so A1111 users and clients meet their fields."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ControlMode = Literal["Balanced", "My prompt is more important", "ControlNet is more important"]
CONTROL_MODES: tuple[str, ...] = get_args(ControlMode)
ResizeMode = Literal["Just Resize", "Crop and Resize", "Resize and Fill"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


class ControlNetUnit(BaseModel):
    """A control image (or the request's init image), how to preprocess it, and which ControlNet reads it how hard.

    `image` None takes the request's init_image, as sd-webui-controlnet does in img2img and inpaint.
    """

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    module: str = Field("none", max_length=200)  # preprocessor, sd-webui-controlnet's names and aliases
    model: str = Field(..., min_length=1, max_length=1000)  # registry name of kind controlnet; "name [hash]" too
    weight: float = Field(1.0, ge=0.0, le=2.0)  # sd-webui-controlnet's slider range
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: ControlMode = "Balanced"
    processor_res: int = Field(512, ge=64, le=4096)
    threshold_a: float | None = None
    threshold_b: float | None = None
    resize_mode: ResizeMode = "Crop and Resize"
    # sd-webui-controlnet's "Pixel Perfect": processor_res from the output size instead of the field.
    pixel_perfect: bool = False

    @field_validator("image")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("image is empty: send a base64 image (or a data: URL), or leave it out to use the "
                             "request's init_image")
        return value

    @field_validator("module")
    @classmethod
    def _known_module(cls, value: str) -> str:
        from guardforge.engine.controlnet_preprocessors import preprocessor

        return preprocessor(value).name  # unknown or unavailable: the reason, at the edge

    @model_validator(mode="after")
    def _start_before_end(self) -> ControlNetUnit:
        if self.guidance_start >= self.guidance_end:
            raise ValueError(f"guidance_start {self.guidance_start} must be below guidance_end "
                             f"{self.guidance_end}: the unit would act on no step")
        return self
