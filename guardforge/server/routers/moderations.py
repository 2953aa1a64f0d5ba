"""OpenAI-compatible POST /v1/moderations: text and images (data URLs in content parts) through the guard."""

from __future__ import annotations

from functools import partial

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request

from guardforge.server.auth import Caller, get_limited_caller
from guardforge.server.schemas import ModerationRequest, ModerationResponse, openai_errors

router = APIRouter(tags=["moderations (OpenAI)"])


@router.post("/v1/moderations", response_model=ModerationResponse,
             summary="Classify text and images (OpenAI moderation schema)",
             description="At most `limits.max_moderation_inputs` items (32 by default) per call and "
                         "`limits.max_moderation_chars` characters (20,000) per text; a call costs one rate-limit "
                         "token per 8 inputs or per 2,000 characters by default, whichever is more "
                         "(docs/serve.md, Limits and errors).",
             responses=openai_errors(400, 401, 413, 415, 422, 429))
async def moderations(body: ModerationRequest, request: Request,
                      caller: Caller = Depends(get_limited_caller)) -> ModerationResponse:
    # The guard's models run on CPU/GPU for tens of ms: off the event loop, like generation, and at most
    # server.max_concurrent_moderations at once (a waiting call holds no thread).
    state = request.app.state
    if getattr(state, "moderation_slots", None) is None:  # made in the event loop: older anyio needs one
        state.moderation_slots = anyio.CapacityLimiter(state.studio.settings.server.max_concurrent_moderations)
    return await anyio.to_thread.run_sync(partial(state.studio.moderate, body.input, charge=caller.charge),
                                          limiter=state.moderation_slots)
