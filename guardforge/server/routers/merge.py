"""POST /v1/models/merge: A1111's checkpoint merger (and block-weighted merges) into the models folder."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from guardforge.models.merge import MergeRequest, MergeResult
from guardforge.server.auth import Caller, get_limited_caller
from guardforge.server.schemas import errors

router = APIRouter(tags=["native"])


@router.post("/v1/models/merge", status_code=201, response_model=MergeResult, summary="Merge checkpoints",
             responses=errors(401, 404, 422, 429))
async def merge_models(body: MergeRequest, request: Request,
                       caller: Caller = Depends(get_limited_caller)) -> MergeResult:
    """Writes a new checkpoint into Stable-diffusion/ (a .safetensors file from single files, a diffusers folder
    from folders) and answers once it is written, hashed and listed: seconds for small models, about a minute
    for SD 1.x. As DreamBooth's exports, open to any caller the server accepts: keys required off loopback."""
    # Off the event loop: minutes of file reads and writes.
    return await run_in_threadpool(request.app.state.studio.merge_models, body, caller)
