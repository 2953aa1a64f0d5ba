"""Running an image network tile by tile, so that memory stays bounded whatever the image's size.

Each tile is run with `overlap` pixels of its neighbours around it and only its own part of the output is kept.
A convolutional network sees no further than its receptive field, so when `overlap` covers it the stitched result
is exactly the untiled one; ESRGAN's field is wider than a practical overlap, but the far part of it weighs
little, which is why A1111 and ComfyUI tile the same nets with 8 to 32 px of overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from guardforge.errors import Cancelled


def run_tiled(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, tile: int,
              overlap: int, cancel: threading.Event | None = None) -> torch.Tensor:
    """`net` (scale x) on a (1, C, H, W) image, `tile` x `tile` input pixels at a time plus `overlap` around each;
    tile 0 runs the image whole."""
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return net(image)
    output: torch.Tensor | None = None
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            if cancel is not None and cancel.is_set():
                raise Cancelled("upscale cancelled")
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            result = net(image[:, :, y0:y1, x0:x1])
            if output is None:  # the channel count and dtype are the net's
                output = result.new_zeros((1, result.shape[1], height * scale, width * scale))
            own = result[:, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
            output[:, :, top * scale:bottom * scale, left * scale:right * scale] = own
    assert output is not None
    return output
