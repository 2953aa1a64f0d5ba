"""A1111 sampler and schedule-type names mapped onto diffusers schedulers, configured from the model's own config."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: the diffusers scheduler class that implements it and the config it needs."""

    name: str  # as A1111 spells it in its UI, API and infotext
    scheduler: str  # diffusers class name, imported lazily so that importing this module stays cheap
    config: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # A1111's old k-diffusion names, accepted on input
    # What A1111 >= 1.9 uses when the schedule type is "Automatic" (its samplers' default `scheduler` option).
    automatic: str = "Automatic"


# Order follows A1111's sampler list so that UIs built from it look familiar.
_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                ("k_dpmpp_2m",), automatic="Karras"),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("k_dpmpp_sde",), automatic="Karras"),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m_sde",),
                automatic="Exponential"),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "k_euler_ancestral")),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, ("k_heun",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",), automatic="Karras"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",), automatic="Karras"),
    SamplerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SamplerSpec("PNDM", "PNDMScheduler", {"skip_prk_steps": True}, ("plms", "PLMS")),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, ("uni_pc", "unipc")),
    SamplerSpec("LCM", "LCMScheduler", {}, ("lcm",)),
    SamplerSpec("DEIS", "DEISMultistepScheduler", {}, ("deis",)),
)

SAMPLERS: list[str] = [spec.name for spec in _SPECS]
SCHEDULE_FLAGS: dict[str, str] = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas"}


def _lookup_key(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def _name_table() -> dict[str, SamplerSpec]:
    table: dict[str, SamplerSpec] = {}
    for spec in _SPECS:
        for name in (spec.name, *spec.aliases):
            table[_lookup_key(name)] = spec
    return table


def sampler_spec(name: str) -> SamplerSpec | None:
    return _name_table().get(_lookup_key(name))


def canonical_sampler_name(name: str) -> str | None:
    """A1111's spelling of a sampler given any case or alias ("k_euler_a" -> "Euler a"); None if unknown."""
    spec = sampler_spec(name)
    return spec.name if spec else None


def split_legacy_sampler(name: str) -> tuple[str, str | None]:
    """A1111 < 1.9 wrote the schedule into the sampler name ("DPM++ 2M Karras"); split it off."""
    for schedule in SCHEDULE_FLAGS:
        suffix = f" {schedule}"
        if name.endswith(suffix) and canonical_sampler_name(name[: -len(suffix)]):
            return name[: -len(suffix)], schedule
    return name, None


def effective_schedule(sampler: str, schedule: str) -> str:
    """The schedule type in force: "Automatic" resolves to the sampler's A1111 default."""
    spec = sampler_spec(sampler)
    if spec is None:
        raise InvalidRequest(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    return spec.automatic if schedule == "Automatic" else schedule


@dataclass(frozen=True)
class CheckedSampler:
    """A sampler request diffusers can serve: its spec, scheduler class, that class's init parameters and the
    schedule in force."""

    spec: SamplerSpec
    scheduler_class: type
    init_parameters: Mapping[str, Any]
    schedule: str


# diffusers resolves its lazy attributes non-atomically: two threads asking for a scheduler class first at the
# same moment (two workers, two requests just after a start) got AttributeError. A lock, not state: it guards
# only that first lookup.
_DIFFUSERS_LOOKUP = threading.Lock()


def scheduler_class(name: str) -> type:
    """diffusers' scheduler class of that name, safe to ask for from several threads at once."""
    with _DIFFUSERS_LOOKUP:
        import diffusers

        return getattr(diffusers, name)


def check_sampler(sampler: str, schedule: str = "Automatic") -> CheckedSampler:
    """The checked sampler, or InvalidRequest when the name is unknown or diffusers has no such schedule for it."""
    spec = sampler_spec(sampler)
    if spec is None:
        raise InvalidRequest(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    cls = scheduler_class(spec.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    wanted = effective_schedule(sampler, schedule)
    if wanted != "Automatic" and SCHEDULE_FLAGS[wanted] not in accepted:
        raise InvalidRequest(
            f"sampler {spec.name!r} has no {wanted} schedule in diffusers; use schedule type Automatic, "
            f"or a sampler that has one (Euler, DPM++ 2M, DPM++ SDE, Heun, LMS, DPM2, UniPC, DEIS)")
    return CheckedSampler(spec, cls, accepted, wanted)


def build_scheduler(base_config: dict[str, Any], sampler: str, schedule: str = "Automatic",
                    seed: int | None = None) -> SchedulerMixin:
    """A scheduler for `sampler` built with from_config, so the model's betas and prediction type are kept.

    `seed` seeds the Brownian tree of DPM++ SDE, which draws its noise from one sampler-wide tree rather
    than from the per-image generators; without it that sampler would not be reproducible.
    """
    checked = check_sampler(sampler, schedule)
    spec, accepted, wanted = checked.spec, checked.init_parameters, checked.schedule
    overrides = dict(spec.config)
    # A config saved with Karras/exponential sigmas on must not leak into "Automatic" for another sampler.
    for flag in SCHEDULE_FLAGS.values():
        if flag in accepted:
            overrides[flag] = False
    if wanted != "Automatic":
        overrides[SCHEDULE_FLAGS[wanted]] = True
    if "noise_sampler_seed" in accepted and seed is not None:
        overrides["noise_sampler_seed"] = seed
    # Keys of another scheduler's config (e.g. PNDM's skip_prk_steps) are ignored by from_config.
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    return checked.scheduler_class.from_config({**config, **overrides})
