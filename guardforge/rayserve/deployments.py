"""The Ray Serve app: the same FastAPI app as ingress, job workers and the guard as deployments of their own.

- `ingress`: create_app(studio) without workers, behind Ray's HTTP proxy: every route submits to and reads from the
  shared job store, exactly as a `guardforge serve` without workers would.
- `generation`: each replica is a Studio whose one worker (one GPU, or the CPU) claims jobs from that store with a
  lease (jobs/queue.py), so a replica lost with its node loses its claims to the others when the lease runs out.
  Scaled on the queue's depth (autoscaling.py).
- `guard`: the guard's backends (models) loaded once per replica; ingress and generation score through it
  (guard/backends/ray_remote.py) and apply the policy and write the audit log themselves.
"""

from __future__ import annotations

import asyncio
import os
import threading

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from guardforge.guard.backends.ray_remote import GUARD_DEPLOYMENT
from guardforge.rayserve.autoscaling import QUEUED, RUNNING, queue_depth_policy
from guardforge.settings import Settings

INGRESS_DEPLOYMENT = "ingress"
WORKERS_DEPLOYMENT = "generation"
# Ray reserves a whole CPU per replica unless told otherwise: the ingress, the guard and one CPU generation replica
# would then not fit on a 2-core machine (the ingress was never placed). Half a CPU each by default;
# ray.*_actor_options override it.
SIDE_CPUS = {"num_cpus": 0.5}


def through_guard_deployment(settings: Settings) -> Settings:
    """The settings of an ingress or generation replica: the same, with the guard's scoring done remotely."""
    guard = settings.guard.model_copy(update={"text_backend": "ray", "image_backend": "ray"})
    return settings.model_copy(update={"guard": guard})


def worker_settings(settings: Settings) -> Settings:
    """A generation replica's settings: one worker, on the GPU Ray gave it (Ray sets CUDA_VISIBLE_DEVICES, so it
    is cuda:0 here) or on the CPU."""
    device = "cuda:0" if settings.ray.gpus_per_worker > 0 else "cpu"
    return through_guard_deployment(settings).model_copy(update={"devices": [device]})


@serve.deployment(name=GUARD_DEPLOYMENT)
class GuardScorer:
    """The guard's text and image backends, as the settings name them, loaded on first use."""

    def __init__(self, settings: Settings):
        from guardforge.guard.policy import load_policy

        self.settings = settings
        self.taxonomy = load_policy(settings.guard.policy).taxonomy
        self._backends: dict[str, object] = {}
        self._lock = threading.Lock()

    def _backend(self, modality: str):
        from guardforge.guard.registry import backend_info, build_backend

        guard = self.settings.guard
        with self._lock:
            if modality not in self._backends:
                name = guard.text_backend if modality == "text" else guard.image_backend
                other = guard.image_backend if modality == "text" else guard.text_backend
                if backend_info(name).shared and name == other and self._backends:  # one model for both
                    self._backends[modality] = next(iter(self._backends.values()))
                else:
                    self._backends[modality] = build_backend(name, modality, self.settings, self.taxonomy)
            return self._backends[modality]

    def describe(self, modality: str) -> tuple[str, list[str]]:
        backend = self._backend(modality)
        return getattr(backend, "name", type(backend).__name__), sorted(backend.categories)

    def score_texts(self, texts: list[str]):
        return self._backend("text").score_texts(texts)

    def score_images(self, images: list):
        return self._backend("image").score_images(images)


@serve.deployment(name=WORKERS_DEPLOYMENT)
class GenerationWorkers:
    """One job worker: claims from the shared store, runs, records, renews its lease (jobs/worker.py)."""

    def __init__(self, settings: Settings, guard=None):
        from guardforge.studio import Studio

        self.guard = guard  # bound so that the guard deployment is part of the app; scoring goes by name
        self.studio = Studio(worker_settings(settings))
        self.studio.start_workers()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        queued = await asyncio.to_thread(self.studio.queue_depth)
        return {QUEUED: queued, RUNNING: len(self.studio.worker_status()["running"])}

    def check_health(self) -> None:
        # A worker thread that ended runs nothing more: Ray replaces the replica.
        dead = self.studio.worker_status()["dead"]
        if dead:
            raise RuntimeError(f"job worker(s) {dead} stopped")

    def status(self) -> dict:
        """Where this replica runs and what its worker does: node, process (a job's claim names it), jobs."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                **self.studio.worker_status()}

    def __del__(self):
        # Ray's graceful stop (scale down, redeploy): the running job is put back in the queue, as at a server stop.
        studio = getattr(self, "studio", None)
        if studio is not None:
            studio.stop_workers()


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class Ingress:
    """The HTTP app of `guardforge serve`, built in the replica around its own Studio, without workers."""

    def __init__(self, settings: Settings, mount_ui: bool = True, guard=None, workers=None):
        from guardforge.studio import Studio

        self.deployments = (guard, workers)  # bound so that they are part of the app
        self.mount_ui = mount_ui
        self.studio = Studio(through_guard_deployment(settings))

    def __serve_build_asgi_app__(self):
        from guardforge.server.app import create_app

        return create_app(self.studio, start_workers=False, mount_ui=self.mount_ui)


def build_app(settings: Settings, mount_ui: bool = True):
    """The Ray Serve application for `settings` (ray.* sizes the deployments)."""
    ray_settings = settings.ray
    guard = GuardScorer.options(num_replicas=ray_settings.guard_replicas,
                                ray_actor_options={**SIDE_CPUS, **ray_settings.guard_actor_options}).bind(settings)
    autoscaling = AutoscalingConfig(
        min_replicas=ray_settings.min_workers, max_replicas=ray_settings.max_workers,
        target_ongoing_requests=ray_settings.jobs_per_worker,
        policy=AutoscalingPolicy(policy_function=queue_depth_policy))
    workers = GenerationWorkers.options(
        autoscaling_config=autoscaling,
        ray_actor_options={"num_gpus": ray_settings.gpus_per_worker, **ray_settings.worker_actor_options},
    ).bind(settings, guard)
    return Ingress.options(num_replicas=ray_settings.ingress_replicas,
                           ray_actor_options={**SIDE_CPUS, **ray_settings.ingress_actor_options}
                           ).bind(settings, mount_ui, guard, workers)


def app(args: dict):
    """An application builder for Ray's own tools (`serve run`, a Serve config file, a KubeRay RayService):
    `import_path: guardforge.rayserve.deployments:app`; settings from the GUARDFORGE_* environment variables
    (runtime_env.env_vars) or GUARDFORGE_CONFIG; `args: {ui: false}` leaves out the web UI."""
    ui = args.get("ui", True)
    # `serve run ... ui=false` passes the string "false", a config file's `ui: false` a bool.
    mount_ui = ui if isinstance(ui, bool) else str(ui).strip().lower() not in ("false", "0", "no", "off")
    return build_app(Settings(), mount_ui=mount_ui)

