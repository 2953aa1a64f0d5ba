"""Settings: GUARDFORGE_* environment variables and an optional YAML config file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

Offload = Literal["none", "model", "sequential", "auto"]
DType = Literal["auto", "fp32", "fp16", "bf16"]


def default_home() -> Path:
    return Path(os.environ.get("GUARDFORGE_HOME", Path.home() / ".guardforge"))


class MemorySettings(BaseModel):
    """How pipelines are placed in memory; every field can be overridden per request."""

    dtype: DType = "auto"
    offload: Offload = "none"
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    channels_last: bool = False


class Limits(BaseModel):
    """Caps that protect a shared server; the CLI uses the same ones."""

    max_width: int = Field(2048, ge=8)
    max_height: int = Field(2048, ge=8)
    max_steps: int = Field(150, ge=1)
    max_batch_size: int = Field(8, ge=1)
    max_n_iter: int = Field(16, ge=1)
    max_controlnet_units: int = Field(3, ge=0)  # A1111's default unit count (control_net_unit_count)
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    # An X/Y/Z plot: its cells (each one generation), and the pixels of its grid image (A1111's img_max_size_mp
    # is 200 megapixels; this is about a third of that, 200 MB of RGB).
    max_grid_cells: int = Field(100, ge=1)
    max_grid_pixels: int = Field(8192 * 8192, ge=64)
    # /v1/moderations: items in one call's `input` (strings or content parts), and characters in one text, the
    # same cap as a prompt's (GenerationRequest.prompt): anything that may be generated from can be moderated.
    max_moderation_inputs: int = Field(32, ge=1)
    max_moderation_chars: int = Field(20_000, ge=1)


class GuardSettings(BaseModel):
    text_backend: str = "embedded"
    image_backend: str = "embedded"
    # The embedded text guard's weights: "prompts" (default), "comments" (chat and comment moderation) or a
    # folder written by guardforge_build/train_text_guard.py.
    embedded_text_weights: str = "prompts"

    @field_validator("embedded_text_weights")
    @classmethod
    def _known_weight_set(cls, value: str) -> str:
        # A bare name must be a shipped set (a typo would otherwise block every check until noticed); a path
        # is looked at when the guard loads, since the folder may be written after the settings are read.
        from guardforge.guard.backends.embedded_weights import SHIPPED_TEXT_WEIGHTS

        if value not in SHIPPED_TEXT_WEIGHTS and "/" not in value and "\\" not in value:
            raise ValueError(f"{value!r} is not a shipped weight set ({', '.join(SHIPPED_TEXT_WEIGHTS)}) "
                             "nor a folder path")
        return value
    policy: str = "default"  # a shipped policy name or a path to a YAML file
    timeout_s: float = 30.0
    llama_guard_path: Path | None = None
    shieldgemma_path: Path | None = None
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_model: str = "meta-llama/llama-guard-4-12b"
    audit_store_content: bool = False
    # Read each text also with the people in it described neutrally and take that reading's scores for every
    # category but hate (S10): who a prompt depicts does not make it unsafe (guard/demographics.py).
    neutral_demographics: bool = True


class JobsSettings(BaseModel):
    """The persistent job queue."""

    max_queue: int = Field(100, ge=1)  # queued jobs beyond this are refused (HTTP 429)
    # A job that was running when the server died is failed with a reason unless this says re-queue it.
    requeue_running_on_restart: bool = False
    # Seconds a worker's claim on a running job holds without renewal (renewed every third of it). Servers
    # sharing one database take over a dead one's jobs this long after it died; a server restarted on the
    # same host takes over its own at once.
    lease_s: float = Field(30.0, ge=1)
    # Pixels of ended jobs (images kept in the database, init images and masks in payloads) are deleted this many
    # hours after the job ended; the job rows and their infotexts stay. None keeps them forever (files saved to
    # the outputs folder are never touched). A1111 calls with save_images=false keep nothing either way.
    retention_hours: float | None = Field(None, gt=0)
    # torch intra-op threads of each server worker on the CPU. None: the cores the server may use less one, which
    # is left to the HTTP server so that job status and progress answer while a generation runs, shared among
    # the CPU workers (at least 1).
    cpu_threads: int | None = Field(None, ge=1)
    # A queued generation's progress events carry a latent preview every this many steps (0: none). Each one is
    # screened by the output-image guard, so it costs a guard call as well as a small matrix product.
    preview_every_steps: int = Field(5, ge=0)
    # Seconds an idle worker waits before it looks in the store again. A job submitted through this server wakes
    # its workers at once; one submitted through another server sharing the store (Ray's ingress) waits up to this.
    claim_poll_s: float = Field(0.5, gt=0)
    # Seconds between reads of a job that another server runs, by a waiting A1111 call or an event stream here:
    # that server's end and progress reach this one's callers up to this late (docs/scale.md).
    remote_poll_s: float = Field(1.0, gt=0)


class TrainingSettings(BaseModel):
    """Training jobs submitted through the API: where their files may live, and how big they may be.

    A remote caller names folders, so they are confined: instance (and class) images are read from
    `data_dir` only, and each caller's run folders (checkpoints, logs, validation images) live under
    `runs_dir/<owner>`. Exports go to the models folder under a plain name. The CLI is not confined.
    """

    data_dir: Path | None = None  # default: <home>/training-data
    runs_dir: Path | None = None  # default: <home>/training-runs
    max_steps: int = Field(10_000, ge=1)
    max_resolution: int = Field(1024, ge=8)
    max_class_images: int = Field(1000, ge=0)


class StorageSettings(BaseModel):
    """Outputs beyond this machine's disk: any fsspec URL, and the options its filesystem takes."""

    # s3://bucket/prefix, gs://bucket/prefix, file:///mnt/shared/outputs; None: the local outputs_dir.
    outputs_url: str | None = None
    # DreamBooth run folders under training.runs_dir are copied here, at the same relative path, when a run ends
    # or is stopped; a resume on a node without the folder fetches its checkpoints back. Exports stay local.
    training_url: str | None = None
    # Keyword arguments of the fsspec filesystem of these URLs (s3fs: endpoint_url, client_kwargs, anon, ...).
    # Credentials are better left to the backend's own environment (AWS_ACCESS_KEY_ID, ...), which s3fs reads.
    options: dict[str, Any] = {}


class ServerSettings(BaseModel):
    """The HTTP server: where it listens, who may call it, and how much one caller may ask."""

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    require_auth: bool | None = None  # None: API keys required unless host is loopback
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    rate_per_minute: float = Field(120.0, gt=0)  # per API key, token bucket
    rate_burst: int = Field(30, ge=1)
    max_active_jobs_per_key: int = Field(8, ge=1)  # queued + running
    # Seconds an idle keep-alive connection stays open. Longer than the idle expiry of client pools (httpx 5 s,
    # aiohttp 15 s) so that the client closes first: when both are 5 s, a client reuses a connection just as
    # the server closes it and gets a connection reset (httpx ReadError) for a request the server never saw.
    keep_alive_s: int = Field(75, ge=1)
    # Seconds a stop waits for open connections (event streams, waiting A1111 calls) before closing them; the
    # running job's worker finishes its current image either way.
    graceful_shutdown_s: float = Field(10, ge=0)
    # A moderation call costs one token per this many characters of text or per this many inputs (text or
    # image parts), whichever is more: scoring is per text and per 40-word window of a long one.
    moderation_chars_per_token: int = Field(2000, ge=1)
    moderation_parts_per_token: int = Field(8, ge=1)
    # Moderation calls scored at once; the rest wait their turn without holding a thread. Uncapped, they took
    # every thread of the pool that status, image and auth reads share, and ran the guard's torch threads many
    # times over on the same cores.
    max_concurrent_moderations: int = Field(2, ge=1)
    # With keys required, /readyz and /metrics need a key too (/healthz never does); off, they stay open to
    # probes and scrapers. They show worker devices, queue depth and request counts per route.
    protect_ops: bool = False


class RaySettings(BaseModel):
    """`guardforge serve --ray`: the Ray Serve application (guardforge/rayserve/, docs/scale.md)."""

    address: str | None = None  # a running cluster ("auto", "ray://head:10001"); None: start a local Ray
    app_name: str = "guardforge"
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"
    # Each generation replica runs one job worker on one device: a whole GPU by default, the CPU when 0.
    gpus_per_worker: float = Field(1.0, ge=0)
    # Generation replicas, scaled between these on queue depth: (queued + running jobs) / jobs_per_worker.
    min_workers: int = Field(1, ge=1)
    max_workers: int = Field(1, ge=1)
    jobs_per_worker: float = Field(1.0, gt=0)
    ingress_replicas: int = Field(1, ge=1)
    guard_replicas: int = Field(1, ge=1)
    # Extra Ray actor options per deployment (num_cpus, memory, resources to pin it to a kind of node).
    worker_actor_options: dict = {}
    ingress_actor_options: dict = {}
    guard_actor_options: dict = {}

    @model_validator(mode="after")
    def _workers_range(self):
        if self.max_workers < self.min_workers:
            raise ValueError(f"ray.max_workers ({self.max_workers}) is below ray.min_workers ({self.min_workers})")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GUARDFORGE_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=default_home)
    models_dir: Path | None = None  # A1111 layout: Stable-diffusion/, Lora/, VAE/, ControlNet/
    outputs_dir: Path | None = None
    database_url: str | None = None  # SQLAlchemy URL; a SQLite file under home by default
    default_model: str = "tiny-shapes"
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps, xpu
    # The server's workers, one per entry (a device listed twice gets two workers, each with its own copy of
    # the model). None: `device`, where `auto` with several CUDA GPUs means one worker per visible GPU.
    devices: Annotated[list[str] | None, NoDecode] = None
    max_loaded_models: int = Field(2, ge=1)
    allow_pickle: bool = False
    output_format: Literal["png", "jpg", "webp"] = "png"
    memory: MemorySettings = MemorySettings()
    limits: Limits = Limits()
    guard: GuardSettings = GuardSettings()
    jobs: JobsSettings = JobsSettings()
    training: TrainingSettings = TrainingSettings()
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    ray: RaySettings = RaySettings()

    @field_validator("devices", mode="before")
    @classmethod
    def _split_devices(cls, value):
        # GUARDFORGE_DEVICES=cuda:0,cuda:1 is what people type in a shell; a JSON list would be a trap.
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if value is not None and not value:
            raise ValueError("devices must name at least one device (or be left unset)")
        return value

    @model_validator(mode="after")
    def _one_outputs_place(self):
        # Both set would leave the reader guessing which one gets the images (the CLI's --output, applied
        # after validation, does win over the URL).
        if self.outputs_dir is not None and self.storage.outputs_url:
            raise ValueError("set outputs_dir or storage.outputs_url, not both")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the config file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("GUARDFORGE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.home / "models"

    @property
    def resolved_outputs_dir(self) -> Path:
        return self.outputs_dir or self.home / "outputs"

    @property
    def resolved_outputs_location(self) -> Path | str:
        """The outputs folder, or the fsspec URL the outputs go to instead."""
        if self.outputs_dir is None and self.storage.outputs_url:
            return self.storage.outputs_url
        return self.resolved_outputs_dir

    @property
    def resolved_training_data_dir(self) -> Path:
        return self.training.data_dir or self.home / "training-data"

    @property
    def resolved_training_runs_dir(self) -> Path:
        return self.training.runs_dir or self.home / "training-runs"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'guardforge.db'}"
