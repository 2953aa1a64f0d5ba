"""OpenAI-compatible POST /v1/moderations: text and images (data URLs in content parts) through the guard."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from guardforge.server.auth import Caller, get_limited_caller
from guardforge.server.schemas import ModerationRequest, ModerationResponse, errors

router = APIRouter(tags=["moderations (OpenAI)"])


@router.post("/v1/moderations", response_model=ModerationResponse,
             summary="Classify text and images (OpenAI moderation schema)", responses=errors(401, 413, 422, 429))
async def moderations(body: ModerationRequest, request: Request,
                      caller: Caller = Depends(get_limited_caller)) -> ModerationResponse:
    # The guard's models run on CPU/GPU for tens of ms: off the event loop, like generation.
    return await run_in_threadpool(request.app.state.studio.moderate, body.input)
