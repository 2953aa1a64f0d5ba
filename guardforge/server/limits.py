"""Request limits: body size (413) as ASGI middleware, and per-caller token buckets (429)."""

from __future__ import annotations

import json
import threading
import time

from guardforge.errors import GuardforgeError, InvalidRequest


class RateLimited(GuardforgeError):
    """The caller spent its request budget; retry later (HTTP 429).

    `retry_after`: seconds until the bucket holds what the refused request costs (the Retry-After header rounds
    it up to whole seconds)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class BodyTooLarge(GuardforgeError):
    """The request body is over the server's limit (HTTP 413)."""


class TokenBuckets:
    """One token bucket per caller: `rate_per_minute` refill, `burst` capacity. A request costs one token, a
    moderation call more by its size (Studio.moderation_cost)."""

    def __init__(self, rate_per_minute: float, burst: int):
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, owner: str, cost: int = 1) -> None:
        if cost > self.burst:
            # A full bucket could never pay for it: a 429 would have the client wait for nothing.
            raise InvalidRequest(f"this request costs {cost} tokens, more than a key's bucket holds "
                                 f"({self.burst:g}, server.rate_burst); split it into smaller requests")
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(owner, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[owner] = (tokens, now)
                wait = (cost - tokens) / self.rate
                raise RateLimited(f"rate limit reached; retry in {wait:.1f} s", retry_after=wait)
            self._buckets[owner] = (tokens - cost, now)


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413, by Content-Length up front or by counting a stream."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None:
            # The server (h11/httptools) never passes more bytes than Content-Length says.
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._refuse(scope, send)
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): read the body here, counting, and replay it to the app. The app would
        # hold the whole JSON body in memory anyway; reading it first lets us answer 413 ourselves, since
        # FastAPI turns any error while it reads a body into a 400.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await self._refuse(scope, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replaying_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replaying_receive, send)

    async def _refuse(self, scope, send):
        from guardforge.server.schemas import error_body

        body = json.dumps(error_body(scope, "BodyTooLarge",
                                     f"request body is over this server's limit of {self.max_bytes} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
