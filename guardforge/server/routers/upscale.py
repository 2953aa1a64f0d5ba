"""Native /v1 upscaling: the upscalers there are, and one image upscaled (Studio.upscale), answered at once."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from guardforge.engine.upscalers import LATENT_UPSCALE_MODES, UpscaleRequest
from guardforge.guard.verdict import Verdict
from guardforge.server.auth import Caller, get_caller, get_limited_caller
from guardforge.server.schemas import errors

router = APIRouter(tags=["native"])


class UpscalerView(BaseModel):
    name: str
    kind: str  # "builtin" or "model"
    scale: float | None  # a model's own scale; None where its file cannot be read (a refused pickle)


class UpscalerList(BaseModel):
    upscalers: list[UpscalerView]
    latent_upscale_modes: list[str]  # for hires fix only


class UpscaleView(BaseModel):
    # base64 PNG as delivered (blurred if the policy said so), with the source's infotext and a postprocessing
    # text as A1111's extras write them; None when blocked
    image: str | None
    width: int
    height: int
    upscaler: str
    action: str
    blocked: bool  # the input image was blocked: nothing ran
    info: dict
    input_verdict: Verdict | None
    verdict: Verdict | None
    elapsed_s: float


@router.get("/v1/upscalers", response_model=UpscalerList, summary="Upscalers and latent upscale modes",
            responses=errors(401))
def list_upscalers(request: Request, caller: Caller = Depends(get_caller)) -> UpscalerList:
    return UpscalerList(upscalers=[UpscalerView(name=u.name, kind="model" if u.entry else "builtin", scale=u.scale)
                                   for u in request.app.state.studio.upscalers_listed()],
                        latent_upscale_modes=list(LATENT_UPSCALE_MODES))


@router.post("/v1/upscale", response_model=UpscaleView, summary="Upscale one image, answered when done",
             responses=errors(401, 404, 413, 422, 429))
async def upscale(body: UpscaleRequest, request: Request, caller: Caller = Depends(get_limited_caller)) -> UpscaleView:
    # Off the event loop: decoding and the model's run take seconds.
    result = await run_in_threadpool(request.app.state.studio.upscale, body, caller)
    image = None if result.pil is None else base64.b64encode(result.png_bytes()).decode("ascii")
    return UpscaleView(image=image, width=result.width, height=result.height, upscaler=result.upscaler,
                       action=result.action, blocked=result.blocked, info=result.info,
                       input_verdict=result.input_verdict, verdict=result.verdict, elapsed_s=result.elapsed_s)
