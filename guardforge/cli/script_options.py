"""`generate --script NAME --script-arg [NAME.]KEY=VALUE` (over what --from-png read) as a request's `scripts`."""

from __future__ import annotations

import json
from typing import Any

from guardforge.errors import InvalidRequest


def _value(text: str) -> Any:
    # A list or an object as JSON (a list of sides); anything else as the text itself, which the script's Args
    # read as their field's type ("0.5" as a number, "true" as a yes), so a text arg keeps "2026" or "true" as
    # typed: read as JSON, those were a number and a bool that a text field refused.
    if text.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def script_fields(names: list[str] | None, args: list[str] | None,
                  read: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]] | None:
    """{script: {arg: value}}: the scripts an image's infotext says ran (`read`, from --from-png), each --script
    by name, each --script-arg given to the script it names (NAME.KEY), or to the one --script when there is
    one, over the args read. None when there is none of these."""
    names, args = list(names or []), list(args or [])
    if not names and not args and not read:
        return None
    scripts: dict[str, dict[str, Any]] = {name: dict(given) for name, given in (read or {}).items()}
    for name in names:
        scripts.setdefault(name, {})
    for arg in args:
        key, equals, value = arg.partition("=")
        script, dot, key = key.strip().rpartition(".")
        if not equals or not key:
            raise InvalidRequest(f"--script-arg {arg!r}: give KEY=VALUE, or NAME.KEY=VALUE with several --script")
        if not dot:
            if len(names) != 1:
                raise InvalidRequest(f"--script-arg {arg!r}: say which script it is for, as NAME.{key}=..., "
                                     f"{'with several --script' if names else 'and give --script NAME'}")
            script = names[0]
        scripts.setdefault(script, {})[key] = _value(value)
    return scripts
