"""The built-in always-on Watermark script: a visible text on each image (off unless a request turns it on)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from guardforge.scripts.base import Script

Position = Literal["bottom-right", "bottom-left", "top-right", "top-left", "center"]


class WatermarkArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, title="Enable")
    text: str = Field("guardforge", title="Text", min_length=1, max_length=200)
    position: Position = Field("bottom-right", title="Position")
    opacity: float = Field(0.5, title="Opacity", ge=0.0, le=1.0, json_schema_extra={"step": 0.05})
    size: int = Field(16, title="Text size (px)", ge=6, le=256, json_schema_extra={"step": 1})


class Watermark(Script):
    """White text with a dark outline, `opacity` over the image, in a corner (or the centre), a margin of half
    the text size from the edges."""

    title = "Watermark"
    alwayson = True
    Args = WatermarkArgs

    def active(self, args: WatermarkArgs) -> bool:
        return args.enabled and args.opacity > 0

    def texts(self, args: WatermarkArgs) -> list[str]:
        return [args.text]

    def process_images(self, images, request, args: WatermarkArgs):
        return [stamp(image, args) for image in images]

    def infotext(self, args: WatermarkArgs) -> dict[str, object]:
        return {"Watermark": args.text, "Watermark position": args.position, "Watermark opacity": args.opacity,
                "Watermark size": args.size}

    def args_from_infotext(self, params):
        if "Watermark" not in params:
            return None
        read = {"text": params["Watermark"], "position": params.get("Watermark position"),
                "opacity": params.get("Watermark opacity"), "size": params.get("Watermark size")}
        return {"enabled": True, **{key: value for key, value in read.items() if value is not None}}


def stamp(image, args: WatermarkArgs):
    """`image` with the watermark drawn on it (a new image, same size and mode)."""
    from PIL import Image, ImageDraw, ImageFont

    # Pillow's bundled font at any size (FreeType); the fixed-size bitmap font where Pillow lacks FreeType.
    try:
        font = ImageFont.load_default(size=args.size)
    except ImportError:
        font = ImageFont.load_default()
    stroke = max(1, args.size // 12)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = draw.textbbox((0, 0), args.text, font=font, stroke_width=stroke)
    width, height = right - left, bottom - top
    margin = args.size // 2
    x = {"left": margin, "right": image.width - width - margin}.get(args.position.rpartition("-")[2],
                                                                  (image.width - width) // 2)
    y = {"top": margin, "bottom": image.height - height - margin}.get(args.position.partition("-")[0],
                                                                     (image.height - height) // 2)
    alpha = round(255 * args.opacity)
    draw.text((x - left, y - top), args.text, font=font, fill=(255, 255, 255, alpha), stroke_width=stroke,
              stroke_fill=(0, 0, 0, alpha))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert(image.mode)
