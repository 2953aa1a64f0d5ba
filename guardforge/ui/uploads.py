"""The UI's file inputs take uploads only, and images are opened with the API's pixel cap.

A Gradio file value is a path on the server ({"path": ..., "meta": {"_type": "gradio.FileData"}}) and any client
can write one by hand. Gradio copies the file it names into its cache before the handler runs and checks where it
came from only in a launched app (`_check_allowed` returns early while `blocks.has_launched` is false, which it
stays under mount_gradio_app). These components refuse, before anything is copied, any path that is not in
Gradio's upload folder, and decode pixels only after the header's size passed the cap.
"""

from __future__ import annotations

import io
import os
import types
from pathlib import Path

import gradio as gr
from fastapi import HTTPException
from gradio.components.base import server
from gradio.data_classes import FileData
from PIL import Image

from guardforge.errors import InvalidRequest
from guardforge.imaging import open_image

NOT_UPLOADED = "only files uploaded here are accepted: upload the image, do not name a path or URL"
# Gradio deletes uploads and shown images this old, checking this often (seconds): Blocks(delete_cache=...). The
# server's start and stop empty the whole cache as well (guardforge.ui.mount).
KEEP_UPLOADS_S = 3600
CLEAN_EVERY_S = 600


def refuse_unless_uploaded(block, url_or_file_path) -> None:
    """gr.Error unless the path is a file in `block`'s cache (an upload, or an image the UI showed)."""
    if url_or_file_path is None:
        return
    cache = os.path.realpath(block.GRADIO_CACHE)  # each component reads GRADIO_TEMP_DIR when built
    try:
        path = os.path.realpath(str(url_or_file_path))
    except (ValueError, OSError):  # a NUL byte or a name the OS can't take: not an upload either
        raise gr.Error(NOT_UPLOADED) from None
    # A URL or relative name resolves against the server's working folder: outside the cache, refused too.
    if os.path.commonpath([cache, path]) != cache or path == cache:
        raise gr.Error(NOT_UPLOADED)


def _move_uploaded(self, url_or_file_path):
    refuse_unless_uploaded(self, url_or_file_path)
    return type(self).move_resource_to_block_cache(self, url_or_file_path)


async def _async_move_uploaded(self, url_or_file_path):
    refuse_unless_uploaded(self, url_or_file_path)
    return await type(self).async_move_resource_to_block_cache(self, url_or_file_path)


def uploads_only(ui: gr.Blocks) -> None:
    """Every block of `ui` refuses file values that were not uploaded, not only the file components: Gradio
    looks for FileData in any input (a Dropdown's, a Textbox's) and downloads an http(s) URL it finds there into
    the cache, unchecked and uncapped, before any handler could refuse it."""
    for block in ui.blocks.values():
        if isinstance(block, _UploadsOnly):
            continue
        # Bound on the instance: Gradio's per-session copies of a block (deepcopy) rebind them to the copy.
        block.move_resource_to_block_cache = types.MethodType(_move_uploaded, block)
        block.async_move_resource_to_block_cache = types.MethodType(_async_move_uploaded, block)


class _UploadsOnly:
    """Mixed into a Gradio component: its inputs must be files Gradio received by upload."""

    def _uploaded(self, url_or_file_path):
        refuse_unless_uploaded(self, url_or_file_path)

    def move_resource_to_block_cache(self, url_or_file_path):
        self._uploaded(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        self._uploaded(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    # The browser draws the Gradio component this subclasses: the name tells it which one.
    def get_block_name(self) -> str:
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.")).__name__.lower()

    get_block_class = get_block_name


def open_upload(source, max_pixels: int, what: str, load: bool = True) -> Image.Image:
    """An uploaded file (path in the cache, or bytes) as an image, or gr.Error saying why not."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif not Path(source).is_file():  # the cache is cleaned on a schedule (see guardforge.ui.mount)
        raise gr.Error(f"{what} is no longer on the server (uploads are kept {KEEP_UPLOADS_S // 60} minutes): "
                       "upload it again")
    try:
        return open_image(source, max_pixels, what, load=load)
    except InvalidRequest as exc:
        raise gr.Error(str(exc)) from None


class UploadedImage(_UploadsOnly, gr.Image):
    """gr.Image whose value reaches the handler as a PIL image decoded under the pixel cap (Gradio's own
    preprocessing decodes the whole image first, and would take a data: URL in place of the upload)."""

    max_pixels: int = 0

    def preprocess(self, payload):
        if payload is None:
            return None
        return open_upload(payload.path, self.max_pixels, "the image")


class UploadedImageEditor(_UploadsOnly, gr.ImageEditor):
    """gr.ImageEditor whose background and layers are decoded under the pixel cap; the canvas also sends its
    layers as bytes (accept_blobs), which go through the same opener."""

    max_pixels: int = 0
    # Gradio keeps the canvas's blobs in memory under an id the browser picks until the edit is submitted, and
    # takes any layer index (index 10**9 built a list of a billion entries). The UI paints one layer.
    max_layers = 8
    blob_budget_bytes = 256 * 2**20  # all pending edits together; the oldest go first

    @server
    def accept_blobs(self, data):
        fields = data.data
        kind, index = fields.get("type"), fields.get("index")
        if kind not in ("background", "layer", "composite"):
            raise HTTPException(422, f"a canvas blob is a background, layer or composite, not {kind!r}")
        if kind == "layer":
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise HTTPException(422, "a layer blob needs its index") from None
            if not 0 <= index < self.max_layers:
                raise HTTPException(422, f"layer index {index} is out of range (0-{self.max_layers - 1})")
        if len(data.files) != 1 or not fields.get("id"):
            raise HTTPException(422, "a canvas blob is one file under an edit id")
        super().accept_blobs(data)
        self._trim_blobs()

    def _trim_blobs(self) -> None:
        def size(blobs) -> int:
            return sum(len(blob) for blob in (blobs.background, blobs.composite, *blobs.layers)
                       if isinstance(blob, (bytes, bytearray)))

        total = sum(size(blobs) for blobs in self.blob_storage.values())
        while total > self.blob_budget_bytes and len(self.blob_storage) > 1:
            total -= size(self.blob_storage.pop(next(iter(self.blob_storage))))

    def convert_and_format_image(self, file: FileData | bytes | None, flatten_on_white: bool = False):
        if file is None:
            return None
        image = open_upload(file.path if isinstance(file, FileData) else file, self.max_pixels, "the image")
        if not flatten_on_white:
            return image.convert("RGBA")  # a layer: its alpha is what was painted
        if "A" in image.getbands() or "transparency" in image.info:
            # The canvas exports RGB 0 under alpha 0: dropping the alpha would turn transparent areas black.
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        return image.convert("RGB")


class UploadedFile(_UploadsOnly, gr.File):
    """gr.File (type="filepath") that refuses server paths."""


def with_cap(component, max_pixels: int):
    component.max_pixels = max_pixels
    return component
