"""Request bodies: what JSON the server takes at all, checked once for every route before any model sees it.

Python's JSON reader is more lenient than JSON: it accepts NaN, Infinity and numbers that overflow to infinity,
and it hands on lone UTF-16 surrogates ("\\ud800", or their raw UTF-8 bytes) as str. Neither is text or a number
anything downstream can use: a surrogate cannot be encoded (hashing, tokenizing, echoing it back all fail), and
pydantic's `Any` fields (A1111's `alwayson_scripts`, `/options`, moderation content parts) pass both through.
"""

from __future__ import annotations

import math
import re

from fastapi import Request

from guardforge.errors import GuardforgeError, InvalidRequest

_SURROGATE = re.compile("[\ud800-\udfff]")


class MalformedBody(GuardforgeError):
    """The body is not JSON the server can read: not UTF-8, a syntax error, NaN or Infinity (HTTP 400)."""


class UnsupportedMediaType(GuardforgeError):
    """A JSON route was sent a body of another Content-Type (HTTP 415)."""


def _where(path: list) -> str:
    where = "body" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return where.encode("utf-8", "backslashreplace").decode("utf-8")  # a key may be the surrogate itself


def _check_text(text: str, path: list) -> None:
    if text.isascii():  # O(1) in CPython: base64 images megabytes long cost nothing here
        return
    found = _SURROGATE.search(text)
    if found:
        raise InvalidRequest(
            f"{_where(path)}: the text holds a lone surrogate (U+{ord(found.group()):04X} at character "
            f"{found.start()}), which is not a Unicode character; send valid UTF-8 (an escaped pair such as "
            "\\ud83d\\ude00 is fine)")


def check_json_value(value) -> None:
    """MalformedBody for a non-finite number, InvalidRequest for a lone surrogate in any string or key."""
    # An explicit stack, not recursion: the parser takes nesting as deep as its own recursion limit.
    stack: list[tuple[object, list]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise MalformedBody(f"{_where(path)}: {item} is not a finite number; JSON has no NaN or Infinity")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path + [key])
                stack.append((child, path + [key]))
        elif isinstance(item, list):
            stack.extend((child, path + [index]) for index, child in enumerate(item))


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def check_json_body(request: Request) -> None:
    """App-wide dependency: FastAPI has parsed (and cached) a JSON body by now; refuse what it let through."""
    route = request.scope.get("route")  # set by recent Starlette; without it, judge by the method
    reads_body = (getattr(route, "body_field", None) is not None if route is not None
                  else request.method in ("POST", "PUT", "PATCH"))
    if not reads_body or not await request.body():
        return
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json(content_type):
        # FastAPI would hand the bytes to the model and answer "Input should be a valid dictionary": `curl -d`
        # without -H sends application/x-www-form-urlencoded, and that message does not say what is wrong.
        raise UnsupportedMediaType(f"the body was sent as {content_type or 'an empty Content-Type'}; send JSON with "
                                   "'Content-Type: application/json'")
    try:
        value = await request.json()  # parsed and cached by FastAPI already, for a route that reads a body
    except (ValueError, RecursionError):
        return  # a route that takes no body: what it ignores cannot hurt it
    check_json_value(value)
