"""The scripts a Studio runs, found through the `guardforge.scripts` entry points, and the plan of one request."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from guardforge.errors import InvalidRequest
from guardforge.scripts.base import Script

if TYPE_CHECKING:
    from PIL.Image import Image

    from guardforge.engine.request import GenerationRequest

log = logging.getLogger(__name__)

GROUP = "guardforge.scripts"
# guardforge's own scripts, as pyproject.toml declares them: an install made before they existed (an editable
# checkout not reinstalled) has no such metadata, and must still run them. Names found installed come first.
BUILTIN = (EntryPoint("watermark", "guardforge.scripts.watermark:Watermark", GROUP),
           EntryPoint("xyz_plot", "guardforge.scripts.xyz_plot:XYZPlot", GROUP))
# A script's name is a path segment of its routes (/v1/scripts/{name}/...) and a key in requests.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
_INFOTEXT_KEY = re.compile(r"^\w[\w \-/]*$")


@dataclass(frozen=True)
class Bound:
    """A script with the args one request gives it."""

    script: Script
    args: BaseModel


class ScriptPlan:
    """The scripts one request runs, in order (the selectable one first, then the always-on ones by name), each
    with its args; inactive ones left out."""

    def __init__(self, bound: list[Bound]):
        self.bound = bound

    @property
    def selectable(self) -> Bound | None:
        return next((b for b in self.bound if not b.script.alwayson), None)

    @property
    def runner(self) -> Bound | None:
        """The selectable script whose `run` replaces this generation with several, if any."""
        selectable = self.selectable
        return selectable if selectable is not None and selectable.script.run is not None else None

    def alter(self, request: GenerationRequest) -> GenerationRequest:
        """The request after every script's alter_request, validated again as a caller's would be; which
        scripts run is not a script's to change."""
        from guardforge.engine.request import GenerationRequest

        altered = request
        for bound in self.bound:
            altered = bound.script.alter_request(altered, bound.args)
            if not isinstance(altered, GenerationRequest):
                raise TypeError(f"script {bound.script.name!r}: alter_request returned {type(altered).__name__}, "
                                "not a GenerationRequest")
        if altered is request:
            return request
        try:
            return GenerationRequest.model_validate({**altered.model_dump(), "scripts": request.scripts})
        except ValidationError as exc:
            names = ", ".join(b.script.name for b in self.bound)
            reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidRequest(f"the request as script(s) {names} altered it is invalid: {reasons}") from None

    def process(self, images: list[Image], request: GenerationRequest) -> list[Image]:
        """The images after every script's process_images: as many as were made, each a PIL image."""
        from PIL.Image import Image

        for bound in self.bound:
            processed = bound.script.process_images(list(images), request, bound.args)
            if len(processed) != len(images) or not all(isinstance(image, Image) for image in processed):
                raise TypeError(f"script {bound.script.name!r}: process_images must return {len(images)} PIL "
                                "image(s), one per image made")
            images = processed
        return images

    def texts(self) -> list[str]:
        """What the scripts will write into the images, for the guard's prompt checkpoint."""
        return [text for bound in self.bound for text in bound.script.texts(bound.args)]

    def infotext(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for bound in self.bound:
            for key, value in bound.script.infotext(bound.args).items():
                # A key with a comma or colon would split the infotext's parameters line where readers parse it.
                if not _INFOTEXT_KEY.match(str(key)):
                    raise TypeError(f"script {bound.script.name!r}: infotext key {key!r} must be letters, digits, "
                                    "spaces, - and /")
                params[str(key)] = value
        return params


class ScriptRegistry:
    """The scripts installed, by name. A script that fails to load or is malformed is logged and left out:
    one broken plugin must not keep the server from starting."""

    def __init__(self, scripts: Iterable[Script] = ()):
        self._scripts: dict[str, Script] = {}
        for script in scripts:
            self._scripts[script.name] = script

    @classmethod
    def from_entry_points(cls, found: Iterable[EntryPoint] | None = None) -> ScriptRegistry:
        """The scripts the `guardforge.scripts` entry points declare (or `found`), then guardforge's built-ins
        that the installed metadata lacks."""
        declared = list(entry_points(group=GROUP) if found is None else found)
        names = {ep.name for ep in declared}
        declared += [ep for ep in BUILTIN if ep.name not in names] if found is None else []
        scripts: list[Script] = []
        for ep in declared:
            script = _load(ep)
            if script is None:
                continue
            if any(other.name == script.name for other in scripts):
                log.warning("script %r is declared twice: the second, %s, is skipped", ep.name, ep.value)
                continue
            scripts.append(script)
        return cls(scripts)

    def __iter__(self):
        return iter(sorted(self._scripts.values(), key=lambda s: (not s.alwayson, s.name)))

    def routers(self) -> list[tuple[str, Any]]:
        """(name, APIRouter) of each script that adds routes; one whose router() fails is logged and left out."""
        found = []
        for script in self:
            try:
                router = script.router()
            except Exception as exc:  # a plugin's code: the server starts without its routes
                log.error("script %r: its routes are skipped: router() failed: %s: %s", script.name,
                          type(exc).__name__, exc)
                continue
            if router is not None:
                found.append((script.name, router))
        return found

    def args_from_infotext(self, params: dict[str, str]) -> dict[str, dict[str, Any]]:
        """{name: args} of the scripts an infotext says ran (each script reads its own keys back); a script that
        fails to read them is logged and left out, as the image can be made again without it."""
        found = {}
        for script in self:
            try:
                args = script.args_from_infotext(params)
            except Exception as exc:  # a plugin's parser of text from an image file
                log.warning("script %r could not read its args back from an infotext: %s: %s", script.name,
                            type(exc).__name__, exc)
                continue
            if args is not None:
                found[script.name] = args
        return found

    def lookup(self, name: str) -> Script | None:
        """The script a name means: its entry-point name or its title, in any case (A1111 clients send titles);
        None when none is installed by that name."""
        wanted = str(name).strip().lower()
        return next((s for s in self._scripts.values() if wanted in (s.name, s.title.lower())), None)

    def find(self, name: str) -> Script:
        """As lookup, and InvalidRequest naming the installed scripts when none is."""
        script = self.lookup(name)
        if script is not None:
            return script
        known = ", ".join(sorted(self._scripts)) or "none"
        raise InvalidRequest(f"script {name!r} is not installed here; installed: {known} (GET /v1/scripts or "
                             "`guardforge scripts list` describes them)")

    def plan(self, request: GenerationRequest) -> ScriptPlan:
        """The scripts `request` runs with their args: those it names, and every always-on script of its mode.
        InvalidRequest for an unknown script, bad args, a script that does not serve the request's mode, or two
        selectable scripts."""
        given: dict[str, tuple[Script, Any]] = {}
        for name, args in request.scripts.items():
            script = self.find(name)
            if script.name in given:
                raise InvalidRequest(f"script {script.name!r} is named twice (as {name!r} too)")
            if not script.serves(request.mode):
                raise InvalidRequest(f"script {script.name!r} runs on {' and '.join(sorted(script.modes))}, not "
                                     f"{request.mode}")
            given[script.name] = (script, args)
        selectable = [script.name for script, _ in given.values() if not script.alwayson]
        if len(selectable) > 1:
            raise InvalidRequest(f"one selectable script per request, not {len(selectable)} ({', '.join(selectable)})")
        bound = []
        for script in self:  # the selectable one first, then the always-on ones by name
            if script.name in given:
                bound.append(Bound(script, script.parse_args(given[script.name][1], request.mode)))
            elif script.alwayson and script.serves(request.mode):
                bound.append(Bound(script, script.parse_args({})))
        return ScriptPlan([b for b in bound if b.script.active(b.args)])


def _load(ep: EntryPoint) -> Script | None:
    """One entry point's script, or None (logged) when it cannot be one."""
    try:
        if not _NAME.match(ep.name):
            raise ValueError(f"its name {ep.name!r} must be lower-case letters, digits, - and _ (64 at most)")
        loaded = ep.load()
        # A class, instantiated here: each Studio has its own instances, no plugin object is shared.
        if not (isinstance(loaded, type) and issubclass(loaded, Script)):
            raise TypeError(f"{ep.value} is not a subclass of guardforge.scripts.Script")
        script = loaded()
        script.name = ep.name
        if not script.title:
            script.title = ep.name
        if not isinstance(script.Args, type) or not issubclass(script.Args, BaseModel):
            raise TypeError("its Args is not a pydantic model")
        if script.alwayson:
            script.parse_args({})  # an always-on script runs with its defaults: they must exist
        return script
    except Exception as exc:  # a plugin's import may raise anything; the server starts without it
        log.error("script %r (%s) is skipped: it failed to load: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
        return None
