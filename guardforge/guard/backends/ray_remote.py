"""The guard deployment of a Ray Serve app as a backend: generation and moderation replicas score through it."""

from __future__ import annotations

from PIL import Image

from guardforge.errors import GuardBackendError
from guardforge.guard.backends.base import Scores

# The guard deployment's name in the app (guardforge/rayserve/deployments.py deploys it under this name).
GUARD_DEPLOYMENT = "guard"


class _RemoteBackend:
    """Calls the guard deployment through a DeploymentHandle. Its name and categories are the backend's that
    the deployment runs, so that verdicts, audit rows and /v1/moderations read as on one host."""

    modality = ""

    def __init__(self, app_name: str):
        try:
            from ray import serve

            self.handle = serve.get_deployment_handle(GUARD_DEPLOYMENT, app_name=app_name)
        except Exception as exc:  # not inside a Ray Serve app, or ray not installed
            raise GuardBackendError(f"the 'ray' guard backend runs only inside the Ray Serve app "
                                    f"(guardforge serve --ray): {type(exc).__name__}: {exc}") from exc
        self._described: tuple[str, frozenset[str]] | None = None

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.ray.app_name)

    def _describe(self) -> tuple[str, frozenset[str]]:
        if self._described is None:
            name, categories = self.handle.describe.remote(self.modality).result()
            self._described = (name, frozenset(categories))
        return self._described

    @property
    def name(self) -> str:
        return self._describe()[0]

    @property
    def categories(self) -> frozenset[str]:
        return self._describe()[1]


class RayTextBackend(_RemoteBackend):
    modality = "text"

    def score_texts(self, texts: list[str]) -> list[Scores]:
        return self.handle.score_texts.remote(list(texts)).result()


class RayImageBackend(_RemoteBackend):
    modality = "image"

    def score_images(self, images: list[Image.Image]) -> list[Scores]:
        return self.handle.score_images.remote(list(images)).result()
