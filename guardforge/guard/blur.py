"""A blur strong enough that nothing in the image can be recognised, for the policy's `blur` action."""

from __future__ import annotations

from PIL import Image, ImageFilter

# 8x8 keeps only the coarse colour layout: no face, text or body outline survives that.
GRID = 8


def strong_blur(image: Image.Image, grid: int = GRID) -> Image.Image:
    """Pixelate to `grid` x `grid`, scale back, then Gaussian-blur by 1/8 of the shorter side."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    small = rgb.resize((grid, grid), Image.Resampling.BOX)
    coarse = small.resize((width, height), Image.Resampling.BILINEAR)
    radius = max(1.0, min(width, height) / 8)
    return coarse.filter(ImageFilter.GaussianBlur(radius))
