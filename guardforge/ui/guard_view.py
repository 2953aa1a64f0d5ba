"""What the UI shows of a job's end: progress, and plainly what the guard decided (blocked, blurred, flagged)."""

from __future__ import annotations

import html

from guardforge.guard.taxonomy import HAZARDS
from guardforge.guard.verdict import Verdict
from guardforge.jobs.results import GenerationJobResult, ImageResult

# What each action did to the image, in the words a user reads under it.
DID = {"allow": "allowed", "flag": "flagged for review", "blur": "blurred by the guard",
       "block": "withheld by the guard"}
SHORT = {"flag": "flagged for review", "blur": "blurred", "block": "withheld (blocked)"}
SEVERITY = {"allow": 0, "flag": 1, "blur": 2, "block": 3}
COLORS = {"allow": "#15803d", "flag": "#b45309", "blur": "#b45309", "block": "#b91c1c", "error": "#b91c1c",
          "idle": "inherit"}
WHAT = {"prompt": "the prompt", "input_image": "the starting image", "output_image": "the image"}


class Reasons:
    """Why the guard acted, in words: the categories whose rule led to the action, with their names."""

    def __init__(self, policy):
        self.policy = policy
        self.names = {c.code: c.name for c in HAZARDS}
        self.names.update({c.code: c.name for c in policy.taxonomy.active})

    def codes(self, verdict: Verdict) -> list[str]:
        """The violated categories whose rule did what was done, most likely first. A prompt can cross the
        threshold of a category the policy lets through there (S12 blurred in outputs, allowed in prompts)."""
        acting = [code for code in verdict.violated
                  if self.policy.rule(code).action_at(verdict.checkpoint) == verdict.action]
        return sorted(acting or verdict.violated, key=lambda code: -verdict.scores.get(code, 0))

    def name(self, code: str) -> str:
        return f"{code} {self.names.get(code, '')}".strip()

    def __call__(self, verdict: Verdict | None) -> str:
        """'S1 Violent Crimes, score 0.91; ...'; the backend's error when it failed."""
        if verdict is None:
            return ""
        text = "; ".join(self.name(code) + self._score(verdict, verdict.scores.get(code))
                         for code in self.codes(verdict))
        if not text and verdict.unsafe is not None and verdict.action != "allow":
            text = f"overall unsafe score {verdict.unsafe:.2f}"  # the guard named no category
        if verdict.error:
            text = (text + "; " if text else "") + f"the guard could not check: {verdict.error}"
        if verdict.reason:  # e.g. the prompt its negative prompt implies decided it
            text = (text + "; " if text else "") + verdict.reason
        return text

    @staticmethod
    def _score(verdict: Verdict, score: float | None) -> str:
        if score is None or verdict.labels_only:
            return ""
        return f", score {score:.2f}" if score >= 0.01 else ", score <0.01"


def bar(step: int, total: int, state: str, note: str = "", action: str = "allow") -> str:
    """The status box: a progress bar while a job runs, and a line saying what the guard did once it ended."""
    percent = int(100 * step / total) if total else 0
    meter = ("" if state == "blocked" else
             f'<progress value="{step}" max="{total or 1}" style="width:100%"></progress> '
             f"{html.escape(state)} {step}/{total} ({percent}%)")
    color = COLORS.get(action, "inherit")
    line = (f'<div id="gf-guard" data-action="{action}" style="color:{color};border-left:4px solid {color};'
            f'padding:4px 10px;margin:6px 0 0 2px;font-weight:600">{html.escape(note)}</div>') if note else ""
    return f'<div id="gf-progress" data-state="{html.escape(state)}" data-action="{action}">{meter}{line}</div>'


def outcome(result: GenerationJobResult, reasons: Reasons) -> tuple[str, str, str]:
    """(state, action, sentence) for a job that succeeded: blocked at the door, or what happened to its images."""
    prompt = result.prompt_verdict
    if result.blocked:
        what = WHAT.get(prompt.checkpoint if prompt else None, "the request")
        why = reasons(prompt)
        return ("blocked", "block",
                f"Blocked by the guard: {what} was refused{f' ({why})' if why else ''}. Nothing was generated.")
    images = result.images
    action = max((image.action for image in images), key=SEVERITY.__getitem__, default="allow")
    parts = []
    for kind in ("block", "blur", "flag"):
        hit = [image for image in images if image.action == kind]
        if hit:
            codes = sorted({code for image in hit if image.verdict for code in reasons.codes(image.verdict)})
            errors = sorted({image.verdict.error for image in hit if image.verdict and image.verdict.error})
            why = [reasons.name(code) for code in codes] + [f"the guard could not check: {e}" for e in errors]
            parts.append(f"{len(hit)} of {len(images)} {'image' if len(images) == 1 else 'images'} {SHORT[kind]}"
                         + (f" ({'; '.join(why)})" if why else ""))
    if prompt is not None and prompt.action == "flag":
        parts.append(f"the prompt was flagged for review ({reasons(prompt)})")
    if not parts:
        return "done", "allow", "Guard: allowed."
    note = "Guard: " + "; ".join(parts) + "."
    return "done", max(action, prompt.action if prompt else "allow", key=SEVERITY.__getitem__), note


def caption(image: ImageResult, reasons: Reasons) -> str:
    why = reasons(image.verdict)
    return DID[image.action] + (f": {why}" if why and image.action != "allow" else "")


def verdict_json(result: GenerationJobResult, index: int | None = None) -> dict:
    """The Verdict panel: the action taken (never null), whether the request was blocked, and the verdicts."""
    prompt = result.prompt_verdict.model_dump(mode="json") if result.prompt_verdict else None
    if result.blocked:
        return {"action": "block", "blocked": True, "prompt_verdict": prompt}
    image = result.images[index or 0] if result.images else None
    return {"action": image.action if image else "allow", "blocked": False,
            "verdict": image.verdict.model_dump(mode="json") if image and image.verdict else None,
            "prompt_verdict": prompt}
