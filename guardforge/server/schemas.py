"""HTTP payloads: A1111's /sdapi/v1 request and response shapes, and the native /v1 views."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from guardforge.engine.request import GenerationRequest
from guardforge.engine.samplers import split_legacy_sampler
from guardforge.errors import InvalidRequest
from guardforge.guard.moderation import CATEGORY_ORDER
from guardforge.jobs.results import GenerationJobResult, TrainingJobResult

# A1111 scheduler names (and labels) -> our schedule; the rest of A1111's list has no diffusers twin here.
SCHEDULES = {"automatic": "Automatic", "karras": "Karras", "exponential": "Exponential"}
SCHEDULERS_LISTED = [
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0, "need_inner_model": False},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
    {"name": "exponential", "label": "Exponential", "aliases": None, "default_rho": -1.0,
     "need_inner_model": False},
]

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


# -- A1111 -----------------------------------------------------------------------------------------
class Txt2ImgPayload(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI; fields guardforge does not use are accepted and reported."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients send the sampler here
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None  # None: guardforge's default (20)
    cfg_scale: float = 7.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False


class Img2ImgPayload(Txt2ImgPayload):
    """A1111's StableDiffusionImg2ImgProcessingAPI: init_images, optional mask (inpaint)."""

    init_images: list[str] = Field(..., min_length=1)
    mask: str | None = None  # "" is no mask, as A1111 reads it
    mask_blur: int = 4
    inpainting_mask_invert: int = 0
    include_init_images: bool = False

    @field_validator("init_images")
    @classmethod
    def _first_is_an_image(cls, value: list[str]) -> list[str]:
        if not value[0].strip():  # the one guardforge uses; A1111 would fail decoding it
            raise ValueError("init_images[0] is empty: send a base64 image (or a data: URL)")
        return value


def to_generation_request(payload: Txt2ImgPayload, default_model: str) -> tuple[GenerationRequest, list[str]]:
    """The GenerationRequest a payload asks for, and the names of the fields that had no effect."""
    ignored = sorted(k for k, v in (payload.model_extra or {}).items() if v not in (None, False, 0, "", [], {}))
    overrides = dict(payload.override_settings or {})
    model = overrides.pop("sd_model_checkpoint", None) or default_model
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", 1)
    ignored += [f"override_settings.{k}" for k in sorted(overrides)]
    schedule = "Automatic"
    if payload.scheduler:
        schedule = SCHEDULES.get(payload.scheduler.strip().lower())
        if schedule is None:
            raise InvalidRequest(f"unknown scheduler {payload.scheduler!r}; choose one of: "
                                 f"{', '.join(s['name'] for s in SCHEDULERS_LISTED)}")
    fields: dict[str, Any] = dict(
        prompt=payload.prompt, negative_prompt=payload.negative_prompt, seed=payload.seed,
        # The registry reads A1111 titles 'name [hash]' itself.
        model=str(model), schedule=schedule, batch_size=payload.batch_size,
        n_iter=payload.n_iter, cfg_scale=payload.cfg_scale, width=payload.width, height=payload.height,
        clip_skip=clip_skip,
    )
    sampler = payload.sampler_name or payload.sampler_index
    if sampler:
        # A1111 before 1.9 (and clients written for it) put the schedule in the name: "DPM++ 2M Karras".
        sampler, legacy_schedule = split_legacy_sampler(sampler)
        fields["sampler"] = sampler
        if legacy_schedule and not payload.scheduler:
            fields["schedule"] = legacy_schedule
    if payload.steps is not None:
        fields["steps"] = payload.steps
    if isinstance(payload, Img2ImgPayload):
        fields.update(init_image=payload.init_images[0], mask=payload.mask or None, mask_blur=payload.mask_blur,
                      inpainting_mask_invert=bool(payload.inpainting_mask_invert))
        if payload.denoising_strength is not None:
            fields["denoising_strength"] = payload.denoising_strength
        if len(payload.init_images) > 1:
            ignored.append("init_images[1:]")
    elif payload.denoising_strength is not None:
        ignored.append("denoising_strength")  # only hires fix uses it in txt2img
    return GenerationRequest(**fields), ignored


class ImageResponse(BaseModel):
    """A1111's answer: base64 PNGs, the parameters as received, and `info` as a JSON string."""

    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class PngInfoRequest(BaseModel):
    """A1111's PNGInfoRequest."""

    image: str = Field(..., description="The image as base64 (or a data URL): PNG, JPEG, WebP, ...")


class PngInfoResponse(BaseModel):
    """A1111's PNGInfoResponse."""

    info: str = Field(..., description="The infotext (generation parameters) as stored; empty if none")
    items: dict[str, Any] = Field(..., description="The image's other text fields")
    parameters: dict[str, Any] = Field(..., description="The infotext parsed as A1111 parses it (values are "
                                       "strings; Size becomes Size-1 and Size-2)")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(..., ge=0, le=1)
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class Lora(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = {}


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
    result: GenerationJobResult | TrainingJobResult | None = None  # by `kind`; set once the job succeeded
    images: list[JobImage] = []


class JobList(BaseModel):
    jobs: list[JobView]


class ModelView(BaseModel):
    name: str
    hash: str | None
    path: str


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
