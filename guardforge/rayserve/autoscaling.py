"""Scale the generation replicas on the job queue's depth, which lives in the job store, not in Ray's request counts.

Ray cloudpickles this module into the Serve controller by value: it must import nothing of guardforge.
"""

from __future__ import annotations

import math

# The metrics each generation replica reports (GenerationWorkers.record_autoscaling_stats).
QUEUED = "guardforge_queued"  # jobs waiting in the shared store: the same number seen by every replica
RUNNING = "guardforge_running"  # jobs this replica's worker runs now (0 or 1)


def queue_depth_policy(ctx) -> tuple[float, dict]:
    """Replicas wanted: the jobs waiting plus those running, over the jobs one replica should hold
    (`target_ongoing_requests`, set from ray.jobs_per_worker). Ray applies min/max, the delays and the scaling
    factors around it. A replica's worker loop takes its jobs from the store, not through Ray, so Ray's own
    count of requests in flight is always zero here and its default policy would never scale up."""
    metrics = ctx.aggregated_metrics or {}
    queued_by_replica = metrics.get(QUEUED) or {}
    if not queued_by_replica:  # no replica has reported yet (they are starting): keep what was decided
        return ctx.target_num_replicas, {}
    # max, not sum: every replica counts the same queue; the freshest reading is the safer one to scale up on.
    queued = max(queued_by_replica.values())
    running = sum((metrics.get(RUNNING) or {}).values())
    wanted = math.ceil((queued + running) / ctx.config.get_target_ongoing_requests())
    return wanted, {"queued": queued, "running": running}
