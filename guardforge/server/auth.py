"""Who is calling: open on loopback by default, otherwise an API key as Bearer token or HTTP Basic password."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from functools import partial

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from guardforge.access.caller import Caller
from guardforge.errors import GuardforgeError
from guardforge.server.limits import TokenBuckets


class Unauthorized(GuardforgeError):
    """No valid API key where one is required (HTTP 401)."""


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

    def __init__(self, studio, required: bool, buckets: TokenBuckets):
        self.studio = studio
        self.required = required
        self.buckets = buckets

    def caller(self, request: Request) -> Caller:
        key = presented_key(request)
        if key is None:
            if self.required:
                raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
            return self.studio.caller()
        found = self.studio.keys.check(key)
        if found is None:
            if not self.required:
                # Clients such as the openai package always send some key; an open server ignores a foreign one.
                return self.studio.caller()
            raise Unauthorized("invalid or revoked API key")
        return self.studio.caller(found.id, found.max_priority)


async def get_caller(request: Request) -> Caller:
    """FastAPI dependency: who is calling (401 when a key is needed and missing or wrong)."""
    # In the thread pool: a key not in the cache costs a scrypt hash (tens of ms) and a database read, which on
    # the event loop would stall every other request, and a stream of wrong keys would stall the server.
    # Without a key there is nothing to look up: the trip to the pool would cost more than the answer.
    if presented_key(request) is None:
        return request.app.state.auth.caller(request)
    return await run_in_threadpool(request.app.state.auth.caller, request)


async def get_limited_caller(request: Request) -> Caller:
    """As get_caller, with `charge` set to the caller's bucket: for expensive routes, which pass it to Studio.

    Not spent here: FastAPI solves dependencies before it reports the body's validation errors, so a token
    taken here would be lost to a request that is then refused."""
    caller = await get_caller(request)
    return dataclasses.replace(caller, charge=partial(request.app.state.auth.buckets.take, caller.owner))


async def get_ops_caller(request: Request) -> Caller | None:
    """/readyz and /metrics: public, unless server.protect_ops asks for a key where keys are required."""
    if request.app.state.studio.settings.server.protect_ops:
        return await get_caller(request)
    return None


def sees_server_paths(request: Request) -> bool:
    """Whether this caller may see where files live on the server: the open server's user on this machine (A1111
    shows them, and local scripts open the files). Anyone else sees paths relative to the models folder."""
    client = request.client.host if request.client else ""
    return not request.app.state.auth.required and is_loopback(client)
