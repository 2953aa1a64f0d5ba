"""Policy: per-category thresholds and actions, checkpoints on/off and the fail mode, loaded from YAML."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from guardforge.errors import GuardforgeError
from guardforge.guard.backends.base import Scores
from guardforge.guard.taxonomy import HAZARD_CODES, Category, Taxonomy
from guardforge.guard.verdict import Action, Checkpoint, most_severe

SHIPPED = ("default", "permissive", "off")
# Only a generated image is delivered, so only it can be delivered blurred. A prompt, an input image or training
# data is read by the engine or the trainer as it is: blurring it there would change nothing it sees.
BLURRABLE_CHECKPOINTS: tuple[Checkpoint, ...] = ("output_image",)


class PolicyError(GuardforgeError):
    """A policy file is missing or invalid; the message is one line."""


class Rule(BaseModel):
    """When a category counts as violated (score >= threshold) and what happens then."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, gt=0.0, le=1.0)
    action: Action = "block"
    # A different action at some checkpoints, e.g. blur sexual content in outputs but block it in prompts.
    at: dict[Checkpoint, Action] = Field(default_factory=dict)

    def action_at(self, checkpoint: Checkpoint | None) -> Action:
        return self.at.get(checkpoint, self.action) if checkpoint else self.action


class OverallRule(Rule):
    """The rule for the backend's overall P(unsafe). `threshold: model` is the threshold the backend ships with
    (the embedded text guard's F1-best point on held-out data; `Scores.extra["threshold"]`), 0.5 where it has none:
    a calibrated guard's own operating point, not a number the policy guesses for every backend."""

    threshold: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["model"] = "model"

    def resolve(self, model_threshold: float | None) -> float:
        if self.threshold != "model":
            return self.threshold
        return 0.5 if model_threshold is None else float(model_threshold)


class CustomCategory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    name: str
    description: str


class Checkpoints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: bool = True
    input_image: bool = True
    output_image: bool = True
    training_data: bool = True

    def enabled(self, checkpoint: Checkpoint) -> bool:
        return getattr(self, checkpoint)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    description: str = ""
    default: Rule = Rule()  # for categories without their own rule
    categories: dict[str, Rule] = Field(default_factory=dict)
    # The backend's overall P(unsafe), used only when no category crossed its threshold (e.g. a guard
    # that answered "unsafe" without naming a category). None: ignore it.
    overall: OverallRule | None = None
    excluded: list[str] = Field(default_factory=list)
    custom: list[CustomCategory] = Field(default_factory=list)
    checkpoints: Checkpoints = Checkpoints()
    fail_mode: Literal["closed", "open"] = "closed"

    @model_validator(mode="after")
    def _check_codes(self) -> Policy:
        taxonomy = self.taxonomy  # validates excluded and custom codes
        known = set(HAZARD_CODES) | {c.code for c in taxonomy.custom}
        unknown = sorted(set(self.categories) - known)
        if unknown:
            raise ValueError(f"rules for unknown categories {unknown}; known: {', '.join(sorted(known))}")
        return self

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy(excluded=tuple(self.excluded),
                        custom=tuple(Category(c.code, c.name, c.description, custom=True) for c in self.custom))

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON form: the audit log says which policy decided."""
        data = self.model_dump(mode="json")
        data["excluded"] = sorted(data["excluded"])  # the same taxonomy whatever order they were listed in
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def any_checkpoint_on(self) -> bool:
        return any(self.checkpoints.model_dump().values())

    def rule(self, code: str) -> Rule:
        return self.categories.get(code, self.default)

    def decide(self, scores: dict[str, float], unsafe: float | None = None,
               checkpoint: Checkpoint | None = None,
               model_threshold: float | None = None) -> tuple[list[str], Action]:
        """Violated categories and the action: the most severe action among them (block > blur > flag).
        `model_threshold`: the backend's own overall threshold, for an `overall` rule at `threshold: model`."""
        active = set(self.taxonomy.codes)
        violated = [code for code in self.taxonomy.codes
                    if code in scores and code in active and scores[code] >= self.rule(code).threshold]
        actions = [self.rule(code).action_at(checkpoint) for code in violated]
        if (not violated and self.overall is not None and unsafe is not None
                and unsafe >= self.overall.resolve(model_threshold)):
            actions.append(self.overall.action_at(checkpoint))
        action = most_severe(actions)
        if action == "blur" and checkpoint is not None and checkpoint not in BLURRABLE_CHECKPOINTS:
            action = "block"  # a rule that says blur means "not through as it is"
        return violated, action


def judge(policy: Policy, result: Scores, checkpoint: Checkpoint | None) -> tuple[dict[str, float], float | None,
                                                                           list[str], Action]:
    """A backend's answer under a policy: the active categories' scores, the overall score the policy reads,
    the violated categories and the action. Shared by the guard and its evaluation, so both decide alike.

    A backend with a fixed head (the embedded ones, ShieldGemma) also scores excluded categories, and its
    overall P(unsafe) covers them: a policy that excludes S12 would still stop nudity through the overall rule.
    Such an overall score is read as no higher than the highest active category's."""
    active = policy.taxonomy.codes
    scores = {code: float(result.scores[code]) for code in active if code in result.scores}
    unsafe = result.unsafe
    if unsafe is not None and any(code in result.scores for code in policy.taxonomy.excluded):
        unsafe = min(float(unsafe), max(scores.values(), default=0.0))
    threshold = result.extra.get("threshold")
    violated, action = policy.decide(scores, unsafe=unsafe, checkpoint=checkpoint,
                                     model_threshold=threshold if isinstance(threshold, (int, float)) else None)
    return scores, unsafe, violated, action


def _shipped_path(name: str) -> Path:
    return Path(str(resources.files("guardforge.guard") / "policies" / f"{name}.yaml"))


def load_policy(name_or_path: str | Path) -> Policy:
    """A shipped policy by name (default, permissive, off) or a YAML file by path."""
    text_name = str(name_or_path)
    if text_name in SHIPPED:
        path = _shipped_path(text_name)
    else:
        path = Path(text_name).expanduser()
        if not path.is_file():
            raise PolicyError(f"policy {text_name!r} is neither a shipped policy ({', '.join(SHIPPED)}) "
                              f"nor an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PolicyError(f"policy {path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy {path}: expected a mapping at the top level")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PolicyError(f"policy {path}: {where}: {first['msg']}{more}") from None
