"""`guardforge generate`'s hires-fix options merged into the request's fields (over those of --from-png)."""

from __future__ import annotations

from typing import Any


def merge_hires(fields: dict[str, Any], enabled: bool | None, given: dict[str, Any]) -> None:
    """--hires turns hires fix on with its defaults, any --hires-* option turns it on with that value, --no-hires
    drops it (an image's own included); options given replace the image's values one by one."""
    given = {name: value for name, value in given.items() if value is not None}
    if enabled is False:
        fields.pop("hires", None)
        return
    if enabled or given:
        fields["hires"] = {**(fields.get("hires") or {}), **given}
