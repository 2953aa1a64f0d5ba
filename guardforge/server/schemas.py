"""HTTP payloads: errors in our shape and OpenAI's, the native /v1 views, the moderation schema (A1111's shapes are
guardforge/a1111/schemas.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from guardforge.guard.moderation import CATEGORY_ORDER
from guardforge.jobs.results import GenerationJobResult, GridJobResult, TrainingJobResult

class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: a one-line reason and the error's kind."""

    error: str = Field(..., examples=["InvalidRequest"])
    detail: Any = Field(..., examples=["steps=500 is over this server's limit of 150"])


ERRORS = {
    400: {"model": ErrorResponse, "description": "The body is not JSON: not UTF-8, a syntax error, NaN/Infinity"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    403: {"model": ErrorResponse, "description": "The API key does not allow this (e.g. a priority over its max)"},
    404: {"model": ErrorResponse, "description": "No such model, job or image (for this key)"},
    410: {"model": ErrorResponse, "description": "The image's data was deleted (save_images=false, retention)"},
    413: {"model": ErrorResponse, "description": "Request body over the size limit"},
    415: {"model": ErrorResponse, "description": "The body was not sent as application/json"},
    422: {"model": ErrorResponse, "description": "A value breaks a limit or cannot work"},
    429: {"model": ErrorResponse, "description": "Queue full, rate limit or per-key job cap reached"},
}


def errors(*codes: int) -> dict[int, dict]:
    return {code: ERRORS[code] for code in codes}


class OpenAIError(BaseModel):
    message: str = Field(..., examples=["input has 40 items; this server takes at most 32 per call (...)"])
    type: str = Field(..., description="The error's kind, as `error` elsewhere", examples=["InvalidRequest"])
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """The OpenAI-compatible routes' errors: OpenAI's shape, whose `error.message` its clients show (they show
    nothing of a plain string), and `detail` as on every other route."""

    error: OpenAIError
    detail: Any


# Routes whose callers are OpenAI clients.
OPENAI_PATHS = frozenset({"/v1/moderations"})


def openai_errors(*codes: int) -> dict[int, dict]:
    return {code: {"model": OpenAIErrorResponse, "description": ERRORS[code]["description"]} for code in codes}


def route_path(scope: dict) -> str:
    """The path as the routes know it: behind a proxy's prefix (`--root-path`), what follows the prefix."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


def error_body(scope: dict, kind: str, detail: Any) -> dict[str, Any]:
    """The JSON of an error answer to the request of `scope`: {error, detail}, or OpenAI's shape (with detail)
    on its routes."""
    if route_path(scope) not in OPENAI_PATHS:
        return {"error": kind, "detail": detail}
    message = detail if isinstance(detail, str) else "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}" for item in detail)
    return {"error": {"message": message, "type": kind, "param": None, "code": None}, "detail": detail}


# -- native /v1 --------------------------------------------------------------------------------------
class JobCreated(BaseModel):
    id: str
    state: str
    position: int | None = None


class JobProgress(BaseModel):
    """Denoising steps of a generation; for a training job, the phase and its steps, with the losses."""

    step: int
    total: int
    eta: float | None
    # Training jobs only: screening, class_images, training, exporting, done; losses are per optimizer step.
    phase: str | None = None
    loss: float | None = None
    instance_loss: float | None = None
    prior_loss: float | None = None
    it_per_s: float | None = None
    message: str | None = None


class JobImage(BaseModel):
    id: str
    index: int
    action: str
    url: str | None  # None when the guard withheld the pixels


class JobView(BaseModel):
    id: str
    kind: str
    state: str
    priority: int
    position: int | None = None
    progress: JobProgress | None = None
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    request: dict[str, Any]
    result: GenerationJobResult | TrainingJobResult | GridJobResult | None = None  # by `kind`, once it succeeded
    images: list[JobImage] = []


class JobList(BaseModel):
    jobs: list[JobView]


class ModelView(BaseModel):
    name: str
    hash: str | None
    path: str
    # Every kind the registry scans is listed (checkpoints, LoRAs, VAEs, ControlNets, ...): this says which.
    kind: str
    family: str


class ModelList(BaseModel):
    models: list[ModelView]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = {}


class ModerationRequest(BaseModel):
    """OpenAI's moderation request: a string, a list of strings, or content parts (text, image_url)."""

    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None


def _per_category(name: str, kind, doc: str) -> type[BaseModel]:
    # OpenAI's category names ("self-harm/intent") are not identifiers: fields are named with "_" and carry the
    # real name as alias, which is what goes over the wire and into the OpenAPI schema.
    fields = {category.replace("/", "_").replace("-", "_"): (kind, Field(..., alias=category))
              for category in CATEGORY_ORDER}
    return create_model(name, __doc__=doc, __config__=ConfigDict(populate_by_name=True), **fields)


ModerationCategories = _per_category("ModerationCategories", bool, "Whether the input violates each category.")
ModerationCategoryScores = _per_category("ModerationCategoryScores", float, "Each category's score, 0..1.")
ModerationAppliedInputTypes = _per_category(
    "ModerationAppliedInputTypes", list[Literal["text", "image"]], "Which input types each category's score came from.")


class ModerationResult(BaseModel):
    """One input's moderation in OpenAI's schema, plus the guard's own Llama Guard hazard codes."""

    flagged: bool
    categories: ModerationCategories
    category_scores: ModerationCategoryScores
    category_applied_input_types: ModerationAppliedInputTypes
    s_codes: list[str] = Field(..., description="Violated hazard categories (S1..S14 and custom ones)")
    s_code_scores: dict[str, float] = Field(..., description="Score per hazard category")
    actions: list[str] = Field(..., description="The policy's action per part: allow, flag, blur, block")
    errors: list[str] = Field(..., description="Backend errors met while checking (the fail mode applied)")


class ModerationResponse(BaseModel):
    """OpenAI's moderation response."""

    id: str = Field(..., examples=["modr-5b1c..."])
    model: str
    results: list[ModerationResult]
