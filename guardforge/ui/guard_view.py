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
# The badge's word per action: what people scan for, the sentence beside it says the rest.
BADGE = {"allow": "allowed", "flag": "flagged", "blur": "blurred", "block": "blocked", "error": "failed"}
# Scores under this are noise to a reader: the hover lists what the guard actually saw.
SHOWN_SCORE = 0.01


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


def scores_line(verdict: Verdict | None, reasons: Reasons) -> str:
    """'the prompt: S1 Violent Crimes 0.91, S10 Hate 0.12' (highest first), for the badge's hover."""
    if verdict is None:
        return ""
    what = WHAT.get(verdict.checkpoint, verdict.checkpoint)
    if verdict.backend == "off":
        return f"{what}: not checked (this checkpoint is off in the policy)"
    if verdict.error:
        return f"{what}: the guard could not check ({verdict.error})"
    # A category over its threshold is listed whatever its score: a policy may set a threshold near zero.
    shown = sorted(((code, score) for code, score in verdict.scores.items()
                    if score >= SHOWN_SCORE or code in verdict.violated), key=lambda item: -item[1])
    if not shown:
        return f"{what}: no category scored {SHOWN_SCORE} or more"

    def label(code: str, value: float) -> str:
        score = "" if verdict.labels_only else (f" {value:.2f}" if value >= SHOWN_SCORE else f" <{SHOWN_SCORE}")
        return reasons.name(code) + score + (" (over its threshold)" if code in verdict.violated else "")

    return f"{what}: " + ", ".join(label(code, value) for code, value in shown)


def hover(result: GenerationJobResult, reasons: Reasons) -> str:
    """Every category the guard scored for this job, per checkpoint: the prompt, then each image."""
    lines = [scores_line(result.prompt_verdict, reasons)]
    many = len(result.images) > 1
    for number, image in enumerate(result.images, 1):
        line = scores_line(image.verdict, reasons)
        lines.append(line.replace("the image", f"image {number}", 1) if many else line)
    return "\n".join(line for line in lines if line)


def badge(action: str, title: str = "", elem_id: str = "gf-badge") -> str:
    """The verdict as a coloured word (allowed, flagged, blurred, blocked); `title` shows on hover."""
    color = COLORS.get(action, "inherit")
    return (f'<span id="{elem_id}" class="gf-badge" data-action="{html.escape(action)}" title="{html.escape(title)}" '
            f'style="display:inline-block;background:{color};color:#fff;border-radius:9px;padding:1px 10px;'
            f'margin-right:8px;font-size:0.85em;cursor:help">{BADGE.get(action, html.escape(action))}</span>')


def bar(step: int, total: int, state: str, note: str = "", action: str = "allow", title: str | None = None,
        waiting: str = "") -> str:
    """The status box: a progress bar while a job runs (`waiting`: its place in the queue), and once it ended a
    line saying what the guard did, led by the verdict's badge when `title` (its hover text) is given."""
    percent = int(100 * step / total) if total else 0
    meter = ("" if state == "blocked" else
             f'<progress value="{step}" max="{total or 1}" style="width:100%"></progress> '
             f"{html.escape(state)} {step}/{total} ({percent}%)"
             + (f' <span id="gf-queue">{html.escape(waiting)}</span>' if waiting else ""))
    line = verdict_line(action, note, title) if note else ""
    return f'<div id="gf-progress" data-state="{html.escape(state)}" data-action="{action}">{meter}{line}</div>'


def verdict_line(action: str, note: str, title: str | None = None, elem_id: str = "gf-guard") -> str:
    """The guard's sentence in the action's colour, led by the badge when `title` (its hover text) is given."""
    color = COLORS.get(action, "inherit")
    # The main status box's badge keeps the short id the tests and users' CSS know; others are named after their box.
    badge_id = "gf-badge" if elem_id == "gf-guard" else f"{elem_id}-badge"
    lead = badge(action, title, badge_id) if title is not None else ""
    return (f'<div id="{elem_id}" data-action="{action}" style="color:{color};border-left:4px solid {color};'
            f'padding:4px 10px;margin:6px 0 0 2px;font-weight:600">{lead}{html.escape(note)}</div>')


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
