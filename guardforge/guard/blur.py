"""A blur strong enough that nothing in the image can be recognised, for the policy's `blur` action."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFilter, ImageFont

# 8x8 keeps only the coarse colour layout: no face, text or body outline survives that.
GRID = 8


def withheld_tile(width: int, height: int) -> Image.Image:
    """What stands in for a blocked image where a client expects one per slot (A1111 answers, the UI's gallery):
    a grey tile of the image's size that says "blocked"."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, min(height // 3, width // 5)))  # 'blocked' spans ~60% of the width
    box = draw.textbbox((0, 0), "blocked", font=font)
    draw.text(((width - (box[2] - box[0])) / 2 - box[0], (height - (box[3] - box[1])) / 2 - box[1]),
              "blocked", fill=(255, 255, 255), font=font)
    return image


def strong_blur(image: Image.Image, grid: int = GRID) -> Image.Image:
    """Pixelate to `grid` x `grid`, scale back, then Gaussian-blur by 1/8 of the shorter side."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    small = rgb.resize((grid, grid), Image.Resampling.BOX)
    coarse = small.resize((width, height), Image.Resampling.BILINEAR)
    radius = max(1.0, min(width, height) / 8)
    return coarse.filter(ImageFilter.GaussianBlur(radius))
