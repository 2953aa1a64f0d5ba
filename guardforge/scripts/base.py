"""The Script base class a plugin subclasses: its arguments (a pydantic model) and its hooks into a generation."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from guardforge.errors import InvalidRequest

if TYPE_CHECKING:  # a plugin that adds no route need not import FastAPI
    from threading import Event

    from fastapi import APIRouter
    from PIL.Image import Image

    from guardforge.engine.request import GenerationRequest, GenerationResult

class NoArgs(BaseModel):
    """The arguments of a script that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class MadeImage:
    """An image a selectable script's `run` made itself (a grid, a strip): screened and stored by the Studio as
    any output is, with this infotext."""

    image: Image
    infotext: str
    grid: bool = False  # filed with the grids (txt2img-grids, ...), as A1111 files a script's grid


@dataclass
class Generate:
    """What a selectable script's `run` gets as `generate`: `generate(request)` is one whole guarded generation
    (always-on scripts included). It carries the run's progress callback and signals, which each call passes on
    unless given others (a script that reports one progress over all its generations passes its own
    `on_progress`), and `made_size(request)`, the size a request's image comes out at, known without running it
    (for a slot whose generation the guard blocked)."""

    generate: Callable[..., GenerationResult]
    made_size: Callable[[GenerationRequest], tuple[int, int]]
    on_progress: Callable[..., None] | None = None
    cancel: Event | None = None
    skip: Event | None = None
    interrupt: Event | None = None

    def __call__(self, request: GenerationRequest, **signals: Any) -> GenerationResult:
        unknown = set(signals) - {"on_progress", "cancel", "skip", "interrupt"}
        if unknown:
            raise TypeError(f"generate takes a request and on_progress, cancel, skip, interrupt; not {sorted(unknown)}")
        return self.generate(request, **{"on_progress": self.on_progress, "cancel": self.cancel, "skip": self.skip,
                                         "interrupt": self.interrupt, **signals})


@dataclass
class ScriptRun:
    """What a selectable script's `run` hands back: the generations it asked for (each already screened, as
    `generate` returned them) and the images it made from them (screened after it returns)."""

    results: list[GenerationResult] = field(default_factory=list)
    made: list[MadeImage] = field(default_factory=list)


class Script:
    """A guardforge script (A1111's scripts and extensions, as a plugin).

    A package declares it under the `guardforge.scripts` entry-point group; the entry point's name is the
    script's name (how requests, routes and /sdapi/v1 name it). Subclass and override what the script does:

    - `title`: what A1111 clients see (/sdapi/v1/scripts lists it lower-cased, as A1111 does; a request may name
      the script by it too);
    - `alwayson`: True runs it on every request of its `modes` (with its default args unless the request gives
      some), as A1111's always-on scripts; False makes it selectable, one per request, by name;
    - `Args`: a pydantic model of its arguments; A1111's positional `args` lists fill its fields in declaration
      order. A field's `title` is its label, `ge`/`le` its minimum/maximum, a Literal its choices,
      `json_schema_extra={"step": ...}` its step, as /sdapi/v1/script-info shows them;
    - hooks, each given the args parsed: `active`, `alter_request`, `texts`, `process_images`, `infotext`,
      `args_from_infotext`, `run`, `router`.

    Scripts are instantiated once per Studio (no arguments) and called from several worker threads: keep no
    per-request state on `self`.
    """

    title: ClassVar[str] = ""
    alwayson: ClassVar[bool] = False
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img"})
    Args: ClassVar[type[BaseModel]] = NoArgs

    name: str = ""  # set by the registry: the entry point's name

    def active(self, args: BaseModel) -> bool:
        """Whether these args make the script do anything (an always-on script's `enabled`, say). An inactive
        script runs no hook and writes nothing in the infotext."""
        return True

    def alter_request(self, request: GenerationRequest, args: BaseModel) -> GenerationRequest:
        """The request to generate instead (return `request.model_copy(update=...)`). Runs before the guard reads
        the prompts: what a script writes into a prompt is screened as typed text is."""
        return request

    def texts(self, args: BaseModel) -> list[str]:
        """Text the script writes into the images (a watermark's): the guard screens it as it screens a prompt,
        before anything is generated."""
        return []

    def process_images(self, images: list[Image], request: GenerationRequest, args: BaseModel) -> list[Image]:
        """The images to deliver instead, one per image made, before the output guard screens them."""
        return images

    def infotext(self, args: BaseModel) -> dict[str, Any]:
        """Parameters to add to each image's infotext (`key: value`), saying what the script did."""
        return {}

    def args_from_infotext(self, params: dict[str, str]) -> dict[str, Any] | None:
        """The args an image was made with, read back from its infotext (`params` as parse_infotext gives them,
        values as strings), or None where the script did not run for it: `generate --from-png` runs it again."""
        return None

    # A selectable script may replace one generation with several: `generate` (a Generate) runs one request
    # through the whole Studio path (guard, engine, always-on scripts, output guard, store) and returns its result.
    run: Callable[..., ScriptRun] | None = None
    # def run(self, request, args, generate: Generate) -> ScriptRun

    def planned(self, request: GenerationRequest, args: BaseModel) -> list[GenerationRequest] | None:
        """The requests a `run` will generate, where known before it runs (None: not known). The Studio checks
        them at submit as it checks a request (a model that is not there fails at the door, not in a worker) and
        holds them to the limits of a grid's cells (limits.max_grid_cells, max_grid_pixels)."""
        return None

    def router(self) -> APIRouter | None:
        """Routes of the script's own, served under /v1/scripts/{name}/ behind the server's authentication."""
        return None

    # -- used by the registry and the interfaces ---------------------------------------------------------------
    def serves(self, mode: str) -> bool:
        return ("img2img" if mode == "inpaint" else mode) in self.modes

    def arg_infos(self, mode: str) -> list[dict[str, Any]]:
        """Its args as /sdapi/v1/script-info shows them on `mode`'s tab, in positional order: the Args fields'
        (arg_infos) unless the script takes a positional list of its own layout (the X/Y/Z plot: A1111's)."""
        return arg_infos(self.Args)

    def parse_args(self, given: dict[str, Any] | list[Any] | None, mode: str = "txt2img") -> BaseModel:
        """The script's Args from a dict of named values or A1111's positional list (for a request of `mode`);
        InvalidRequest says why not."""
        names = list(self.Args.model_fields)
        if given is None:
            given = {}
        if isinstance(given, (list, tuple)):
            if len(given) > len(names):
                raise InvalidRequest(f"script {self.name!r} takes {len(names)} args ({', '.join(names) or 'none'}), "
                                     f"not {len(given)}")
            given = dict(zip(names, given))
        if not isinstance(given, dict):
            raise InvalidRequest(f"script {self.name!r}: args must be a list (in the order {', '.join(names)}) or "
                                 "an object of named values")
        unknown = [key for key in given if key not in names]
        if unknown:
            raise InvalidRequest(f"script {self.name!r} has no arg {unknown[0]!r}; it takes: "
                                 f"{', '.join(names) or 'none'}")
        try:
            return self.Args.model_validate(given)
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())
            raise InvalidRequest(f"script {self.name!r}: {reasons}") from None


def arg_infos(args: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field of an Args model as A1111's ScriptArg: label, value (the default), minimum, maximum, step,
    choices."""
    infos = []
    for name, info in args.model_fields.items():
        minimum = maximum = None
        for constraint in info.metadata:
            minimum = getattr(constraint, "ge", getattr(constraint, "gt", minimum))
            maximum = getattr(constraint, "le", getattr(constraint, "lt", maximum))
        choices = None
        annotation = info.annotation
        if get_origin(annotation) is Literal:
            choices = [str(choice) for choice in get_args(annotation)]
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            choices = [str(member.value) for member in annotation]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, enum.Enum):
            default = default.value
        infos.append({"label": info.title or name, "value": default, "minimum": minimum, "maximum": maximum,
                      "step": extra.get("step"), "choices": choices})
    return infos
