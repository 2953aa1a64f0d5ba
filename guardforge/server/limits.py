"""Request limits: body size (413) as ASGI middleware, and per-caller token buckets (429)."""

from __future__ import annotations

import json
import threading
import time

from guardforge.errors import GuardforgeError


class RateLimited(GuardforgeError):
    """The caller spent its request budget; retry later (HTTP 429)."""


class BodyTooLarge(GuardforgeError):
    """The request body is over the server's limit (HTTP 413)."""


class TokenBuckets:
    """One token bucket per caller: `rate_per_minute` refill, `burst` capacity."""

    def __init__(self, rate_per_minute: float, burst: int):
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, owner: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(owner, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[owner] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimited(f"rate limit reached; retry in {wait:.1f} s")
            self._buckets[owner] = (tokens - 1.0, now)


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413, by Content-Length up front or by counting a stream."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._refuse(send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge("too large")
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"error": "BodyTooLarge",
                           "detail": f"request body is over this server's limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
