"""`guardforge generate`'s --ip-adapter* options as the request's `ip_adapter`, with what an image's infotext
restores (engine/ip_adapter.py's ip_adapter_from_infotext)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from guardforge.errors import InvalidRequest


def ip_adapter_fields(model: str | None, image: Path | None, scale: float | None, encoder: str | None,
                      from_infotext: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """The ip_adapter fields and a note for the user (None: nothing to say). The options win over the infotext's
    unit; a PNG does not hold the adapter's image, so the infotext's unit runs only with --ip-adapter-image."""
    given = {"model": model, "scale": scale, "encoder": encoder}
    if image is None:
        if any(v is not None for v in given.values()):
            raise InvalidRequest("--ip-adapter, --ip-adapter-scale and --ip-adapter-encoder need --ip-adapter-image "
                                 "(the picture the adapter draws from)")
        note = ("the image's infotext names an IP-Adapter; give --ip-adapter-image to use it (left out)"
                if from_infotext else None)
        return None, note
    if not image.is_file():
        raise InvalidRequest(f"--ip-adapter-image {image} is not a file")
    fields = {**(from_infotext or {}), **{k: v for k, v in given.items() if v is not None}}
    if "model" not in fields:
        raise InvalidRequest("--ip-adapter-image needs --ip-adapter MODEL (see `guardforge models list --kind "
                             "ipadapter`)")
    fields["image"] = base64.b64encode(image.read_bytes()).decode("ascii")
    return fields, None
