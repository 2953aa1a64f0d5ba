"""The Ray path without a cluster: the queue-depth autoscaling policy on Ray's own context object, the settings that
size the app, and that nothing on the default path imports ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from guardforge.settings import Settings

PACKAGE = Path(__file__).resolve().parent.parent / "guardforge"


def context(queued: dict[str, float], running: dict[str, float], replicas: int = 2, per_replica: float = 1.0):
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from guardforge.rayserve.autoscaling import QUEUED, RUNNING

    deployment = DeploymentID(name="generation", app_name="guardforge")
    ids = {name: ReplicaID(unique_id=name, deployment_id=deployment) for name in {*queued, *running}}
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="generation", app_name="guardforge",
        current_num_replicas=replicas, target_num_replicas=replicas, running_replicas=list(ids.values()),
        total_num_requests=0.0, total_queued_requests=0.0,
        aggregated_metrics={QUEUED: {ids[n]: v for n, v in queued.items()},
                            RUNNING: {ids[n]: v for n, v in running.items()}},
        raw_metrics={}, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=per_replica))


def test_replicas_follow_the_queue_not_rays_request_count():
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from guardforge.rayserve.autoscaling import queue_depth_policy

    # Two replicas, both busy, five jobs waiting in the shared store (each replica sees the same five): seven jobs.
    wanted, state = queue_depth_policy(context({"a": 5, "b": 5}, {"a": 1, "b": 1}))
    assert wanted == 7 and state == {"queued": 5, "running": 2}
    # Two jobs per replica: half as many.
    assert queue_depth_policy(context({"a": 5, "b": 5}, {"a": 1, "b": 1}, per_replica=2.0))[0] == 4
    # The queue drained and one job left: one replica (Ray's downscale delay and min_replicas apply after).
    assert queue_depth_policy(context({"a": 0, "b": 0}, {"a": 1, "b": 0}))[0] == 1
    # No replica reported yet: keep the current target rather than read silence as an empty queue.
    assert queue_depth_policy(context({}, {}, replicas=3))[0] == 3


def test_ray_settings_refuse_an_empty_range():
    with pytest.raises(ValidationError, match="ray.max_workers .1. is below ray.min_workers .2."):
        Settings(ray={"min_workers": 2, "max_workers": 1})
    with pytest.raises(ValidationError):
        Settings(ray={"proxy_location": "Everywhere"})


def test_nothing_outside_the_ray_package_imports_ray_at_load():
    """`ray` is an optional extra: only guardforge/rayserve imports it at module level, and the rest reaches that
    package and the ray guard backend only from inside a function (guardforge serve --ray)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "rayserve":
            continue
        for node in ast.parse(path.read_text(), str(path)).body:  # module level only
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name == "ray" or name.startswith(("ray.", "guardforge.rayserve", "guardforge.guard.backends.ray")):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}")
    assert not found, "\n".join(found)


def test_serve_ray_without_the_extra_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    import sys

    from tests.inprocess_cli import cli_caller

    call = cli_caller(monkeypatch, capsys, {"GUARDFORGE_HOME": str(tmp_path)})
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is not installed
    code, _, err = call("serve", "--ray", "--no-ui")
    assert code == 2 and "Ray Serve is not installed" in err and 'pip install -e ".[ray]"' in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("GUARDFORGE_RAY__MIN_WORKERS", "3")
    code, _, err = call("serve", "--ray")
    assert code == 2 and "ray.max_workers (1) is below ray.min_workers (3)" in err
