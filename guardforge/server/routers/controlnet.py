"""ControlNet routes: sd-webui-controlnet's /controlnet/* (what webuiapi and other A1111 clients call), each one
call of the sd-webui-controlnet adapter (a1111/controlnet.py); and the native /v1/controlnet/*, each one Studio
call. Units themselves travel in the generation requests: `controlnet` (native) or `alwayson_scripts` (A1111)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from guardforge.a1111.controlnet import CONTROLNET_API_VERSION, ControlNetApi, DetectPayload
from guardforge.server.auth import Caller, get_caller, get_limited_caller
from guardforge.server.schemas import errors

router = APIRouter(prefix="/controlnet", tags=["controlnet (sd-webui-controlnet)"])
native_router = APIRouter(prefix="/v1/controlnet", tags=["native"])


def adapter(request: Request) -> ControlNetApi:
    return ControlNetApi(request.app.state.studio)


@router.get("/version", summary="sd-webui-controlnet's API version", responses=errors(401))
async def version(caller: Caller = Depends(get_caller)) -> dict[str, int]:
    return {"version": CONTROLNET_API_VERSION}


@router.get("/settings", summary="sd-webui-controlnet's settings clients read: how many units a request may have",
            responses=errors(401))
async def settings(request: Request, caller: Caller = Depends(get_caller)) -> dict[str, int]:
    return adapter(request).settings()


@router.get("/model_list", summary="ControlNets in models/ControlNet and the shipped ones, as titles",
            responses=errors(401))
def model_list(request: Request, update: bool = False, caller: Caller = Depends(get_caller)) -> dict[str, list[str]]:
    # A plain def: listing may rescan the models folder, off the event loop.
    return adapter(request).model_list()


@router.get("/module_list", summary="Preprocessors that run here (and, in guardforge_unavailable, those that "
            "cannot, with the reason)", responses=errors(401))
async def module_list(request: Request, alias_names: bool = False,
                      caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    return adapter(request).module_list(alias_names)


@router.post("/detect", summary="Run a preprocessor on images; inputs and maps are guarded",
             responses=errors(401, 404, 413, 422, 429))
async def detect(payload: DetectPayload, request: Request,
                 caller: Caller = Depends(get_limited_caller)) -> dict[str, Any]:
    return await run_in_threadpool(adapter(request).detect, payload)


# -- native ----------------------------------------------------------------------------------------------------

class ControlNetView(BaseModel):
    name: str
    hash: str | None
    format: str
    family: str
    source: str


class ModuleView(BaseModel):
    name: str
    available: bool
    reason: str | None = Field(None, description="Why it cannot run here (None when it can)")
    uses_resolution: bool
    sliders: list[dict[str, Any]]


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="base64 image (or a data: URL)")
    module: str = "canny"
    processor_res: int = Field(512, ge=64, le=4096)
    threshold_a: float | None = None
    threshold_b: float | None = None
    mask: str | None = Field(None, description="For the inpaint modules: white marks what to generate")
    seed: int = Field(0, ge=0, description="For the seeded modules (shuffle)")


class DetectResponse(BaseModel):
    image: str | None = Field(..., description="The map as base64 PNG; None when the guard withheld it")
    action: str
    verdict: dict[str, Any]


@native_router.get("/models", response_model=list[ControlNetView], summary="ControlNets in the registry",
                   responses=errors(401))
def controlnet_models(request: Request, caller: Caller = Depends(get_caller)) -> list[ControlNetView]:
    return [ControlNetView(name=e.name, hash=e.short_hash_if_known, format=e.format, family=e.family, source=e.source)
            for e in request.app.state.studio.models("controlnet")]


@native_router.get("/modules", response_model=list[ModuleView], summary="ControlNet preprocessors",
                   responses=errors(401))
async def controlnet_modules(request: Request, caller: Caller = Depends(get_caller)) -> list[ModuleView]:
    return [ModuleView(name=m.name, available=m.available, reason=m.unavailable, uses_resolution=m.uses_resolution,
                       sliders=[s.as_dict() for s in m.sliders]) for m in request.app.state.studio.controlnet_modules()]


@native_router.post("/detect", response_model=DetectResponse, summary="Run a preprocessor on one image",
                    responses=errors(401, 413, 422, 429))
async def controlnet_detect(body: DetectRequest, request: Request,
                            caller: Caller = Depends(get_limited_caller)) -> DetectResponse:
    from guardforge.imaging import encode_image

    [result] = await run_in_threadpool(request.app.state.studio.detect_control, [body.image], body.module,
                                       body.processor_res, body.threshold_a, body.threshold_b, [body.mask], body.seed)
    return DetectResponse(image=encode_image(result.image) if result.image is not None else None,
                          action=result.verdict.action, verdict=result.verdict.model_dump(mode="json"))


