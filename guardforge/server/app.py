"""The FastAPI app factory: `create_app(studio)` wires routers, auth, limits, metrics and the UI around one Studio."""

from __future__ import annotations

import gc
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from guardforge.a1111.adapter import A1111
from guardforge.access.keys import KeyNotFound
from guardforge.errors import (
    Cancelled,
    Forbidden,
    GuardBackendError,
    GuardforgeError,
    IncompatibleDependencies,
    InvalidRequest,
    JobFailed,
    ModelNotFound,
    UnsafeModelFormat,
)
from guardforge.jobs.queue import ImageGone, JobNotFound, QueueFull, TooManyActiveJobs
from guardforge.server.auth import Authenticator, Unauthorized, auth_required, get_ops_caller, sees_server_paths
from guardforge.server.bodies import MalformedBody, UnsupportedMediaType, check_json_body
from guardforge.server.limits import BodySizeLimit, BodyTooLarge, RateLimited, TokenBuckets
from guardforge.server.schemas import Health, error_body

log = logging.getLogger(__name__)

# The one place where an error kind becomes a status code; the first matching class wins.
STATUS_BY_ERROR: list[tuple[type[GuardforgeError], int]] = [
    (MalformedBody, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (BodyTooLarge, 413),
    (UnsupportedMediaType, 415),
    (QueueFull, 429),
    (TooManyActiveJobs, 429),
    (RateLimited, 429),
    (ImageGone, 410),  # before JobNotFound, its base class: the image was there and its pixels were deleted
    (JobNotFound, 404),
    (KeyNotFound, 404),
    (ModelNotFound, 404),
    (InvalidRequest, 422),
    (UnsafeModelFormat, 422),
    (Cancelled, 409),
    (GuardBackendError, 503),
    (IncompatibleDependencies, 503),  # the server's installed set, not the caller's request
    (JobFailed, 500),
]


# Retry-After for a full queue or a key at its job cap: a slot frees when some job ends, which may be in a second
# (a generation) or an hour (training); the queue cannot say when, so this is a polling pace, not a promise.
BUSY_RETRY_AFTER_S = 5


def status_for(exc: GuardforgeError) -> int:
    return next((code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls)), 400)


def retry_after_header(seconds: float) -> str:
    """RFC 9110 delay-seconds: a whole number, rounded up so a client that waits it is not refused again."""
    return str(max(1, math.ceil(seconds)))


def error_name(status: int) -> str:
    """The `error` of an answer Starlette or FastAPI make themselves (MethodNotAllowed for 405)."""
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


# Starlette answers a path with no route of the request's method from the first route of that path only, so
# its Allow header names that route's methods (POST for /v1/jobs, where GET is served too).
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """The methods some route serves at this request's path, asked of the routes themselves (FastAPI nests
    included routers, so there is no flat list of paths to read)."""
    from starlette.routing import Match

    methods = [method for method in _METHOD_ORDER[:-1]
               if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)]
    return methods + ["OPTIONS"] if methods else []


def body_parse_reason(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at position {cause.start}); "
                "send JSON encoded as UTF-8")
    if isinstance(cause, RecursionError):
        return "the body is not JSON this server can read: it is nested too deeply"
    return "the body is not JSON this server can read"


def _validation_detail(exc: ValidationError | RequestValidationError) -> list[dict]:
    # Keep only JSON-safe parts: pydantic's ctx may hold the raised exception object.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]


class Metrics:
    """Prometheus metrics in this app's own CollectorRegistry, so two apps in one process never collide."""

    def __init__(self, studio):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("guardforge_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("guardforge_http_request_seconds", "Time to answer an HTTP request",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.submitted = Counter("guardforge_jobs_submitted", "Jobs accepted into the queue",
                                 ["api"], registry=self.registry)
        depth = Gauge("guardforge_queue_depth", "Jobs waiting in the queue", registry=self.registry)
        depth.set_function(studio.queue_depth)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RequestMetrics:
    """Counts and times every HTTP request by route (the time to the start of its response).

    Plain ASGI, not @app.middleware("http"): Starlette's BaseHTTPMiddleware runs each request through a task
    group and memory streams, which cost about as much CPU as a status poll's own work.
    """

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                path = getattr(scope.get("route"), "path", "unmatched")  # the router sets it in this same scope
                self.metrics.requests.labels(scope["method"], path, str(message["status"])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)


def drain_on_stop_signals(drain: Callable[[], None]) -> Callable[[], None]:
    """Call `drain` as soon as SIGINT or SIGTERM arrives, then the handler that was there (uvicorn's).

    uvicorn runs the lifespan's shutdown only after its connections drain (up to timeout_graceful_shutdown,
    held open by event streams and waiting A1111 calls); a worker still taking jobs then would start queued
    jobs only to have the shutdown stop them. Returns a function that puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return lambda: None
    installed = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):  # default or ignored: no graceful stop to get ahead of
            continue

        def on_signal(signum, frame, previous=previous):
            drain()
            previous(signum, frame)

        signal.signal(sig, on_signal)
        installed[sig] = (on_signal, previous)

    def restore() -> None:
        for sig, (ours, previous) in installed.items():
            if signal.getsignal(sig) is ours:
                signal.signal(sig, previous)

    return restore


def create_app(studio, *, start_workers: bool = True, mount_ui: bool = True) -> FastAPI:
    """The HTTP app for `studio`. Workers start with the app (lifespan) and stop with it."""
    from guardforge.server.routers import controlnet, grids, merge, moderations, native, scripts, sdapi, upscale

    settings = studio.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        restore_signals = lambda: None  # noqa: E731
        # What is alive now (the imports, the settings, the studio) lives as long as the server: out of the
        # collector's full passes, which would otherwise pause every request for tens to hundreds of ms.
        gc.collect()
        gc.freeze()
        if start_workers:
            recovered = await run_in_threadpool(studio.start_workers)  # recovery reads and writes the database
            if recovered:
                log.warning("%d job(s) were running when the server last stopped: %s", len(recovered),
                            "re-queued" if settings.jobs.requeue_running_on_restart else "marked failed")
            restore_signals = drain_on_stop_signals(studio.drain_workers)
        try:
            yield
        finally:
            restore_signals()
            gc.unfreeze()  # what the server held may now be collected (several apps in one process: tests)
            if start_workers:
                studio.stop_workers()
            if mount_ui:  # the UI's uploads and shown images leave with the server (Gradio's cache, ui/mount.py)
                app.state.ui_cache.close()

    app = FastAPI(
        # Every route: what FastAPI's JSON parsing lets through and no model can use (NaN, lone surrogates).
        dependencies=[Depends(check_json_body)],
        # A body without a Content-Type is read as JSON, as A1111 (on an older FastAPI) and its scripts expect;
        # a body that names another type is still refused (415, server/bodies.py).
        strict_content_type=False,
        title="guardforge",
        version="0.1.0",
        summary="Local image generation with a content-safety guard",
        description=(
            "A1111-compatible `/sdapi/v1`, a native `/v1` job API with server-sent progress events, and an "
            "OpenAI-compatible `/v1/moderations`. Send an API key as `Authorization: Bearer <key>` (the "
            "A1111 routes also take HTTP Basic with the key as password) unless the server is open on "
            "loopback."
        ),
        lifespan=lifespan,
    )
    app.state.studio = studio
    app.state.auth = Authenticator(
        studio, auth_required(settings.server.require_auth, settings.server.host),
        TokenBuckets(settings.server.rate_per_minute, settings.server.rate_burst),
    )
    app.state.metrics = Metrics(studio)
    # A1111's /options, per caller (owner -> the options it set): one key switching its checkpoint must not
    # switch everyone's. Keyless callers of an open server share the owner "local", so one set, as in A1111.
    # They live on this app, not in a module.
    app.state.a1111 = A1111(studio)  # A1111's per-caller options live as long as the app, as in A1111

    @app.exception_handler(GuardforgeError)
    async def _guardforge_error(request: Request, exc: GuardforgeError):
        status = status_for(exc)
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer, Basic realm="guardforge"'
        if status == 429:  # every 429 (RFC 6585) says when to come back; RateLimited knows, the queue does not
            headers["Retry-After"] = retry_after_header(getattr(exc, "retry_after", BUSY_RETRY_AFTER_S))
        # backslashreplace: a message quoting the caller's text must not fail to encode (lone surrogates).
        detail = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
        return JSONResponse(error_body(request.scope, type(exc).__name__, detail), status_code=status,
                            headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # What Starlette and FastAPI raise themselves (no route, wrong method, an unreadable body), in our shape.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request.app, request.scope)
            headers["Allow"] = ", ".join(allowed)
            if request.method == "OPTIONS":  # RFC 9110: OPTIONS asks what the path supports; that is not an error
                return Response(status_code=204, headers=headers)
            detail = f"{request.method} is not served at {request.url.path}; it takes {', '.join(allowed)}"
            return JSONResponse(error_body(request.scope, "MethodNotAllowed", detail), 405, headers=headers)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(error_body(request.scope, "MalformedBody", body_parse_reason(exc.__cause__)),
                                400, headers=headers or None)
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}; /docs lists them"
        return JSONResponse(error_body(request.scope, error_name(exc.status_code), detail), exc.status_code,
                            headers=headers or None)

    @app.exception_handler(ValidationError)
    async def _validation_error(request: Request, exc: ValidationError):
        return JSONResponse(error_body(request.scope, "ValidationError", _validation_detail(exc)), 422)

    @app.exception_handler(RequestValidationError)
    async def _request_validation_error(request: Request, exc: RequestValidationError):
        syntax = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if syntax is not None:  # not JSON at all: malformed (400), as a body that is not UTF-8 is
            reason = (syntax.get("ctx") or {}).get("error", "a syntax error")
            position = syntax.get("loc", ("body", "?"))[-1]
            return JSONResponse(error_body(request.scope, "MalformedBody",
                                           f"the body is not valid JSON: {reason} at character {position}"), 400)
        return JSONResponse(error_body(request.scope, "ValidationError", _validation_detail(exc)), 422)

    app.add_middleware(RequestMetrics, metrics=app.state.metrics)

    app.include_router(sdapi.router)
    app.include_router(native.router)
    app.include_router(grids.router)
    app.include_router(upscale.router)
    app.include_router(moderations.router)
    app.include_router(controlnet.router)
    app.include_router(controlnet.native_router)
    app.include_router(merge.router)
    app.include_router(scripts.router)
    scripts.mount_script_routes(app, studio)

    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers", tags=["ops"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, summary="Readiness: database reachable and workers running",
             tags=["ops"], responses={503: {"model": Health, "description": "Not ready"}},
             dependencies=[Depends(get_ops_caller)])
    def readyz(request: Request):  # a plain def: the database read runs in the thread pool
        detail = {"workers": "not started by this app"}
        try:  # the pool is built here on first use: a bad `devices` setting must read as not ready, too
            ok = True
            if start_workers:
                workers = studio.worker_status()
                detail.update(workers=workers["started"], devices=workers["devices"])
                if workers["dead"]:  # a worker whose thread ended runs nothing more: its share of the queue waits
                    detail["dead_workers"] = workers["dead"]
                ok = workers["started"] and not workers["dead"]
            detail["queued"] = studio.queue_depth()
        except Exception as exc:  # the database is down: say so, do not crash the probe
            # The driver's text names hosts, users and paths: the log and the local user get it, a public
            # probe only that the database is unreachable.
            log.warning("readiness: the database is unreachable: %s: %s", type(exc).__name__, exc)
            detail["database"] = (f"{type(exc).__name__}: {exc}" if sees_server_paths(request)
                                  else "unreachable (the server log has the error)")
            ok = False
        health = Health(status="ok" if ok else "unavailable", detail=detail)
        return health if ok else JSONResponse(health.model_dump(), status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", tags=["ops"],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
             dependencies=[Depends(get_ops_caller)])
    def metrics() -> Response:  # a plain def: the queue-depth gauge reads the database
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if mount_ui:
        from guardforge.ui.mount import mount_ui as mount_gradio_ui

        # Off loopback the UI asks for a login: user name the key's id, password the key. The user name must be
        # the key's own id because the UI files jobs under the logged-in user name: each key sees only its own.
        async def login(user: str, key: str) -> bool:
            # Gradio awaits a coroutine here but would call a plain function on the event loop, scrypt and all.
            return await run_in_threadpool(studio.keys.verify, key) == user

        app = mount_gradio_ui(app, studio, rate_limit=app.state.auth.buckets.take,
                              auth=login if app.state.auth.required else None)

    # Outermost: refuse oversized bodies before anything reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_body_bytes)
    return app
