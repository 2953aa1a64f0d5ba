"""What a form starts from for a model: its native size (from its configs) and its family's usual sampler, steps
and CFG scale, as the people who made those families publish them."""

from __future__ import annotations

from pydantic import BaseModel

# family -> (sampler, steps, cfg_scale). SD 1.x/2.x: A1111's own defaults; SDXL: Stability's DPM++ 2M at ~30
# steps; SD3 and Flux: their model cards' step counts and guidance (no sampler: those run on flow-matching
# schedulers, whatever A1111 name the form holds).
RECOMMENDED: dict[str, tuple[str | None, int, float]] = {
    "sd1": ("Euler a", 20, 7.0),
    "sd2": ("Euler a", 20, 7.0),
    "sdxl": ("DPM++ 2M", 30, 7.0),
    "sd3": (None, 28, 7.0),
    "flux": (None, 28, 3.5),
}


class ModelDefaults(BaseModel):
    """A model's starting form; None: the model does not say, keep what the form has."""

    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None


def defaults_for(family: str, size: tuple[int, int] | None) -> ModelDefaults:
    sampler, steps, cfg = RECOMMENDED.get(family, (None, None, None))
    width, height = size or (None, None)
    return ModelDefaults(width=width, height=height, sampler=sampler, steps=steps, cfg_scale=cfg)
