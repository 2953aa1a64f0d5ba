"""Backend names -> classes, imported only when a guard needs them (their models are heavy)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass

from guardforge.errors import GuardforgeError
from guardforge.guard.taxonomy import Taxonomy


@dataclass(frozen=True)
class BackendInfo:
    name: str
    modalities: tuple[str, ...]  # "text", "image"
    covers: str  # what it scores, in words, for `guardforge guard backends`
    module: str
    text_class: str | None
    image_class: str | None
    shared: bool  # one object serves text and images (one model loaded once)


BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo("embedded", ("text", "image"),
                "text: S1-S13 (MiniLM + trained head); image: S12 sexual content ONLY (Open-NSFW)",
                "guardforge.guard.backends.embedded_text", "EmbeddedTextBackend", "EmbeddedImageBackend", False),
    BackendInfo("llama-guard", ("text", "image"),
                "S1-S14 + custom categories (Llama Guard 4 12B; 3 1B/8B text only; 3 11B-Vision)",
                "guardforge.guard.backends.llama_guard", "LlamaGuardBackend", "LlamaGuardBackend", True),
    BackendInfo("openai-compatible", ("text", "image"),
                "S1-S14 + custom, from a Llama Guard served over HTTP (vLLM, OpenRouter, Ollama)",
                "guardforge.guard.backends.openai_compat", "OpenAICompatBackend", "OpenAICompatBackend", True),
    BackendInfo("shieldgemma2", ("image",),
                "images: S12 sexually explicit, S9 dangerous content, S1 violence (ShieldGemma 2)",
                "guardforge.guard.backends.shieldgemma", None, "ShieldGemma2Backend", False),
    BackendInfo("ray", ("text", "image"),
                "whatever the guard deployment of the Ray Serve app runs (guardforge serve --ray sets this itself)",
                "guardforge.guard.backends.ray_remote", "RayTextBackend", "RayImageBackend", False),
)


def backend_info(name: str) -> BackendInfo:
    for info in BACKENDS:
        if info.name == name:
            return info
    raise GuardforgeError(f"unknown guard backend {name!r}; known: {', '.join(i.name for i in BACKENDS)}")


def _module_file(info: BackendInfo) -> bool:
    return importlib.util.find_spec(info.module) is not None


def availability(info: BackendInfo, settings) -> str:
    """A short, honest answer to 'would this backend load here?' without loading anything."""
    guard = settings.guard
    if not _module_file(info):
        return "not installed"
    if info.name == "ray":
        return "inside a Ray Serve app only (guardforge serve --ray)"
    if info.name == "llama-guard":
        if guard.llama_guard_path is None:
            return "needs guard.llama_guard_path"
        return "ready" if guard.llama_guard_path.is_dir() else f"missing folder {guard.llama_guard_path}"
    if info.name == "shieldgemma2":
        if guard.shieldgemma_path is None:
            return "needs guard.shieldgemma_path"
        return "ready" if guard.shieldgemma_path.is_dir() else f"missing folder {guard.shieldgemma_path}"
    if info.name == "openai-compatible":
        from guardforge.guard.backends.openai_compat import resolve_endpoint

        base_url, _ = resolve_endpoint(guard)
        return f"server {base_url}" if base_url else "needs guard.openai_base_url or OPENAI_BASE_URL"
    if info.name == "embedded" and guard.text_backend == "embedded":
        from guardforge.guard.backends.embedded_weights import text_weights_dir

        try:
            text_weights_dir(guard.embedded_text_weights)
        except FileNotFoundError:
            return f"missing text weights {guard.embedded_text_weights}"
        return f"ready (text weights: {guard.embedded_text_weights})"
    return "ready"


def as_prompt_reader(backend, settings):
    """The text backend as the guard reads prompts with it: through the demographic-neutral reading unless
    guard.neutral_demographics is off (guard/demographics.py). The guard and `eval guard` both use this."""
    if not settings.guard.neutral_demographics:
        return backend
    from guardforge.guard.demographics import DemographicNeutral

    return DemographicNeutral(backend)


def build_backend(name: str, modality: str, settings, taxonomy: Taxonomy):
    """Construct the backend `name` for `modality` ("text" or "image"); models load here, not at import."""
    info = backend_info(name)
    if modality not in info.modalities:
        raise GuardforgeError(f"guard backend {name!r} cannot check {modality}; it checks {', '.join(info.modalities)}")
    class_name = info.text_class if modality == "text" else info.image_class
    try:
        module = importlib.import_module(info.module)
    except ImportError as exc:
        raise GuardforgeError(f"guard backend {name!r} is not available: {exc}") from exc
    cls = getattr(module, class_name)
    if hasattr(cls, "from_settings"):
        # Backends with a prompt (Llama Guard) take the policy's taxonomy; fixed-head ones do not.
        if "taxonomy" in inspect.signature(cls.from_settings).parameters:
            return cls.from_settings(settings, taxonomy=taxonomy)
        return cls.from_settings(settings)
    return cls()
