"""The guard evaluation: metrics at a threshold, per-category recall, the PR curve file, the CLI's checks."""

from __future__ import annotations

import pytest
from PIL import Image

from guardforge.guard.backends.base import Scores
from guardforge.guard.evaluation import evaluate_examples
from guardforge.guard.datasets import CATEGORIES, Example


class WordScorer:
    """A transparent scorer for the metric arithmetic: P(unsafe) is the share of flagged words."""

    name = "words"
    categories = frozenset({"S1"})

    def __init__(self, words: set[str]):
        self.words = words

    def score_texts(self, texts: list[str]) -> list[Scores]:
        out = []
        for text in texts:
            tokens = text.split()
            p = sum(t in self.words for t in tokens) / len(tokens)
            out.append(Scores(scores={"S1": p}, unsafe=p))
        return out


def _example(text: str, unsafe: int, code: str | None = None) -> Example:
    labels = {c: (int(c == code) if unsafe else 0) for c in CATEGORIES}
    labels["unsafe"] = unsafe
    return Example(text, labels, "handmade")


def test_metrics_at_threshold_and_curve(tmp_path):
    examples = [
        _example("bomb bomb bomb", 1, "S9"),     # 1.0  -> caught
        _example("bomb attack now", 1, "S1"),    # 0.67 -> caught
        _example("quiet attack here x", 1, "S1"),  # 0.25 -> missed at 0.5
        _example("bomb shaped cake", 0),         # 0.33 -> not flagged
        _example("attack bomb cake", 0),         # 0.67 -> false positive
        _example("a red fox", 0),                # 0.0
    ]
    report = evaluate_examples(WordScorer({"bomb", "attack"}), examples, "handmade", threshold=0.5,
                               out_dir=tmp_path, latency_sample=3)
    assert report.rows == 6 and report.unsafe_rows == 3
    assert report.recall == pytest.approx(2 / 3)
    assert report.precision == pytest.approx(2 / 3)
    assert report.f1 == pytest.approx(2 / 3)
    assert report.false_positive_rate == pytest.approx(1 / 3)
    assert report.category_recall == {"S1": (0.5, 2), "S9": (1.0, 1)}
    assert 0 < report.auprc < 1
    assert report.latency_ms_p50 > 0 and report.latency_ms_p95 >= report.latency_ms_p50
    with Image.open(report.curve_path) as png:
        assert png.size[0] > 100
    assert any("AUPRC" in line for line in report.lines())


def test_the_policy_figures_are_what_the_policy_does_with_the_same_scores():
    """The threshold figures say where the model stands; the policy figures say what the product does: here
    S1 (the only category this scorer names) blocks at >= 0.5, and a policy flagging the overall score at
    0.3 flags the 0.33 cake."""
    from guardforge.guard.policy import Policy

    examples = [_example("bomb bomb bomb", 1, "S9"), _example("bomb attack now", 1, "S1"),
                _example("quiet attack here x", 1, "S1"), _example("bomb shaped cake", 0),
                _example("attack bomb cake", 0), _example("a red fox", 0)]
    policy = Policy.model_validate({"name": "test", "default": {"threshold": 0.5, "action": "block"},
                                    "overall": {"threshold": 0.3, "action": "flag"}})
    report = evaluate_examples(WordScorer({"bomb", "attack"}), examples, "handmade", threshold=0.5, policy=policy)
    assert report.policy == "test"
    assert report.policy_blocked == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert report.policy_not_allowed == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert any(line.startswith("  policy test at the prompt checkpoint: blocked recall 0.667") for line in report.lines())


def test_all_unsafe_set_reports_recall_only(tmp_path):
    examples = [_example("bomb bomb", 1, "S9"), _example("fox fox", 1, "S1")]
    report = evaluate_examples(WordScorer({"bomb"}), examples, "all-unsafe", threshold=0.5, out_dir=tmp_path)
    assert report.recall == 0.5
    assert report.auprc is None and report.false_positive_rate is None and report.f1 is None
    assert report.curve_path is None
    assert "n/a" in report.lines()[1]


def test_cli_refuses_unknown_dataset():
    from typer.testing import CliRunner

    from guardforge.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["eval", "guard", "--dataset", "imagenet"])
    assert result.exit_code != 0
    assert "openai-mod" in result.output
