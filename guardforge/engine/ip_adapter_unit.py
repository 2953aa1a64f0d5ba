"""A request's IP-Adapter: an image the output should look like, the adapter that reads it, and how hard."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class IPAdapterUnit(BaseModel):
    """`model`: a name in models/ipadapter/ ("name [hash]" too); `encoder`: a folder in models/clip_vision/ (None:
    the first one whose width fits the adapter); `scale`: diffusers' set_ip_adapter_scale, sd-webui-controlnet's
    unit weight (0: the adapter changes nothing); `module`: sd-webui-controlnet's preprocessor name, kept for
    infotext (the encoder is what runs; None: named from the adapter and encoder)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., min_length=1)
    model: str = Field(..., min_length=1, max_length=1000)
    scale: float = Field(1.0, ge=0.0, le=2.0)
    encoder: str | None = Field(None, min_length=1, max_length=1000)
    module: str | None = Field(None, max_length=200)  # None: the one sd-webui-controlnet would show for the pair

    @field_validator("image")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("ip_adapter.image is empty: send a base64 image (or a data: URL)")
        return value

    @field_validator("module")
    @classmethod
    def _ip_adapter_module(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip().lower().startswith("ip-adapter"):
            raise ValueError(f"module {value!r} is not an IP-Adapter module (ip-adapter_clip_sd15, "
                             "ip-adapter_clip_sdxl, ip-adapter_clip_h, ...)")
        if any(word in value.lower() for word in ("face_id", "faceid", "pulid", "instantid")):
            raise ValueError(f"module {value!r}: the FaceID, PuLID and InstantID adapters do not run here; the "
                             "image-prompt ones do (ip-adapter_clip_h, ip-adapter_clip_g, ip-adapter_clip_sd15, ...)")
        return value.strip()
