"""Who is calling: open on loopback by default, otherwise an API key as Bearer token or HTTP Basic password."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from guardforge.errors import GuardforgeError
from guardforge.server.limits import TokenBuckets

LOCAL_OWNER = "local"


class Unauthorized(GuardforgeError):
    """No valid API key where one is required (HTTP 401)."""


@dataclass(frozen=True)
class Caller:
    owner: str  # the API key's id, or "local" for an unauthenticated caller on an open server
    key_id: str | None
    max_priority: int | None = None  # the key's cap on job priority; None for "local", the server's own user


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(require_auth: bool | None, host: str) -> bool:
    return require_auth if require_auth is not None else not is_loopback(host)


def presented_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer <key>` or `Basic base64(user:<key>)`, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return value.strip()
    if scheme == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed HTTP Basic credentials") from None
        return decoded.partition(":")[2] or None
    return None


class Authenticator:
    """Resolves a request to a Caller and spends from that caller's rate-limit bucket when asked."""

    def __init__(self, keys, required: bool, buckets: TokenBuckets):
        self.keys = keys
        self.required = required
        self.buckets = buckets

    def caller(self, request: Request) -> Caller:
        key = presented_key(request)
        if key is None:
            if self.required:
                raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
            return Caller(LOCAL_OWNER, None)
        found = self.keys.check(key)
        if found is None:
            if not self.required:
                # Clients such as the openai package always send some key; an open server ignores a foreign one.
                return Caller(LOCAL_OWNER, None)
            raise Unauthorized("invalid or revoked API key")
        return Caller(found.id, found.id, found.max_priority)


async def get_caller(request: Request) -> Caller:
    """FastAPI dependency: who is calling (401 when a key is needed and missing or wrong)."""
    # In the thread pool: a key not in the cache costs a scrypt hash (tens of ms) and a database read, which on
    # the event loop would stall every other request, and a stream of wrong keys would stall the server.
    return await run_in_threadpool(request.app.state.auth.caller, request)


async def get_limited_caller(request: Request) -> Caller:
    """As get_caller, and spends one token of the caller's bucket (429 when empty): for expensive routes."""
    caller = await get_caller(request)
    request.app.state.auth.buckets.take(caller.owner)
    return caller
