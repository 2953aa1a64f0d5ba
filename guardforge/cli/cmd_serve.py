"""`guardforge serve`: the HTTP API and web UI under uvicorn."""

from __future__ import annotations

import typer

from guardforge.cli import app


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (default: settings server.host, 127.0.0.1)"),
    port: int = typer.Option(None, help="Port (default: settings server.port, 7860)"),
    ui: bool = typer.Option(True, help="Mount the web UI at /ui"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    root_path: str = typer.Option("", help="The path prefix a reverse proxy serves this under and strips "
                                           "(e.g. /studio), so that links and the UI point through the proxy"),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray Serve: ingress, generation replicas and the guard "
                                                  "as deployments (needs the `ray` extra; docs/scale.md)"),
    address: str = typer.Option(None, help="With --ray: the Ray cluster to join (default: settings ray.address; "
                                           "none: start a local Ray)"),
) -> None:
    """Serve /sdapi/v1, /v1, /v1/moderations and the web UI; API keys are required off loopback."""
    import uvicorn

    from guardforge.server.app import create_app
    from guardforge.server.auth import auth_required
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    settings = Settings()
    server = settings.server.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    settings = settings.model_copy(update={"server": server})
    if ray:
        from guardforge.rayserve.launch import serve_with_ray

        serve_with_ray(settings, address, mount_ui=ui)
        return
    studio = Studio(settings)
    if auth_required(server.require_auth, server.host) and not studio.keys.list():
        typer.secho("warning: API keys are required on this address but none exist; "
                    "create one with `guardforge keys create NAME`", err=True, fg="yellow")
    application = create_app(studio, mount_ui=ui)
    typer.echo(f"guardforge on http://{server.host}:{server.port}  (docs: /docs, UI: /ui)")
    uvicorn.run(application, host=server.host, port=server.port, log_level=log_level,
                timeout_graceful_shutdown=server.graceful_shutdown_s, timeout_keep_alive=server.keep_alive_s,
                root_path=root_path)
