"""`guardforge serve --ray`: join (or start) a Ray cluster and run the app on Ray Serve."""

from __future__ import annotations

import signal
import threading

from guardforge.errors import GuardforgeError
from guardforge.settings import Settings


def serve_with_ray(settings: Settings, address: str | None = None, mount_ui: bool = True, blocking: bool = True):
    """Start Serve's HTTP proxies on server.host:server.port and run the app (replacing one of the same name).
    Not blocking: returns the ingress's handle. Blocking: runs until Ctrl-C or SIGTERM, then deletes the app
    (its generation replicas stop their workers as a server's stop does)."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise GuardforgeError(f"Ray Serve is not installed ({exc}); install the extra: pip install -e \".[ray]\"") \
            from exc
    from guardforge.rayserve.deployments import build_app

    ray.init(address=address or settings.ray.address, ignore_reinit_error=True)
    serve.start(proxy_location=settings.ray.proxy_location,
                http_options={"host": settings.server.host, "port": settings.server.port})
    handle = serve.run(build_app(settings, mount_ui), name=settings.ray.app_name, route_prefix="/")
    if not blocking:
        return handle
    print(f"guardforge on Ray Serve at http://{settings.server.host}:{settings.server.port}  (docs: /docs, UI: /ui); "
          "Ctrl-C stops it", flush=True)
    stop = threading.Event()
    # SIGTERM too: it is how a service manager or Kubernetes stops a process, and the app must go with it.
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopping: deleting the app", flush=True)
    serve.delete(settings.ray.app_name)
    return None
