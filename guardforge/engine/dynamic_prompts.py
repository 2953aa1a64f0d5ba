"""Dynamic prompts (sd-dynamic-prompts' syntax): `{a|b}` variants and `__name__` wildcards, expanded with a seed."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from guardforge.errors import InvalidRequest, PathEscape

# A wildcard's name: letters, digits, _ - . and / for subfolders, * and ? to glob. Non-greedy, so that
# `__hair_colour__` is one name and `__a__ and __b__` two.
_WILDCARD = re.compile(r"__([\w\-./*?]+?)__")
_COUNT = re.compile(r"(\d*)(-?)(\d*)\$\$")
_WEIGHT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)::")
_ESCAPED = "{}|"  # `\{` is a literal brace; every other backslash is left for the engine's syntax (`\(`)
DEFAULT_JOINER = ", "


@dataclass(frozen=True)
class ExpansionLimits:
    """What one text may cost: against a template (or a wildcard file) built to expand without end."""

    max_depth: int = 16  # wildcards within wildcards (a file naming itself hits this)
    max_nesting: int = 48  # variants and wildcards within each other, all told (each level is a few stack frames)
    max_steps: int = 20_000  # variants and wildcards resolved for one text
    max_chars: int = 20_000  # the expanded text (a request's prompt may be no longer)
    max_file_bytes: int = 1 << 20  # one wildcard file
    max_files: int = 1000  # files one glob may match


@dataclass
class _Text:
    text: str


@dataclass
class _Wildcard:
    name: str


@dataclass
class _Variant:
    options: list[tuple[float, list]]  # (weight, nodes)
    low: int = 1
    high: int | None = 1  # None: as many as there are options
    joiner: str = DEFAULT_JOINER


# Braces nested deeper than this in one text are refused: the parser recurses once per level.
MAX_BRACE_DEPTH = 24


@dataclass
class _Parser:
    """One text parsed into literal text, variants and wildcards. `|` splits a variant only outside A1111's own
    brackets, so `{[cat|dog]|bird}` has two options, the first A1111's alternation."""

    source: str
    pos: int = 0
    depth: int = 0

    def error(self, message: str) -> InvalidRequest:
        return InvalidRequest(f"{message} at character {self.pos + 1} of {_shown(self.source)} (write \\{{ or \\}} "
                              "for a literal brace)")

    def parse(self) -> list:
        nodes = self.sequence(in_variant=False)
        if self.pos < len(self.source):  # only a `}` stops the top level early
            raise self.error("'}' closes no '{'")
        return nodes

    def sequence(self, in_variant: bool) -> list:
        nodes: list = []
        text: list[str] = []
        depth = 0
        source = self.source

        def flush():
            if text:
                nodes.append(_Text("".join(text)))
                text.clear()

        while self.pos < len(source):
            char = source[self.pos]
            if char == "\\" and source[self.pos + 1:self.pos + 2] in tuple(_ESCAPED):
                text.append(source[self.pos + 1])
                self.pos += 2
                continue
            if char == "}" or (char == "|" and in_variant and depth == 0):
                break
            if char == "{":
                flush()
                nodes.append(self.variant())
                continue
            if char == "_" and source.startswith("__", self.pos):
                match = _WILDCARD.match(source, self.pos)
                if match:
                    flush()
                    nodes.append(_Wildcard(match.group(1)))
                    self.pos = match.end()
                    continue
            if char in "[(":
                depth += 1
            elif char in "])":
                depth = max(depth - 1, 0)
            text.append(char)
            self.pos += 1
        flush()
        return nodes

    def variant(self) -> _Variant:
        start = self.pos
        if self.depth >= MAX_BRACE_DEPTH:
            raise InvalidRequest(f"variants nest deeper than {MAX_BRACE_DEPTH} braces in {_shown(self.source)}")
        self.depth += 1
        self.pos += 1  # the `{`
        variant = _Variant(options=[])
        count = _COUNT.match(self.source, self.pos)
        if count and (count.group(1) or count.group(2)):
            low, dash, high = count.groups()
            variant.low = int(low) if low else 1
            variant.high = (int(high) if high else None) if dash else variant.low
            self.pos = count.end()
            # A joiner is the text up to a second `$$` that comes before the options begin.
            rest = self.source[self.pos:]
            end = min([i for i in (rest.find("|"), rest.find("}"), rest.find("{")) if i >= 0] or [len(rest)])
            joiner = rest.find("$$", 0, end)
            if joiner >= 0:
                variant.joiner = rest[:joiner]
                self.pos += joiner + 2
        while True:
            weight = 1.0
            match = _WEIGHT.match(self.source, self.pos)
            if match:
                weight = float(match.group(1))
                self.pos = match.end()
            variant.options.append((weight, self.sequence(in_variant=True)))
            if self.pos >= len(self.source):
                self.pos = start
                raise self.error("'{' is never closed")
            if self.source[self.pos] == "}":
                self.pos += 1
                self.depth -= 1
                return variant
            self.pos += 1  # the `|`


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse(text: str) -> list:
    """The text's nodes; InvalidRequest for an unbalanced brace."""
    return _Parser(text).parse()


def is_dynamic(text: str) -> bool:
    """Whether the text holds a variant or a wildcard (a plain prompt is passed through untouched)."""
    return "{" in text or "}" in text or _WILDCARD.search(text) is not None


@dataclass
class Wildcards:
    """The wildcards folder: `__name__` is `name.txt` in it (subfolders by `/`), one value per line, blank lines and
    `#` comments skipped. Files are read when first used by one expansion, so edits apply to the next request.
    No name reaches a file outside the folder."""

    root: Path
    limits: ExpansionLimits = field(default_factory=ExpansionLimits)
    _values: dict[str, list[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        if name not in self._values:
            self._values[name] = [value for path in self.files(name) for value in self._read(name, path)]
            if not self._values[name]:
                raise InvalidRequest(f"wildcard __{name}__ has no values (its files hold only blank lines and "
                                     "comments)")
        return self._values[name]

    def files(self, name: str) -> list[Path]:
        parts = name.split("/")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise PathEscape(f"wildcard __{name}__: a name is a path inside the wildcards folder, without '..', "
                             "empty parts or a leading '/'")
        root = self.root.resolve()
        if any(char in name for char in "*?"):
            try:
                found = self.root.glob(f"{name}.txt") if self.root.is_dir() else []
                paths = sorted(path for path in found if path.is_file())
            except ValueError as exc:  # pathlib's own refusal: `**` must be a whole part
                raise InvalidRequest(f"wildcard __{name}__ is not a usable pattern: {exc}") from None
            if not paths:
                raise InvalidRequest(f"wildcard __{name}__ matches no file in the wildcards folder")
            if len(paths) > self.limits.max_files:
                raise InvalidRequest(f"wildcard __{name}__ matches {len(paths)} files, over the limit of "
                                     f"{self.limits.max_files}")
        else:
            paths = [self.root / f"{name}.txt"]
            if not paths[0].is_file():
                raise InvalidRequest(f"unknown wildcard __{name}__: there is no {name}.txt in the wildcards folder")
        for path in paths:
            # A link inside the folder may point out of it: the file read must be inside, not only its name.
            if not path.resolve().is_relative_to(root):
                raise PathEscape(f"wildcard __{name}__ leads outside the wildcards folder")
        return paths

    def _read(self, name: str, path: Path) -> list[str]:
        if path.stat().st_size > self.limits.max_file_bytes:
            raise InvalidRequest(f"wildcard __{name}__: {path.name} is over {self.limits.max_file_bytes} bytes")
        lines = (line.strip() for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines())
        return [line for line in lines if line and not line.startswith("#")]


@dataclass
class _Run:
    """One text's expansion: its random stream and what it has spent."""

    wildcards: Wildcards
    rng: random.Random
    steps: int = 0
    nesting: int = 0
    chain: list[str] = field(default_factory=list)  # the wildcards being expanded, outermost first

    def spend(self) -> None:
        self.steps += 1
        if self.steps > self.wildcards.limits.max_steps:
            raise InvalidRequest(f"the prompt expands through more than {self.wildcards.limits.max_steps} variants "
                                 "and wildcards")

    def nodes(self, nodes: list) -> str:
        return "".join(self.node(node) for node in nodes)

    def node(self, node) -> str:
        if isinstance(node, _Text):
            return node.text
        self.spend()
        limits = self.wildcards.limits
        if self.nesting >= limits.max_nesting:
            raise InvalidRequest(f"the prompt nests variants and wildcards deeper than {limits.max_nesting}")
        self.nesting += 1
        try:
            return self.wildcard(node.name) if isinstance(node, _Wildcard) else self.variant(node)
        finally:
            self.nesting -= 1

    def wildcard(self, name: str) -> str:
        limits = self.wildcards.limits
        if len(self.chain) >= limits.max_depth:
            raise InvalidRequest(f"wildcards nest deeper than {limits.max_depth} "
                                 f"({' -> '.join(self.chain[:4])} -> ...): does one name itself?")
        value = self.rng.choice(self.wildcards.values(name))
        return self.within(name, value)

    def within(self, name: str, value: str) -> str:
        self.chain.append(name)
        try:
            return self.nodes(parse(value))
        except InvalidRequest as exc:
            if str(exc).startswith("in wildcard"):
                raise
            raise InvalidRequest(f"in wildcard __{name}__: {exc}") from None
        finally:
            self.chain.pop()

    def variant(self, variant: _Variant) -> str:
        options = variant.options
        single = options[0][1] if len(options) == 1 else None
        if single and len(single) == 1 and isinstance(single[0], _Wildcard) and variant.high != 1:
            # `{2$$__flavours__}`: the values of one wildcard are the options, so that none comes twice.
            name = single[0].name
            return self.pick([(1.0, value) for value in self.wildcards.values(name)], variant,
                             lambda value: self.within(name, value))
        return self.pick(options, variant, self.nodes)

    def pick(self, options: list, variant: _Variant, expand) -> str:
        high = len(options) if variant.high is None else min(variant.high, len(options))
        low = min(variant.low, high)
        count = self.rng.randint(low, high) if low < high else high
        remaining = [option for option in options if option[0] > 0]
        chosen = []
        for _ in range(count):
            if not remaining:
                break
            index = self.rng.choices(range(len(remaining)), weights=[w for w, _ in remaining])[0]
            chosen.append(remaining.pop(index)[1])
        return variant.joiner.join(expand(option) for option in chosen)


def expand(template: str, seed: int, wildcards: Wildcards, stream: str = "prompt") -> str:
    """The template with every variant and wildcard resolved by a random stream that `seed` and `stream` (which
    text of the request) fix: one seed gives one expansion, on any machine, in any batch. A text without
    dynamic syntax is returned as it is."""
    if not is_dynamic(template):
        return template
    # A str seed goes through SHA-512 in random.seed, so it neither depends on PYTHONHASHSEED nor correlates
    # the prompt's choices with the negative prompt's.
    run = _Run(wildcards, random.Random(f"{seed}:{stream}"))
    text = run.nodes(parse(template))
    if len(text) > wildcards.limits.max_chars:
        raise InvalidRequest(f"the prompt expands to {len(text)} characters, over the limit of "
                             f"{wildcards.limits.max_chars}")
    return text


# Lines of wildcard files check() parses at most: past this, a library's deeper files are checked when reached.
MAX_CHECKED_VALUES = 50_000


def check(template: str, wildcards: Wildcards) -> None:
    """Refuse now what expand would refuse for some seed: unbalanced braces, a wildcard name that leaves the folder
    or names no file, in the template and in every wildcard file it can reach (each file once, so a file that
    names itself is no loop here). Run at submit, so that a job does not fail in a worker for the caller's text."""
    if not is_dynamic(template):
        return
    pending = [(None, node) for node in parse(template)]
    seen: set[str] = set()
    parsed = 0
    while pending:
        within, node = pending.pop()
        if isinstance(node, _Variant):
            pending.extend((within, child) for _, option in node.options for child in option)
        elif isinstance(node, _Wildcard) and node.name not in seen:
            seen.add(node.name)
            try:
                values = wildcards.values(node.name)
            except InvalidRequest as exc:
                if within is None:
                    raise
                raise type(exc)(f"in wildcard __{within}__: {exc}") from None
            for value in values:
                parsed += 1
                if parsed > MAX_CHECKED_VALUES:
                    return
                try:
                    nodes = parse(value)
                except InvalidRequest as exc:
                    raise InvalidRequest(f"in wildcard __{node.name}__: {exc}") from None
                pending.extend((node.name, child) for child in nodes)
