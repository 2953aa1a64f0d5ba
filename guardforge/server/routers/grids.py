"""Native /v1/grids: an X/Y/Z plot queued as one job, followed, cancelled and fetched as any job under /v1/jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from guardforge.engine.xyz import GridRequest
from guardforge.server.auth import Caller, get_limited_caller
from guardforge.server.schemas import JobCreated, errors

router = APIRouter(tags=["native"])


@router.post("/v1/grids", status_code=202, response_model=JobCreated, summary="Queue an X/Y/Z plot",
             responses=errors(401, 403, 404, 413, 422, 429))
async def create_grid(body: GridRequest, request: Request,
                      priority: int = Query(0, ge=-100, le=100, description="Higher runs first; FIFO within. "
                                            "Above 0 only up to the API key's max_priority (403 otherwise)"),
                      save: bool = Query(True, description="Keep the grid and the cells in the output folder"),
                      caller: Caller = Depends(get_limited_caller)) -> JobCreated:
    """Every combination of the axes' values is one generation (a cell), guarded as any; the job's images are the
    grid (with its sub-grids when asked) then each cell's, its result says which cell is which. Follow it with
    GET /v1/jobs/{id} or its events (progress counts the steps of all cells), cancel it with DELETE."""
    app = request.app
    # Off the event loop: every cell is checked as a request is (images decoded, models resolved).
    job = await run_in_threadpool(app.state.studio.submit_grid, body, caller, priority=priority, save=save)
    app.state.metrics.submitted.labels("native").inc()
    return JobCreated(id=job.id, state=job.state, position=job.position)
