"""The X/Y/Z plot: axes over request fields, A1111's value and range syntax, and the cells' requests."""

from __future__ import annotations

import csv
import itertools
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import StringIO
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guardforge.engine.request import GeneratedImage, GenerationRequest, GenerationResult
from guardforge.engine.samplers import split_legacy_sampler
from guardforge.errors import InvalidRequest

SCRIPT_TITLE = "X/Y/Z plot"
# Ceilings no server setting can lift (settings.limits.max_grid_cells is the one a server sets, lower): a range
# such as `1-100000000` is refused before it is expanded, a grid before its cells' requests are built.
MAX_AXIS_VALUES = 1000
MAX_CELLS = 10_000
# A1111 draws its random seeds below this (scripts/xyz_grid.py's fix_axis_seeds).
_RANDOM_SEED_BELOW = 4294967294

# A1111's range syntax (scripts/xyz_grid.py): `1-5`, `1-10 (+2)` (a step) and `1-10 [5]` (a count). Its float
# patterns read any character as the decimal point (an unescaped `.`); here it is the point only.
_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
_RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")
_LORA_TAG = re.compile(r"<lora:([^>:]+)(?::[^>]*)?>", re.IGNORECASE)
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")


def csv_values(text: str) -> list[str]:
    """A1111's csv_string_to_list_strip: comma-separated, double quotes keep a comma inside one value (also after
    the space that follows a comma, where A1111 would keep the quotes as part of the value)."""
    rows = csv.reader(StringIO(text), skipinitialspace=True)
    return [value.strip() for value in itertools.chain.from_iterable(rows)]


def values_text(values: list[Any]) -> str:
    """A1111's list_to_csv_string: values as one CSV line, as the infotext's `X Values` records them."""
    with StringIO() as out:
        csv.writer(out).writerow(values)
        return out.getvalue().strip()


def _number(text: str, cast: type) -> int | float:
    return cast(text.replace(" ", ""))


def _capped(numbers: range, text: str) -> range:
    # range's len() overflows past sys.maxsize; its bounds do not.
    count = max(0, (numbers.stop - numbers.start + numbers.step - (1 if numbers.step > 0 else -1)) // numbers.step)
    if count > MAX_AXIS_VALUES:
        raise InvalidRequest(f"range {text.strip()!r} makes {count} values; an axis takes at most "
                             f"{MAX_AXIS_VALUES}")
    return numbers


def expand_ints(items: list[Any]) -> list[Any]:
    """Whole-number items with their ranges expanded: `1-5` is 1..5 (`5-1` 5..1, where A1111 makes nothing),
    `1-10 (+3)` is 1, 4, 7, 10 (the end is included when the steps land on it, going up or down), `1-10 [4]` is 4 numbers spread evenly (truncated, as A1111 does)."""
    out: list[Any] = []
    for item in items:
        text = str(item)
        step = _RANGE.fullmatch(text)
        count = _RANGE_COUNT.fullmatch(text)
        if step is not None:
            start, end = _number(step.group(1), int), _number(step.group(2), int)
            by = _number(step.group(3), int) if step.group(3) else (1 if end >= start else -1)
            if by == 0:
                raise InvalidRequest(f"range {text.strip()!r}: the step cannot be 0")
            # The end is included going down too (A1111's end + 1 drops it from `10-1 (-3)`).
            out += list(_capped(range(start, end + (1 if by > 0 else -1), by), text))
        elif count is not None:
            start, end = _number(count.group(1), int), _number(count.group(2), int)
            n = len(_capped(range(int(count.group(3))), text))
            out += [int(start + (end - start) * i / (n - 1)) if n > 1 else start for i in range(n)]
        else:
            out.append(item)
        if len(out) > MAX_AXIS_VALUES:
            raise InvalidRequest(f"{len(out)} values or more; an axis takes at most {MAX_AXIS_VALUES}")
    return out


def expand_floats(items: list[Any]) -> list[Any]:
    """Decimal items with their ranges expanded: `0.5-1.5 (+0.25)` is 0.5, 0.75, ... 1.5, `1-2 [3]` is 1, 1.5,
    2. The end is included when the steps land on it; float sums are rounded to 10 digits, so `0.1-0.3 (+0.1)`
    ends at 0.3, where A1111's numpy.arange may add a 0.4."""
    out: list[Any] = []
    for item in items:
        text = str(item)
        step = _RANGE_FLOAT.fullmatch(text)
        count = _RANGE_COUNT_FLOAT.fullmatch(text)
        if step is not None:
            start, end = _number(step.group(1), float), _number(step.group(2), float)
            by = _number(step.group(3), float) if step.group(3) else (1.0 if end >= start else -1.0)
            if by == 0:
                raise InvalidRequest(f"range {text.strip()!r}: the step cannot be 0")
            n = len(_capped(range(math.floor((end - start) / by + 1e-9) + 1), text))
            out += [round(start + i * by, 10) for i in range(n)]
        elif count is not None:
            start, end = _number(count.group(1), float), _number(count.group(2), float)
            n = len(_capped(range(int(float(count.group(3)))), text))
            out += [round(start + (end - start) * i / (n - 1), 10) if n > 1 else start for i in range(n)]
        else:
            out.append(item)
        if len(out) > MAX_AXIS_VALUES:
            raise InvalidRequest(f"{len(out)} values or more; an axis takes at most {MAX_AXIS_VALUES}")
    return out


# -- what each axis does to a request (a dict of its fields) -------------------------------------------------
Fields = dict[str, Any]


def _set(name: str) -> Callable[[Fields, Any, list], None]:
    def apply(fields: Fields, value: Any, values: list) -> None:
        fields[name] = value
    return apply


def _set_hires(name: str) -> Callable[[Fields, Any, list], None]:
    def apply(fields: Fields, value: Any, values: list) -> None:
        if not fields.get("hires"):
            raise InvalidRequest(f"an axis over hires fix's {name} needs hires fix on in the request")
        fields["hires"] = {**fields["hires"], name: value}
    return apply


def _sampler(fields: Fields, value: str, values: list) -> None:
    # A1111 before 1.9, whose script_args layout the A1111 adapter reads too, named samplers with their schedule
    # ("DPM++ 2M Karras"), as its txt2img's sampler_name does, which the adapter takes.
    sampler, schedule = split_legacy_sampler(value)
    fields["sampler"] = sampler
    if schedule is not None:
        fields["schedule"] = schedule


def _hires_sampler(fields: Fields, value: str, values: list) -> None:
    sampler, schedule = split_legacy_sampler(value)
    _set_hires("sampler")(fields, sampler, values)
    if schedule is not None:
        fields["hires"] = {**fields["hires"], "schedule": schedule}


def _prompt_sr(fields: Fields, value: str, values: list) -> None:
    """A1111's Prompt S/R: the first value is searched for and each value replaces it, in the prompt, the
    negative prompt and hires fix's own prompts (the first value leaves the texts as they are)."""
    search = values[0]
    if not search:
        raise InvalidRequest("Prompt S/R: the first value is the text searched for; it cannot be empty")
    hires = dict(fields.get("hires") or {})
    texts = [fields["prompt"], fields["negative_prompt"], hires.get("prompt") or "",
             hires.get("negative_prompt") or ""]
    if not any(search in text for text in texts):
        raise InvalidRequest(f"Prompt S/R did not find {search!r} in the prompt or the negative prompt")
    fields["prompt"] = fields["prompt"].replace(search, value)
    fields["negative_prompt"] = fields["negative_prompt"].replace(search, value)
    for key in ("prompt", "negative_prompt"):
        if hires.get(key):
            hires[key] = hires[key].replace(search, value)
    if fields.get("hires"):
        fields["hires"] = hires


def _prompt_order(fields: Fields, value: tuple, values: list) -> None:
    """A1111's Prompt order: the tokens, each found in the prompt, put back in this order."""
    prompt = fields["prompt"]
    found = sorted((prompt.find(token), token) for token in value)
    missing = [token for position, token in found if position < 0]
    if missing:
        raise InvalidRequest(f"Prompt order did not find {missing[0]!r} in the prompt")
    parts = []
    for _, token in found:
        at = prompt.find(token)
        parts.append(prompt[:at])
        prompt = prompt[at + len(token):]
    fields["prompt"] = "".join(part + token for part, token in zip(parts, value, strict=True)) + prompt


def _denoising(fields: Fields, value: float, values: list) -> None:
    # txt2img's denoising strength is hires fix's, as A1111's Denoising axis sets p.denoising_strength for both.
    if fields.get("init_image") is None and fields.get("hires"):
        fields["hires"] = {**fields["hires"], "denoising_strength": value}
    else:
        fields["denoising_strength"] = value


def _size(fields: Fields, value: str, values: list) -> None:
    match = _SIZE.fullmatch(value)
    if match is None:
        raise InvalidRequest(f"size {value!r}: give WIDTHxHEIGHT, e.g. 512x768")
    fields["width"], fields["height"] = int(match.group(1)), int(match.group(2))


def _lora_weight(fields: Fields, value: float, values: list) -> None:
    """Every `<lora:name:...>` tag of the prompt at this weight (text encoder and UNet alike)."""
    if not _LORA_TAG.search(fields["prompt"]):
        raise InvalidRequest("a LoRA weight axis needs a <lora:name> tag in the prompt")
    weight = f"{value:g}"
    fields["prompt"] = _LORA_TAG.sub(lambda m: f"<lora:{m.group(1)}:{weight}>", fields["prompt"])


def _refiner(fields: Fields, value: str, values: list) -> None:
    if value.strip().lower() in ("", "none"):
        fields["refiner"] = None
    else:
        fields["refiner"] = {**(fields.get("refiner") or {}), "checkpoint": value}


def _refiner_switch(fields: Fields, value: float, values: list) -> None:
    if not fields.get("refiner"):
        raise InvalidRequest("an axis over the refiner's switch point needs a refiner in the request")
    fields["refiner"] = {**fields["refiner"], "switch_at": value}


def _controlnet(name: str) -> Callable[[Fields, Any, list], None]:
    def apply(fields: Fields, value: Any, values: list) -> None:
        # Every unit, as sd-webui-controlnet's own axes do when one unit is on, the common case.
        if not fields.get("controlnet"):
            raise InvalidRequest(f"an axis over ControlNet's {name} needs a ControlNet unit in the request")
        fields["controlnet"] = [{**unit, name: value} for unit in fields["controlnet"]]
    return apply


def _nothing(fields: Fields, value: Any, values: list) -> None:
    pass


@dataclass(frozen=True)
class Axis:
    """One field an axis can run over: its name here, A1111's label, the type its values are read as
    (int, float, str, or "permutations" for Prompt order), what it does to a request, and `cost`, A1111's
    hint that changing it is slow (a model load), so that it changes least often."""

    name: str
    label: str
    type: Any
    apply: Callable[[Fields, Any, list], None]
    aliases: tuple[str, ...] = ()
    cost: float = 0.0
    seeds: bool = False  # -1 among its values is drawn once per grid

    def label_for(self, value: Any) -> str:
        """A1111's axis labels: `Label: value` for numbers and most fields, the bare value for prompts,
        samplers and models (format_value), nothing for Nothing."""
        if self.name == "nothing":
            return ""
        if isinstance(value, float):
            value = round(value, 8)
        if self.type == "permutations":
            return ", ".join(value)
        if self.name in ("prompt_sr", "sampler", "model"):
            return str(value)
        return f"{self.label}: {value}"


AXES: tuple[Axis, ...] = (
    Axis("nothing", "Nothing", str, _nothing, ("none",)),
    Axis("seed", "Seed", int, _set("seed"), seeds=True),
    Axis("subseed", "Var. seed", int, _set("subseed"), ("variation_seed",), seeds=True),
    Axis("subseed_strength", "Var. strength", float, _set("subseed_strength"), ("variation_strength",)),
    Axis("steps", "Steps", int, _set("steps")),
    Axis("hires_steps", "Hires steps", int, _set_hires("steps")),
    Axis("cfg_scale", "CFG Scale", float, _set("cfg_scale"), ("cfg",)),
    Axis("prompt_sr", "Prompt S/R", str, _prompt_sr, ("prompt", "sr", "s/r")),
    Axis("prompt_order", "Prompt order", "permutations", _prompt_order),
    Axis("sampler", "Sampler", str, _sampler, ("sampler_name",)),
    Axis("hires_sampler", "Hires sampler", str, _hires_sampler),
    Axis("model", "Checkpoint name", str, _set("model"), ("checkpoint", "sd_model_checkpoint"), cost=1.0),
    Axis("schedule", "Schedule type", str, _set("schedule"), ("scheduler",)),
    Axis("clip_skip", "Clip skip", int, _set("clip_skip")),
    Axis("denoising_strength", "Denoising", float, _denoising, ("denoising", "strength")),
    Axis("hires_upscaler", "Hires upscaler", str, _set_hires("upscaler")),
    Axis("vae", "VAE", str, _set("vae"), ("sd_vae",), cost=0.7),
    Axis("refiner", "Refiner checkpoint", str, _refiner, ("refiner_checkpoint",), cost=1.0),
    Axis("refiner_switch_at", "Refiner switch at", float, _refiner_switch),
    Axis("width", "Width", int, _set("width")),
    Axis("height", "Height", int, _set("height")),
    Axis("size", "Size", str, _size),
    Axis("lora_weight", "LoRA weight", float, _lora_weight),
    Axis("controlnet_weight", "[ControlNet] Weight", float, _controlnet("weight")),
    Axis("controlnet_guidance_start", "[ControlNet] Guidance Start", float, _controlnet("guidance_start")),
    Axis("controlnet_guidance_end", "[ControlNet] Guidance End", float, _controlnet("guidance_end")),
)


def _key(name: str) -> str:
    return re.sub(r"[\s_.\-]+", "_", name.strip().lower())


# Read-only: built once from AXES, every spelling of each axis.
_BY_NAME: Mapping[str, Axis] = MappingProxyType(
    {_key(spelling): axis for axis in AXES for spelling in (axis.name, axis.label, *axis.aliases)})


def axis_named(name: str) -> Axis:
    """The axis a name means: ours (`cfg_scale`), an alias (`cfg`) or A1111's label (`CFG Scale`), any case."""
    axis = _BY_NAME.get(_key(name))
    if axis is None:
        raise InvalidRequest(f"no X/Y/Z axis {name!r}; choose one of: {', '.join(a.name for a in AXES[1:])}")
    return axis


def parse_values(axis: Axis, values: str | list) -> list[Any]:
    """An axis's values as typed (A1111's CSV text, or a list), ranges expanded and each read as the axis's
    type. InvalidRequest names the value that does not read."""
    if axis.name == "nothing":
        return [None]
    items = csv_values(values) if isinstance(values, str) else list(values)
    if axis.type == "permutations":
        tokens = [str(item).strip() for item in items]
        if not tokens or "" in tokens:
            raise InvalidRequest(f"{axis.label}: give the tokens to reorder, none of them empty")
        if math.factorial(len(tokens)) > MAX_AXIS_VALUES:
            raise InvalidRequest(f"{axis.label}: {len(tokens)} tokens make {math.factorial(len(tokens))} orders; "
                                 f"an axis takes at most {MAX_AXIS_VALUES}")
        return list(itertools.permutations(tokens))
    try:
        if axis.type is int:
            items = expand_ints(items)
        elif axis.type is float:
            items = expand_floats(items)
    except OverflowError:  # a float of 400 digits is inf, and inf no count
        raise InvalidRequest(f"{axis.label}: a range's numbers are too large") from None
    if any(isinstance(item, float) and not math.isfinite(item) for item in items):
        raise InvalidRequest(f"{axis.label}: a range's numbers are too large")
    parsed = []
    for item in items:
        if axis.type is str:
            parsed.append(str(item).strip())
            continue
        try:
            number = axis.type(str(item).replace(" ", "")) if isinstance(item, str) else item
            # nan and inf read as floats; a JSON list may bring a bool or 2.5 where a whole number goes.
            if isinstance(number, bool) or not math.isfinite(number) or (axis.type is int and number != int(number)):
                raise ValueError
            parsed.append(axis.type(number))
        except (TypeError, ValueError, OverflowError):
            kind = "a whole number" if axis.type is int else "a number"
            raise InvalidRequest(f"{axis.label}: {item!r} is not {kind} nor a range (1-5, 1-10 (+2), "
                                 "1-10 [5])") from None
    if not parsed:
        raise InvalidRequest(f"{axis.label}: give at least one value")
    if len(parsed) > MAX_AXIS_VALUES:
        raise InvalidRequest(f"{axis.label}: {len(parsed)} values; an axis takes at most {MAX_AXIS_VALUES}")
    if any(value == "" for value in parsed) and axis.name not in ("prompt_sr", "refiner"):
        raise InvalidRequest(f"{axis.label}: an empty value (two commas in a row, or one at the end?)")
    return parsed


class GridAxis(BaseModel):
    """One axis: the field it runs over (see AXES: our name, an alias or A1111's label) and its values, as A1111
    takes them (`"1-10 (+3), 15"`, `"Euler a, DPM++ 2M"`) or as a list."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(..., max_length=100)
    values: str | list[str | int | float] = Field(..., max_length=10_000)

    @model_validator(mode="before")
    @classmethod
    def _field_equals_values(cls, given: Any) -> Any:
        # `"cfg=1,4,7"` as `guardforge grid --x` takes it: one text is all a --script-arg can give an axis.
        if isinstance(given, str):
            field, sep, values = given.partition("=")
            if not sep or not field.strip():
                raise ValueError(f"an axis as text is FIELD=VALUES (e.g. \"cfg=1,4,7\"), not {given!r}")
            return {"field": field.strip(), "values": values}
        return given

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        return axis_named(value).name

    @model_validator(mode="after")
    def _values_read(self) -> GridAxis:
        parse_values(axis_named(self.field), self.values)
        return self

    @property
    def axis(self) -> Axis:
        return axis_named(self.field)

    def parsed(self) -> list[Any]:
        return parse_values(self.axis, self.values)

    def text(self) -> str:
        """The values as the user gave them, for the infotext (A1111 records the text, not the expansion)."""
        return self.values if isinstance(self.values, str) else values_text(self.values)


class GridAxes(BaseModel):
    """An X/Y/Z plot without its base request: up to three axes and A1111's options (the X/Y/Z plot script's args,
    scripts/xyz_plot.py).

    `draw_legend` (labels along the axes), `include_lone_images` (A1111 answers carry the cells after the grid;
    the cells are saved and kept in the job regardless), `include_sub_grids` (one grid per Z value besides the
    whole), `no_fixed_seeds` (a seed of -1 stays random per cell instead of drawn once for the grid),
    `margin_size` (pixels between cells)."""

    model_config = ConfigDict(extra="forbid")

    x: GridAxis | None = Field(None, title="X axis (FIELD=VALUES)")
    y: GridAxis | None = Field(None, title="Y axis (FIELD=VALUES)")
    z: GridAxis | None = Field(None, title="Z axis (FIELD=VALUES)")
    draw_legend: bool = Field(True, title="Draw legend")
    include_lone_images: bool = Field(False, title="Include lone images")
    include_sub_grids: bool = Field(False, title="Include sub grids")
    no_fixed_seeds: bool = Field(False, title="Keep -1 for seeds")
    margin_size: int = Field(0, ge=0, le=500, title="Grid margins (px)")

    @model_validator(mode="after")
    def _an_axis(self) -> GridAxes:
        if all(axis is None or axis.field == "nothing" for axis in (self.x, self.y, self.z)):
            raise ValueError("give at least one axis (x, y or z) with a field and its values")
        return self

    def axes(self) -> list[GridAxis]:
        """X, Y and Z, an absent one as Nothing."""
        return [axis or GridAxis(field="nothing", values="") for axis in (self.x, self.y, self.z)]


class GridRequest(GridAxes):
    """An X/Y/Z plot: the base request, and up to three axes whose every combination is one generation (a cell)."""

    request: GenerationRequest

    @model_validator(mode="after")
    def _one_image_per_cell(self) -> GridRequest:
        if self.request.batch_size * self.request.n_iter != 1:
            raise ValueError("a grid cell is one image: set batch_size and n_iter to 1 (each combination of the "
                             "axes is one generation)")
        return self

    @model_validator(mode="after")
    def _cells_are_requests(self) -> GridRequest:
        # Every cell's request is built once here, so a value the field cannot take (an unknown sampler, a
        # CFG of 500) is refused at the edge with the axis and value named.
        plan_grid(self)
        return self

    @classmethod
    def of(cls, request: GenerationRequest, axes: GridAxes) -> GridRequest:
        """The grid of `axes` over `request`; InvalidRequest (the reason, as the edge's 422 says it) where a cell
        cannot be a request."""
        try:
            return cls.model_validate({**dict(axes), "request": request})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InvalidRequest(f"X/Y/Z plot: {where + ': ' if where else ''}"
                                 f"{error['msg'].removeprefix('Value error, ')}") from None


@dataclass
class Cell:
    """One combination: its place on the axes and in the grid (X fastest, then Y, then Z, as A1111 numbers
    cells), and the request it stands for."""

    ix: int
    iy: int
    iz: int
    index: int
    request: GenerationRequest


@dataclass
class GridPlan:
    """The grid's axes read: each axis's values and labels, and the cells in the order they run."""

    axes: list[Axis]
    values: list[list[Any]]
    labels: list[list[str]]
    cells: list[Cell]  # in grid order (X fastest, then Y, then Z)
    order: list[int]  # indexes into cells, in the order they run (the costliest axis changes least often)

    @property
    def shape(self) -> tuple[int, int, int]:
        nx, ny, nz = (len(values) for values in self.values)
        return nx, ny, nz


def _cell_request(base: Fields, axes: list[Axis], values: list[list[Any]], picks: tuple[Any, ...]):
    fields = {**base}
    for axis, pick, all_values in zip(axes, picks, values, strict=True):
        axis.apply(fields, pick, all_values)
    try:
        return GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        named = ", ".join(f"{axis.label} = {pick!r}" for axis, pick in zip(axes, picks, strict=True)
                          if axis.name != "nothing")
        message = error["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"the cell {named}: {where}: {message}") from None


def run_order(axes: list[Axis]) -> tuple[int, int, int]:
    """The axes from the one that changes least often to the one that changes most, as A1111 orders them: Z,
    Y, X unless one axis costs more (a checkpoint, a VAE), which then goes outermost."""
    x, y, z = (axis.cost for axis in axes)
    if x > y and x > z:
        return (0, 1, 2) if y > z else (0, 2, 1)
    if y > x and y > z:
        return (1, 0, 2) if x > z else (1, 2, 0)
    if z > x and z > y:
        return (2, 0, 1) if x > y else (2, 1, 0)
    return 2, 1, 0


def plan_grid(grid: GridRequest) -> GridPlan:
    """Read the axes and build every cell's request (InvalidRequest for a value a cell cannot take)."""
    axes_given = grid.axes()
    axes = [given.axis for given in axes_given]
    values = [given.parsed() for given in axes_given]
    named = [axis.name for axis in axes if axis.name != "nothing"]
    repeated = {name for name in named if named.count(name) > 1}
    if repeated:
        raise InvalidRequest(f"the axis {sorted(repeated)[0]!r} is given twice: one field per axis")
    count = math.prod(len(axis_values) for axis_values in values)
    if count > MAX_CELLS:
        raise InvalidRequest(f"the grid has {count} cells; at most {MAX_CELLS}")
    labels = [[axis.label_for(value) for value in axis_values] for axis, axis_values in zip(axes, values)]
    base = grid.request.model_dump()
    nx, ny, nz = (len(v) for v in values)
    cells = []
    for iz, iy, ix in itertools.product(range(nz), range(ny), range(nx)):
        picks = (values[0][ix], values[1][iy], values[2][iz])
        cells.append(Cell(ix, iy, iz, len(cells), _cell_request(base, axes, values, picks)))
    outer, middle, inner = run_order(axes)
    sizes = (nx, ny, nz)
    order = []
    for a, b, c in itertools.product(range(sizes[outer]), range(sizes[middle]), range(sizes[inner])):
        place = [0, 0, 0]
        place[outer], place[middle], place[inner] = a, b, c
        order.append(place[0] + place[1] * nx + place[2] * nx * ny)
    return GridPlan(axes, values, labels, cells, order)


def fix_seeds(grid: GridRequest) -> GridRequest:
    """A1111's fix_seed for a grid: a seed or variation seed of -1, in the request or among a seed axis's values,
    drawn once here so that every cell shares it (unless no_fixed_seeds). Applied at submit, so the queued job
    holds the seeds it runs with."""
    if grid.no_fixed_seeds:
        return grid
    update: dict[str, Any] = {}
    request = grid.request
    if request.seed == -1 or request.subseed == -1:
        update["request"] = request.model_copy(update={
            "seed": request.seed if request.seed != -1 else secrets.randbelow(_RANDOM_SEED_BELOW),
            "subseed": request.subseed if request.subseed != -1 else secrets.randbelow(_RANDOM_SEED_BELOW)})
    for name in ("x", "y", "z"):
        given: GridAxis | None = getattr(grid, name)
        if given is not None and given.axis.seeds:
            values = given.parsed()
            if -1 in values:
                fixed = [secrets.randbelow(_RANDOM_SEED_BELOW) if value == -1 else value for value in values]
                update[name] = GridAxis(field=given.field, values=[str(value) for value in fixed])
    return grid.model_copy(update=update) if update else grid


def planned_steps(request: GenerationRequest) -> int:
    """Denoising steps a request will run, for a grid's progress over all its cells: img2img's are cut by the
    strength, hires fix adds its second pass's."""
    steps = request.steps if request.mode == "txt2img" else max(1, int(request.steps * request.denoising_strength))
    if request.hires is not None:
        second = request.hires.steps or request.steps
        steps += max(1, int(second * request.hires.denoising_strength))
    return steps * request.n_iter


def grid_infotext(cell_infotext: str | None, grid: GridRequest, plan: GridPlan) -> str:
    """The grid's infotext: its first cell's (A1111 writes the cell at X, Y, Z = 0), with the script and its axes
    added to the parameters line, as A1111's `Script: X/Y/Z plot, X Type: ..., X Values: ...`."""
    from guardforge.engine.infotext import quote

    extra = {"Script": SCRIPT_TITLE}
    for letter, given, axis, values in zip("XYZ", grid.axes(), plan.axes, plan.values, strict=True):
        if axis.name == "nothing":
            continue
        extra[f"{letter} Type"] = axis.label
        extra[f"{letter} Values"] = given.text()
        if axis.seeds and not grid.no_fixed_seeds:
            extra[f"Fixed {letter} Values"] = ", ".join(str(value) for value in values)
    line = ", ".join(f"{key}: {quote(value)}" for key, value in extra.items())
    if not cell_infotext:
        return line
    return f"{cell_infotext}, {line}"


class GridCellResult(BaseModel):
    """A cell as it came out: its place and labels, and the generation (None: the grid was interrupted first)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    ix: int
    iy: int
    iz: int
    labels: list[str]
    result: GenerationResult | None = None

    @property
    def image(self) -> GeneratedImage | None:
        return self.result.images[0] if self.result is not None and self.result.images else None

    @property
    def blocked(self) -> bool:
        """Blocked by the guard: its prompt (nothing ran) or its image (withheld)."""
        if self.result is None:
            return False
        return self.result.blocked or any(image.action == "block" for image in self.result.images)


class GridResult(BaseModel):
    """A finished grid: the grid images (the whole first, then one per Z value with include_sub_grids), each
    with the grid infotext, and every cell in grid order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    grid: GridRequest
    grids: list[GeneratedImage]
    cells: list[GridCellResult]
    labels: list[list[str]]  # per axis X, Y, Z
    elapsed_s: float
    interrupted: bool = False
    device: str | None = None


def run_cells(plan: GridPlan, generate: Callable[..., GenerationResult], on_progress=None, cancel=None,
              skip=None, interrupt=None) -> list[GridCellResult]:
    """Each cell through `generate` (Studio.generate: the guard screens each cell's texts and image as any
    request's), in run order, with one progress over all cells. `cancel` stops between two steps of any cell
    (Cancelled, nothing delivered); `interrupt` ends the current cell early, as A1111's does, and runs no more
    (the cells not run stay None); `skip` ends the current cell early and goes on."""
    import time

    from guardforge.engine.request import ProgressEvent
    from guardforge.errors import Cancelled

    planned = [planned_steps(cell.request) for cell in plan.cells]
    total = sum(planned)
    results = [GridCellResult(ix=cell.ix, iy=cell.iy, iz=cell.iz,
                              labels=[plan.labels[0][cell.ix], plan.labels[1][cell.iy], plan.labels[2][cell.iz]])
               for cell in plan.cells]
    started = time.perf_counter()
    done = 0
    for position, index in enumerate(plan.order):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled after {position} of {len(plan.cells)} cells")
        if interrupt is not None and interrupt.is_set():
            break

        def progress(event, offset: int = done, size: int = planned[index], position: int = position) -> None:
            # A cell's own total may differ from the plan (diffusers' timesteps): scaled into its planned share.
            step = offset + min(size, round(event.step * size / max(event.total, 1)))
            rate = step / max(time.perf_counter() - started, 1e-9)
            on_progress(ProgressEvent(step=step, total=total, it_per_s=rate, eta_s=(total - step) / max(rate, 1e-9),
                                      batch_index=position))

        results[index].result = generate(plan.cells[index].request, on_progress=progress if on_progress else None,
                                         cancel=cancel, skip=skip, interrupt=interrupt)
        done += planned[index]
    return results


def render_grids(grid: GridRequest, plan: GridPlan, pictures: list[Any]) -> list[Any]:
    """The grid images from the cells' pictures (grid order; None: not made): the whole (Z's sub-grids side by
    side under their labels), then each sub-grid when include_sub_grids asks and Z has more than one value."""
    from guardforge.engine.grid_image import draw_grid, side_by_side

    nx, ny, nz = plan.shape
    made = [picture for picture in pictures if picture is not None]
    size = (max((p.width for p in made), default=64), max((p.height for p in made), default=64))
    per_grid = nx * ny
    subgrids = [draw_grid(pictures[iz * per_grid:(iz + 1) * per_grid], nx, ny, plan.labels[0], plan.labels[1],
                          margin=grid.margin_size, legend=grid.draw_legend, cell_size=size) for iz in range(nz)]
    whole = side_by_side(subgrids, plan.labels[2], legend=grid.draw_legend)
    return [whole] + (subgrids if grid.include_sub_grids and nz > 1 else [])


def cell_picture(result: GenerationResult | None, made_size: Callable[[GenerationRequest], tuple[int, int]]):
    """What a cell shows: its image as delivered, the withheld tile (at the size `made_size` says the request
    makes) where the guard blocked its prompt or image, None where it never ran (an interrupted grid)."""
    from guardforge.guard.blur import withheld_tile

    if result is None:
        return None
    if not result.images:
        return withheld_tile(*made_size(result.request)) if result.blocked else None
    image = result.images[0]
    return image.pil if image.pil is not None else withheld_tile(image.width, image.height)


@dataclass
class GridRun:
    """A grid as it came out: every cell (grid order), the grid images (render_grids) and their infotext."""

    cells: list[GridCellResult]
    pictures: list[Any]
    infotext: str


def run_grid(grid: GridRequest, plan: GridPlan, generate: Callable[..., GenerationResult],
             made_size: Callable[[GenerationRequest], tuple[int, int]], on_progress=None, cancel=None, skip=None,
             interrupt=None) -> GridRun:
    """The cells through `generate` (run_cells), then the grid images of what they delivered with the grid's
    infotext: what the `grid` job (Studio.generate_grid) and the X/Y/Z plot script (scripts/xyz_plot.py) both
    run, so that the two make the same pixels."""
    cells = run_cells(plan, generate, on_progress, cancel, skip, interrupt)
    pictures = [cell_picture(cell.result, made_size) for cell in cells]
    first = next((cell.image.infotext for cell in cells if cell.image is not None), None)
    return GridRun(cells, render_grids(grid, plan, pictures), grid_infotext(first, grid, plan))
