"""The built-in X/Y/Z plot script: a grid over up to three axes, run by engine/xyz.py as the `grid` job runs it."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from guardforge.engine.xyz import AXES, SCRIPT_TITLE, GridAxes, GridRequest, fix_seeds, plan_grid, run_grid
from guardforge.errors import InvalidRequest
from guardforge.scripts.base import Generate, MadeImage, Script, ScriptRun

if TYPE_CHECKING:
    from guardforge.engine.request import GenerationRequest

SCRIPT_NAME = SCRIPT_TITLE.lower()  # A1111 matches a script by its title, lower-cased

# A1111's axis_options (scripts/xyz_grid.py, 1.10) in its order, with the tab each is shown in (None: both). The
# script's X/Y/Z type is an index into the list of those the tab shows, so an index means a label only here.
_A1111_AXES: tuple[tuple[str, str | None], ...] = (
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None),
    ("Sigma min", None), ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None),
    ("Schedule min sigma", None), ("Schedule max sigma", None), ("Schedule rho", None), ("Eta", None),
    ("Clip skip", None), ("Denoising", None), ("Initial noise multiplier", None), ("Extra noise", None),
    ("Hires upscaler", "txt2img"), ("Cond. Image Mask Weight", "img2img"), ("VAE", None), ("Styles", None),
    ("UniPC Order", None), ("Face restore", None), ("Token merging ratio", None),
    ("Token merging ratio high-res", None), ("Always discard next-to-last sigma", None),
    ("SGM noise multiplier", None), ("Refiner checkpoint", None), ("Refiner switch at", None),
    ("RNG source", None),
)
_SUPPORTED = MappingProxyType({axis.label.lower(): axis.name for axis in AXES})
# The trailing script_args after the three axes, with A1111's defaults: older versions send fewer.
_OPTIONS = (("draw_legend", True), ("include_lone_images", False), ("include_sub_grids", False),
            ("no_fixed_seeds", False), ("margin_size", 0), ("csv_mode", False), ("raw_mode", False))


def axis_labels(img2img: bool = False) -> list[str]:
    """The labels A1111's X/Y/Z types index in the txt2img (or img2img) tab."""
    tab = "img2img" if img2img else "txt2img"
    return [label for label, only in _A1111_AXES if only in (None, tab)]


def script_arg_infos(img2img: bool = False) -> list[dict[str, Any]]:
    """script-info's args for the X/Y/Z plot in script_args order (label, default, choices), as A1111 1.6+ lists
    them: three (type, values, dropdown) axes, then the options."""
    labels = axis_labels(img2img)
    infos: list[dict[str, Any]] = []
    for letter, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing")):
        infos += [{"label": f"{letter} type", "value": default, "choices": labels},
                  {"label": f"{letter} values", "value": ""},
                  {"label": f"{letter} values (dropdown)", "value": None}]
    for name, default in _OPTIONS:
        infos.append({"label": name.replace("_", " ").capitalize(), "value": default})
    return infos


def _axis_field(kind: Any, letter: str, img2img: bool) -> str:
    labels = axis_labels(img2img)
    if isinstance(kind, bool) or not isinstance(kind, (int, str)):
        raise InvalidRequest(f"X/Y/Z plot: the {letter} type must be an index into A1111's axis list or its "
                             f"label, not {kind!r}")
    if isinstance(kind, int):
        if not 0 <= kind < len(labels):
            raise InvalidRequest(f"X/Y/Z plot: {letter} type {kind} is not an axis (0 to {len(labels) - 1}: "
                                 f"{', '.join(f'{i} {label}' for i, label in enumerate(labels))})")
        label = labels[kind]
    else:
        label = kind.strip()
    name = _SUPPORTED.get(label.lower())
    if name is None:
        known = label.lower() in (known_label.lower() for known_label in labels)
        raise InvalidRequest(f"X/Y/Z plot: the {letter} axis {label!r} " + (
            "has no equivalent in guardforge" if known else "is not one of A1111's axes") +
            f"; these run here: {', '.join(axis.label for axis in AXES)}")
    return name


def args_from_script_args(script_args: list[Any] | None, img2img: bool = False) -> dict[str, Any]:
    """The X/Y/Z plot's args (GridAxes' fields) from A1111's script_args: [x_type, x_values, x_values_dropdown,
    y_type, ..., z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    margin_size, csv_mode, raw_mode] (A1111 1.6 and later; the options may be cut short, taking A1111's
    defaults), or A1111 1.0-1.5's [x_type, x_values, y_type, y_values, z_type, z_values, draw_legend, ...]
    without the dropdowns. A type is an index into A1111's axis list for the tab (axis_labels) or a label. A
    dropdown's list is used when it holds values, as A1111 does for axes with choices (samplers, checkpoints),
    else the text."""
    args = list(script_args or [])
    with_dropdowns = len(args) < 3 or isinstance(args[2], list) or args[2] is None
    width = 3 if with_dropdowns else 2
    if len(args) < width:
        raise InvalidRequest("X/Y/Z plot: script_args needs at least the X axis: [x_type, x_values, "
                             "x_values_dropdown, ...]")
    axes_args = args[:3 * width]
    options_args = args[3 * width:]
    if len(options_args) > len(_OPTIONS):
        raise InvalidRequest(f"X/Y/Z plot takes {3 * width + len(_OPTIONS)} script_args, not {len(args)}")
    options = {name: default for name, default in _OPTIONS}
    options.update(zip((name for name, _ in _OPTIONS), options_args))
    axes: dict[str, dict[str, Any] | None] = {}
    for position, letter in enumerate("xyz"):
        chunk = axes_args[position * width:(position + 1) * width]
        if not chunk:
            axes[letter] = None
            continue
        kind, text = chunk[0], chunk[1] if len(chunk) > 1 else ""
        dropdown = chunk[2] if len(chunk) > 2 else None
        name = _axis_field(kind, letter.upper(), img2img)
        if name == "nothing":
            axes[letter] = None
            continue
        if isinstance(dropdown, list) and dropdown and not options["csv_mode"]:
            values: str | list = [str(value) for value in dropdown]
        elif not isinstance(text, str):
            raise InvalidRequest(f"X/Y/Z plot: the {letter.upper()} values must be text, not {text!r}")
        elif options["raw_mode"] and "\n" in text.strip():
            values = text.strip().split("\n")
        else:
            values = text
        axes[letter] = {"field": name, "values": values}
    for name in ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds"):
        options[name] = bool(options[name])
    margin = options["margin_size"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise InvalidRequest(f"X/Y/Z plot: margin_size must be a number of pixels, not {margin!r}")
    return {**axes, "draw_legend": options["draw_legend"], "include_lone_images": options["include_lone_images"],
            "include_sub_grids": options["include_sub_grids"], "no_fixed_seeds": options["no_fixed_seeds"],
            "margin_size": int(margin)}


class XYZPlot(Script):
    """A1111's X/Y/Z plot through the scripts interface: `{"scripts": {"x/y/z plot": {"x": "cfg=1,7"}}}` on any
    request, `generate --script xyz_plot`. Its args are the grid's axes and options (GridAxes), named, or as
    A1111's positional script_args; it makes what the `grid` job makes from the same grid, the same pixels: the
    grid images (screened by the output guard as a made image), then every cell's generation."""

    title = SCRIPT_TITLE
    Args = GridAxes

    def parse_args(self, given, mode: str = "txt2img") -> GridAxes:
        # A list is A1111's script_args layout (what script-info lists), not the fields in declaration order.
        if isinstance(given, (list, tuple)):
            given = args_from_script_args(list(given), img2img=mode != "txt2img")
        return super().parse_args(given, mode)

    def arg_infos(self, mode: str) -> list[dict[str, Any]]:
        return script_arg_infos(img2img=mode != "txt2img")

    def planned(self, request: GenerationRequest, args: GridAxes) -> list[GenerationRequest]:
        return [cell.request for cell in plan_grid(GridRequest.of(request, args)).cells]

    def args_from_infotext(self, params: dict[str, str]) -> dict[str, Any] | None:
        """A grid's axes back from its infotext (`Script: X/Y/Z plot, X Type: ..., X Values: ...`), the seeds it
        drew where it wrote them (`Fixed X Values`): `generate --from-png grid.png` makes the grid again. The
        options are not in the infotext (nor in A1111's): they take their defaults."""
        if params.get("Script") != SCRIPT_TITLE:
            return None
        return {letter.lower(): {"field": params[f"{letter} Type"],
                                 "values": params.get(f"Fixed {letter} Values", params.get(f"{letter} Values", ""))}
                for letter in "XYZ" if f"{letter} Type" in params}

    # No `texts`: a legend label is either words a cell's prompt reads (Prompt S/R, Prompt order), screened with
    # that cell's prompt as the `grid` job screens it, or a value its field validated (a number, a sampler, a
    # checkpoint's name).

    def run(self, request: GenerationRequest, args: GridAxes, generate: Generate) -> ScriptRun:
        # Seeds of -1 drawn here, once for the grid: a queued request keeps its args as given.
        grid = fix_seeds(GridRequest.of(request, args))
        made = run_grid(grid, plan_grid(grid), generate, generate.made_size, generate.on_progress, generate.cancel,
                        generate.skip, generate.interrupt)
        return ScriptRun([cell.result for cell in made.cells if cell.result is not None],
                         [MadeImage(picture, made.infotext, grid=True) for picture in made.pictures])
