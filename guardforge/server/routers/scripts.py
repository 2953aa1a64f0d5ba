"""Native /v1/scripts: the installed scripts and their arguments; each script's own routes under
/v1/scripts/{name}/, behind the server's authentication."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field

from guardforge.scripts.base import Script, arg_infos
from guardforge.server.auth import Caller, get_caller
from guardforge.server.schemas import errors

log = logging.getLogger(__name__)
router = APIRouter(tags=["scripts"])


class ScriptView(BaseModel):
    name: str = Field(..., description="How a request's `scripts` names it (also its route prefix)")
    title: str
    alwayson: bool = Field(..., description="Runs on every request of its modes, with its default args unless "
                           "the request gives some")
    modes: list[str]
    args: list[dict[str, Any]] = Field(..., description="Its arguments in positional order: label, value (the "
                                       "default), minimum, maximum, step, choices, and name")
    args_schema: dict[str, Any] = Field(..., description="The JSON schema of its named arguments")
    routes: str | None = Field(None, description="Where its own routes are served, if it has any")


@router.get("/v1/scripts", response_model=list[ScriptView], summary="The installed scripts and their arguments",
            responses=errors(401))
def list_scripts(request: Request, caller: Caller = Depends(get_caller)) -> list[ScriptView]:
    # A plain def: the first call finds the scripts through their entry points, which imports them.
    studio = request.app.state.studio
    return [ScriptView(name=script.name, title=script.title, alwayson=script.alwayson, modes=sorted(script.modes),
                       args=[{**info, "name": name} for name, info in zip(script.Args.model_fields,
                                                                          arg_infos(script.Args), strict=True)],
                       args_schema=script.Args.model_json_schema(),
                       routes=f"/v1/scripts/{script.name}/" if type(script).router is not Script.router else None)
            for script in studio.scripts_installed()]


def mount_script_routes(app: FastAPI, studio) -> None:
    """Each script's router under /v1/scripts/{name}, callers authenticated as on every other route. A router
    FastAPI will not take is logged and left out: the server starts without it."""
    for name, script_router in studio.script_routers():
        try:
            app.include_router(script_router, prefix=f"/v1/scripts/{name}", tags=[f"script: {name}"],
                               dependencies=[Depends(get_caller)])
        except Exception as exc:  # a plugin's router: anything may be wrong with it
            log.error("script %r: its routes are skipped: %s: %s", name, type(exc).__name__, exc)
