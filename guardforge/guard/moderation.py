"""The OpenAI moderation schema on top of verdicts: input parsing and the S-code -> OpenAI category map."""

from __future__ import annotations

import base64
import binascii
import uuid

from PIL import Image

from guardforge.errors import InvalidRequest
from guardforge.imaging import decode_image
from guardforge.guard.verdict import Verdict

# OpenAI category -> the S-codes whose scores it takes (the maximum). Llama Guard has no harassment or
# "graphic" split, so those reuse the closest hazards; documented in docs/guard.md.
OPENAI_CATEGORIES: dict[str, tuple[str, ...]] = {
    "sexual": ("S12", "S3"),
    "sexual/minors": ("S4",),
    "hate": ("S10",),
    "harassment": ("S10", "S5", "S7"),
    "self-harm": ("S11",),
    "self-harm/intent": ("S11",),
    "self-harm/instructions": ("S11",),
    "violence": ("S1", "S9"),
    "violence/graphic": ("S1",),
    "illicit": ("S2", "S9", "S14"),
    "illicit/violent": ("S1", "S9"),
}
# Threatening variants: the base category AND violent crimes (S1) both present; score = the smaller.
THREATENING: dict[str, str] = {"hate/threatening": "hate", "harassment/threatening": "harassment"}
CATEGORY_ORDER: tuple[str, ...] = (
    "sexual", "sexual/minors", "hate", "hate/threatening", "harassment", "harassment/threatening",
    "self-harm", "self-harm/intent", "self-harm/instructions", "violence", "violence/graphic",
    "illicit", "illicit/violent",
)


def check_data_url(url: str) -> None:
    """InvalidRequest unless `url` is a base64 `data:` URL: no pixel is decoded here, so it runs before the
    rate-limit token is spent."""
    if not url.startswith("data:"):
        raise InvalidRequest("image_url must be a data: URL (data:image/png;base64,...); remote URLs are not fetched")
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise InvalidRequest("image_url data: URL must be base64-encoded")
    try:  # as decode_image reads it (line breaks skipped); linear and in C, unlike the image decode after it
        base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image_url is not valid base64: {exc}") from None


def decode_data_url(url: str, max_pixels: int) -> Image.Image:
    """An image from a `data:image/...;base64,` URL; remote URLs are refused (the guard never fetches)."""
    check_data_url(url)
    return decode_image(url, max_pixels, "image_url").convert("RGB")


def check_part(item) -> tuple[str, object]:
    """("text", str) or ("image_url", url) from one content part; InvalidRequest saying what is wrong with it."""
    if hasattr(item, "model_dump"):  # a pydantic content part from the server's request model
        item = item.model_dump()
    if not isinstance(item, dict):
        raise InvalidRequest("content parts must be objects with a type")
    kind = item.get("type")
    if kind == "text":
        if not isinstance(item.get("text"), str):
            raise InvalidRequest("a text part's text must be a string")
        return "text", item["text"]
    if kind == "image_url":
        image_url = item.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str):
            raise InvalidRequest("image_url part needs image_url.url")
        check_data_url(url)
        return "image_url", url
    raise InvalidRequest(f"unsupported content part type {kind!r}; use text or image_url")


def parse_inputs(inputs, max_pixels: int) -> list[list[tuple[str, object]]]:
    """OpenAI `input` -> one list of ("text", str) / ("image", PIL) parts per result.

    A string is one result; a list of strings is one result each; a list of content parts is one result.
    """
    if isinstance(inputs, str):
        return [[("text", inputs)]]
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("input must be a string, a list of strings, or a list of content parts")
    if all(isinstance(item, str) for item in inputs):
        return [[("text", item)] for item in inputs]
    parts: list[tuple[str, object]] = []
    for item in inputs:
        kind, value = check_part(item)
        parts.append(("text", value) if kind == "text" else
                     ("image", decode_image(value, max_pixels, "image_url").convert("RGB")))
    return [parts]


def measure_inputs(inputs, max_inputs: int, max_chars: int) -> tuple[int, int]:
    """(parts, characters of text) of an OpenAI `input`, checked against the per-call caps before any work
    (no image is decoded here); InvalidRequest naming the cap and its setting when one is broken."""
    if isinstance(inputs, str):
        items = [inputs]
    elif isinstance(inputs, list) and inputs:
        items = inputs
        if len(items) > max_inputs:
            raise InvalidRequest(f"input has {len(items)} items; this server takes at most {max_inputs} per call "
                                 "(limits.max_moderation_inputs): send them in several calls")
    else:
        raise InvalidRequest("input must be a string, a non-empty list of strings, or a list of content parts")
    # A list of content parts is checked part by part here, before the token is spent: only the image decode
    # (parse_inputs) comes after it, so a malformed part costs nothing.
    parts = not isinstance(inputs, str) and not all(isinstance(item, str) for item in items)
    chars = 0
    for index, item in enumerate(items):
        if parts:
            kind, value = check_part(item)
            text = value if kind == "text" else None
        else:
            text = item
        if isinstance(text, str):
            if len(text) > max_chars:
                where = "input" if isinstance(inputs, str) else f"input[{index}]"
                raise InvalidRequest(f"{where} has {len(text)} characters; this server takes at most {max_chars} "
                                     "per text (limits.max_moderation_chars), as for a prompt")
            chars += len(text)
    return len(items), chars


def result_from_verdicts(verdicts: list[tuple[str, Verdict]]) -> dict:
    """One OpenAI moderation `results[]` entry from the verdicts of one input's parts (text or image)."""
    scores: dict[str, float] = {}
    violated: set[str] = set()
    types_by_code: dict[str, set[str]] = {}
    flagged = False
    for kind, verdict in verdicts:
        for code, score in verdict.scores.items():
            scores[code] = max(scores.get(code, 0.0), score)
            types_by_code.setdefault(code, set()).add(kind)
        violated.update(verdict.violated)
        flagged = flagged or verdict.flagged  # as in OpenAI's schema: any category true means flagged
    categories: dict[str, bool] = {}
    category_scores: dict[str, float] = {}
    applied: dict[str, list[str]] = {}
    for name, codes in OPENAI_CATEGORIES.items():
        category_scores[name] = max((scores.get(code, 0.0) for code in codes), default=0.0)
        categories[name] = any(code in violated for code in codes)
        applied[name] = sorted(set().union(*(types_by_code.get(code, set()) for code in codes)))
    for name, base in THREATENING.items():
        category_scores[name] = min(category_scores[base], scores.get("S1", 0.0))
        categories[name] = categories[base] and "S1" in violated
        applied[name] = sorted(set(applied[base]) & types_by_code.get("S1", set()))
    actions = [verdict.action for _, verdict in verdicts]
    return {
        "flagged": flagged,
        "categories": {name: categories[name] for name in CATEGORY_ORDER},
        "category_scores": {name: round(category_scores[name], 6) for name in CATEGORY_ORDER},
        "category_applied_input_types": {name: applied[name] for name in CATEGORY_ORDER},
        # Ours, beside OpenAI's: the hazard taxonomy the guard actually decides on.
        "s_codes": sorted(violated, key=lambda c: (len(c), c)),
        "s_code_scores": {code: round(score, 6) for code, score in sorted(scores.items(), key=lambda kv: (len(kv[0]), kv[0]))},
        "actions": actions,
        "errors": [verdict.error for _, verdict in verdicts if verdict.error],
    }


def moderation_response(model: str, results: list[dict]) -> dict:
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}
