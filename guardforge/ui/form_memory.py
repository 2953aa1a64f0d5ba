"""The form's starting values: the chosen model's own defaults, and each API key's last settings, kept on the
server (storage.preferences) rather than in the browser, whose storage every key logged in there would share.

On a server without keys every visitor is the same owner, so nothing is remembered there: one visitor's
settings would otherwise land on the next one's page."""

from __future__ import annotations

import logging

import gradio as gr

from guardforge.access.caller import Caller
from guardforge.storage.preferences import RememberedSettings

log = logging.getLogger(__name__)
# The remembered fields, in the order of the components restore() fills.
FIELDS = ("model", "vae", "sampler", "schedule", "steps", "cfg_scale", "width", "height", "negative_prompt")


def defaults_updates(studio, model: str | None) -> tuple:
    """Width, height, sampler, steps and CFG scale for a newly chosen model; unchanged where it says nothing."""
    try:
        defaults = studio.model_defaults(model or None)
    except Exception:  # an unreadable or vanished model: keep whatever the form has
        return (gr.update(),) * 5
    return tuple(gr.update() if value is None else gr.update(value=value)
                 for value in (defaults.width, defaults.height, defaults.sampler, defaults.steps, defaults.cfg_scale))


def remember(studio, caller: Caller, fields: dict) -> None:
    """Keep what this submitted request was made with, for the key's next visit (keyed callers only). The job is
    queued by now: a setting that cannot be kept (a negative prompt over the cap, the database busy) is logged,
    never shown as the click's failure."""
    if caller.key_id is None:
        return
    try:
        studio.remember_settings(caller, RememberedSettings.model_validate(
            {name: fields.get(name) for name in FIELDS}))
    except Exception as exc:
        log.warning("the UI settings of key %s were not kept: %s: %s", caller.key_id, type(exc).__name__, exc)


def restore(studio, caller: Caller, choices: dict[str, list[str]]) -> tuple:
    """The form as the key left it; names no longer offered (a model removed since) are left as they are."""
    kept = studio.remembered_settings(caller) if caller.key_id is not None else None
    if kept is None:
        return (gr.update(),) * len(FIELDS)
    updates = []
    for name in FIELDS:
        value = getattr(kept, name)
        offered = choices.get(name)
        usable = value is not None and (offered is None or value in offered)
        updates.append(gr.update(value=value) if usable else gr.update())
    return tuple(updates)
