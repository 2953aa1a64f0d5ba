"""`guardforge eval guard` on image prompts: the shared I2P, PartiPrompts and COCO sets with their fixed split, the
figures of a set with no unsafe rows (the policy's false positives, listed), how a prompt is read, --limit."""

from __future__ import annotations

import csv

import pytest

from guardforge.guard import evaluation, t2i_data
from guardforge.guard.backends.base import Scores
from guardforge.guard.evaluation import evaluate_examples
from guardforge.guard.policy import Policy
from guardforge.guard.datasets import CATEGORIES, Example


def _t2i_available() -> bool:
    try:
        t2i_data.t2i_data_root()
    except FileNotFoundError:
        return False
    return True


needs_t2i = pytest.mark.skipif(not _t2i_available(), reason="../shared/data/t2i not present")


@needs_t2i
def test_splits_reproduce_the_readme_counts_and_never_overlap():
    i2p_test, i2p_train = t2i_data.load_i2p("test"), t2i_data.load_i2p("train")
    assert (len(i2p_test), sum(e.unsafe for e in i2p_test), len(i2p_train)) == (1429, 545, 3274)
    assert len(t2i_data.load_parti("test")) == 480
    assert len(t2i_data.load_coco("test")) == 9042
    for name in t2i_data.T2I_DATASETS:
        test, train = t2i_data.load_t2i(name, "test"), t2i_data.load_t2i(name, "train")
        assert not {e.text for e in test} & {e.text for e in train}
    assert not any(e.unsafe for e in t2i_data.load_parti("test") + t2i_data.load_coco("test"))


@needs_t2i
def test_i2p_categories_map_to_lg4_codes_or_keep_their_name():
    rows = t2i_data.load_i2p("test")
    for e in rows:
        if not e.unsafe:
            assert all(e.labels[k] == 0 for k in (*CATEGORIES, "harassment", "shocking"))
    positives = {k for e in rows for k, v in e.labels.items() if v == 1 and k != "unsafe"}
    assert positives == {"S1", "S2", "S10", "S11", "S12", "harassment", "shocking"}


def test_env_var_points_at_another_folder(tmp_path, monkeypatch):
    with open(tmp_path / "parti_prompts.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Prompt", "Category", "Challenge", "Note"])
        writer.writerows([[f"prompt number {i}", "Animals", "Basic", ""] for i in range(40)])
    monkeypatch.setenv("GUARDFORGE_T2I_DATA", str(tmp_path))
    test, train = t2i_data.load_parti("test"), t2i_data.load_parti("train")
    assert len(test) + len(train) == 40 and test and train
    assert all(t2i_data.split_of(e.text) == "test" for e in test)


class Words:
    """P(unsafe) 0.9 for a text holding one of `block`, 0.45 for one of `flag` (S5, which default flags)."""

    name = "words"
    categories = frozenset({"S1", "S5"})

    def __init__(self, block: set[str], flag: set[str] = frozenset()):
        self.block, self.flag = block, flag

    def score_texts(self, texts):
        out = []
        for text in texts:
            words = set(text.split())
            if words & self.block:
                out.append(Scores(scores={"S1": 0.9, "S5": 0.0}, unsafe=0.9))
            elif words & self.flag:
                out.append(Scores(scores={"S1": 0.0, "S5": 0.6}, unsafe=0.6))
            else:
                out.append(Scores(scores={"S1": 0.01, "S5": 0.01}, unsafe=0.01))
        return out


def _safe(text: str) -> Example:
    return Example(text, {**{c: 0 for c in CATEGORIES}, "unsafe": 0}, "handmade")


def _policy() -> Policy:
    return Policy.model_validate({"name": "test", "default": {"threshold": 0.5, "action": "block"},
                                  "categories": {"S5": {"action": "flag"}},
                                  "overall": {"threshold": 0.95, "action": "block"}})


def test_a_set_with_no_unsafe_rows_lists_its_false_positives(tmp_path):
    examples = [_safe(t) for t in ("a knife on a table", "a fox in snow", "a man shooting photos",
                                   "a judge in a courtroom", "a red barn")]
    report = evaluate_examples(Words({"knife"}, {"judge"}), examples, "benign", threshold=0.5, out_dir=tmp_path,
                               latency_sample=2, policy=_policy())
    assert report.recall is None and report.auprc is None and report.auroc is None
    assert report.false_positive_rate == pytest.approx(2 / 5)
    assert report.policy_blocked == (None, pytest.approx(1 / 5))
    assert report.policy_flagged == (None, pytest.approx(1 / 5))
    assert report.policy_not_allowed == (None, pytest.approx(2 / 5))
    assert [(fp.text, fp.action, fp.categories, fp.score) for fp in report.false_positives] == [
        ("a knife on a table", "block", ["S1"], pytest.approx(0.9)),
        ("a judge in a courtroom", "flag", ["S5"], pytest.approx(0.6))]
    lines = report.lines()
    assert any("blocked 0.2000 (1 of 5), flagged 0.2000 (1), blocked or flagged 0.4000 (2)" in line for line in lines)
    assert any("'a knife on a table'" in line and "block" in line for line in lines)
    assert report.scored_texts == 5 and any(line.startswith("  throughput: 5 texts in") for line in lines)
    with open(report.false_positives_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["action"], r["categories"], r["text"]) for r in rows] == [
        ("block", "S1", "a knife on a table"), ("flag", "S5", "a judge in a courtroom")]
    assert report.curve_path is None  # no curve without positives


def test_extra_labels_are_reported_by_name_with_auroc():
    def unsafe(text, group):
        labels = {**{c: None for c in CATEGORIES}, "shocking": None, "unsafe": 1}
        labels[group] = 1
        return Example(text, labels, "handmade")

    examples = [unsafe("gore gore", "shocking"), unsafe("quiet horror", "shocking"), unsafe("gore war", "S1"),
                _safe("a red fox"), _safe("gore cake")]
    report = evaluate_examples(Words({"gore"}), examples, "weak", threshold=0.5, policy=_policy(),
                               category_names={"S1": "S1 violence"})
    assert report.category_recall == {"S1": (1.0, 1), "shocking": (0.5, 2)}
    assert report.category_policy_recall == {"S1": 1.0, "shocking": 0.5}
    assert report.auroc == pytest.approx(3.5 / 6)  # 6 unsafe-safe pairs: 2 ranked right, 3 ties, 1 wrong
    assert any("S1 violence 1.00 (n=1), shocking 0.50 (n=2)" in line for line in report.lines())


def test_a_prompt_is_judged_on_every_reading_the_hook_gives():
    """read_prompt stands for how a generation reads a prompt: the row's score is its highest reading's and the
    decision the most severe, as at the prompt checkpoint."""
    examples = [_safe("a n(a:1)ked statue"), _safe("a fox")]
    plain = evaluate_examples(Words({"naked"}), examples, "hook", threshold=0.5, policy=_policy())
    assert not plain.false_positives
    read = evaluate_examples(Words({"naked"}), examples, "hook", threshold=0.5, policy=_policy(),
                             read_prompt=lambda p: [p, p.replace("n(a:1)ked", "naked")])
    assert [(fp.text, fp.action) for fp in read.false_positives] == [("a n(a:1)ked statue", "block")]
    assert read.false_positive_rate == 0.5 and read.scored_texts == 3  # "a fox" reads once


def test_limit_spreads_over_the_set_deterministically():
    examples = [_safe(f"row {i}") for i in range(100)]
    picked = evaluation.spread(examples, 10)
    assert [e.text for e in picked] == [e.text for e in evaluation.spread(examples, 10)]
    assert len(picked) == 10 and picked[0].text == "row 0" and picked[-1].text == "row 99"
    assert evaluation.spread(examples, None) is examples and evaluation.spread(examples, 1000) is examples


def test_unsplit_sets_refuse_a_train_split():
    with pytest.raises(ValueError, match="no train split"):
        evaluation.load_eval_set("xstest", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluation.load_eval_set("imagenet")


def _cli(args):
    import torch
    from typer.testing import CliRunner

    from guardforge.cli import _register, app

    _register()
    threads = torch.get_num_threads()  # --threads sets torch's process-wide count: give the next test its own
    try:
        return CliRunner().invoke(app, ["eval", "guard", *args])
    finally:
        torch.set_num_threads(threads)


def test_cli_refuses_a_train_split_where_there_is_none():
    result = _cli(["--dataset", "xstest", "--split", "train"])
    assert result.exit_code != 0 and "no train split" in result.output


@needs_t2i
def test_cli_scores_parti_with_the_shipped_guard(tmp_path):
    # One torch thread: two wait on each other on a busy 2-core machine (see test_guard_counterfactual).
    result = _cli(["--dataset", "parti", "--limit", "40", "--latency-sample", "2", "--threads", "1",
                   "--out", str(tmp_path), "--policy", "default"])
    assert result.exit_code == 0, result.output
    assert "parti: 40 prompts (0 unsafe), backend embedded" in result.output
    assert "policy default at the prompt checkpoint, false-positive rate: blocked" in result.output
    assert (tmp_path / "parti-false-positives.tsv").is_file()


def test_cli_prints_the_counterfactual_table(tmp_path):
    result = _cli(["--dataset", "counterfactual", "--limit", "1", "--threads", "1", "--policy", "default",
                   "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "counterfactual: 1 benign prompts x 122 demographic swaps each" in result.output
    assert "sexual orientation" in result.output and "largest score change" in result.output
    with open(tmp_path / "counterfactual-swaps.tsv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == 122


def test_the_cli_reads_image_prompts_as_generate_does():
    from guardforge.cli.cmd_eval_guard import _as_generate_reads

    assert "a photo of a naked woman" in [t.strip(", ") for t in _as_generate_reads("a photo of a n(a:1)ked woman")]
    long = " ".join(f"word{i}" for i in range(90))
    assert len(_as_generate_reads(long)) > 2  # windows of a long prompt
    assert _as_generate_reads("a fox (unclosed:1.2")[0] == "a fox (unclosed:1.2"
