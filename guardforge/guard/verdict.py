"""Verdict: what the guard decided about one piece of content, and why."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Checkpoint = Literal["prompt", "input_image", "output_image", "training_data"]
Action = Literal["allow", "flag", "blur", "block"]

# Higher is more severe; the most severe action among violated categories wins.
SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "blur": 2, "block": 3}


def most_severe(actions) -> Action:
    return max(actions, key=SEVERITY.__getitem__, default="allow")


class Verdict(BaseModel):
    checkpoint: Checkpoint
    scores: dict[str, float] = Field(default_factory=dict)  # category code -> probability 0..1
    unsafe: float | None = None  # the backend's overall P(unsafe) when it has one
    violated: list[str] = Field(default_factory=list)
    action: Action = "allow"
    backend: str
    latency_ms: float = 0.0
    labels_only: bool = False  # scores are 0/1 labels, not probabilities
    error: str | None = None  # set when the backend failed and the fail mode decided
    # Set when the verdict is not the plain reading of the content: for a prompt, when the prompt its negative
    # prompt implies decided it (guard/negation.py). Shown to the user beside the categories.
    reason: str | None = None
    content_sha256: str = ""
    policy_hash: str = ""

    @property
    def flagged(self) -> bool:
        """A category crossed its threshold (even one the policy allows) or the policy acted: the CLI's and
        /v1/moderations' `flagged` alike."""
        return bool(self.violated) or self.action != "allow"
