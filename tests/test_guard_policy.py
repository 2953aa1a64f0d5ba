"""Policies: thresholds, most-severe action, excluded and custom categories, checkpoints, file errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from guardforge.guard.policy import Policy, PolicyError, load_policy


def _policy(**data) -> Policy:
    return Policy.model_validate(data)


def test_threshold_is_inclusive_and_per_category():
    policy = _policy(default={"threshold": 0.5, "action": "block"}, categories={"S5": {"threshold": 0.9, "action": "flag"}})
    assert policy.decide({"S1": 0.49}) == ([], "allow")
    assert policy.decide({"S1": 0.5}) == (["S1"], "block")
    assert policy.decide({"S5": 0.8}) == ([], "allow")
    assert policy.decide({"S5": 0.95}) == (["S5"], "flag")


def test_most_severe_action_wins():
    policy = _policy(categories={"S5": {"action": "flag"}, "S12": {"action": "blur"}, "S1": {"action": "block"}})
    assert policy.decide({"S5": 0.9}) == (["S5"], "flag")
    assert policy.decide({"S5": 0.9, "S12": 0.9}) == (["S5", "S12"], "blur")
    assert policy.decide({"S12": 0.9, "S1": 0.6, "S5": 0.9}) == (["S1", "S5", "S12"], "block")


def test_checkpoint_specific_action_and_blur_means_block_where_nothing_is_delivered():
    policy = load_policy("default")
    assert policy.decide({"S12": 0.8}, checkpoint="output_image") == (["S12"], "blur")
    assert policy.decide({"S12": 0.8}, checkpoint="prompt") == (["S12"], "block")
    blur_all = _policy(default={"action": "blur"})
    # The engine reads an input image and the trainer its data as they are: a blur there would let them through.
    for checkpoint in ("prompt", "input_image", "training_data"):
        assert blur_all.decide({"S1": 0.9}, checkpoint=checkpoint)[1] == "block", checkpoint
    assert blur_all.decide({"S1": 0.9}, checkpoint="output_image")[1] == "blur"


def test_excluded_categories_are_never_violated():
    policy = _policy(excluded=["S14", "S8"])
    assert policy.decide({"S14": 1.0, "S8": 1.0}) == ([], "allow")
    assert "S8" not in policy.taxonomy.codes


def test_custom_categories_get_rules_and_prompt_codes():
    policy = _policy(custom=[{"code": "XD", "name": "Deepfakes", "description": "fake photos of real people"}],
                     categories={"XD": {"threshold": 0.3, "action": "flag"}})
    assert policy.taxonomy.codes[-1] == "XD"
    assert policy.taxonomy.prompt_codes()["XD"] == "S15"
    assert policy.decide({"XD": 0.35}) == (["XD"], "flag")


def test_overall_unsafe_counts_only_without_a_category():
    policy = load_policy("default")
    assert policy.decide({}, unsafe=0.9) == ([], "block")
    assert policy.decide({"S5": 0.9}, unsafe=0.9) == (["S5"], "flag")  # a category said why: its rule decides
    assert policy.decide({}, unsafe=0.1) == ([], "allow")
    assert load_policy("permissive").decide({}, unsafe=0.9) == ([], "flag")


def test_overall_threshold_model_is_the_backends_own():
    """The embedded text guard ships a calibrated threshold (0.401): `threshold: model` uses it, so the policy
    acts where the guard was measured; a backend without one gets 0.5; a number in the policy wins."""
    policy = load_policy("default")
    assert policy.overall.threshold == "model"
    assert policy.decide({}, unsafe=0.45, checkpoint="prompt", model_threshold=0.401) == ([], "block")
    assert policy.decide({}, unsafe=0.45, checkpoint="prompt") == ([], "allow")
    fixed = _policy(overall={"threshold": 0.6, "action": "block"})
    assert fixed.decide({}, unsafe=0.55, model_threshold=0.401) == ([], "allow")
    with pytest.raises(ValidationError):
        _policy(overall={"threshold": "auto"})


def test_an_excluded_category_does_not_come_back_through_the_overall_score():
    """A fixed-head backend scores S12 even when the policy excludes it, and its overall P(unsafe) covers it."""
    from guardforge.guard.backends.base import Scores
    from guardforge.guard.policy import judge

    policy = _policy(excluded=["S12", "S14"], overall={"threshold": 0.5, "action": "block"})
    nude = Scores({"S12": 0.97}, unsafe=0.97)
    assert judge(policy, nude, "output_image") == ({}, 0.0, [], "allow")
    violent_and_nude = Scores({"S1": 0.4, "S12": 0.97}, unsafe=0.97)
    assert judge(policy, violent_and_nude, "prompt")[1:] == (0.4, [], "allow")
    # Nothing excluded was scored: the overall score stands as the backend gave it.
    assert judge(policy, Scores({"S1": 0.4}, unsafe=0.9), "prompt")[1:] == (0.9, [], "block")


def test_the_hash_does_not_depend_on_the_order_of_excluded_codes():
    assert _policy(excluded=["S13", "S14"]).hash == _policy(excluded=["S14", "S13"]).hash


def test_shipped_policies():
    default, permissive, off = (load_policy(name) for name in ("default", "permissive", "off"))
    for code in ("S1", "S2", "S3", "S4", "S9", "S10", "S11"):
        assert default.decide({code: 0.9}, checkpoint="output_image")[1] == "block", code
    assert permissive.decide({"S4": 0.25})[1] == "block"
    for checkpoint in ("prompt", "input_image", "output_image", "training_data"):  # issue 18: S3 and S4 everywhere
        assert permissive.decide({"S3": 0.9}, checkpoint=checkpoint)[1] == "block", checkpoint
        assert permissive.decide({"S4": 0.9}, checkpoint=checkpoint)[1] == "block", checkpoint
    assert permissive.decide({"S1": 0.99, "S12": 0.99})[1] == "flag"
    assert not off.any_checkpoint_on and default.fail_mode == "closed"
    assert len({default.hash, permissive.hash, off.hash}) == 3


def test_hash_is_canonical():
    a = _policy(categories={"S1": {"action": "flag"}, "S2": {"action": "blur"}})
    b = _policy(categories={"S2": {"action": "blur"}, "S1": {"action": "flag"}})
    assert a.hash == b.hash and len(a.hash) == 64
    assert a.hash != _policy(categories={"S1": {"action": "block"}}).hash


@pytest.mark.parametrize("text, message", [
    ("categories: [unclosed", "not valid YAML"),
    ("- a list", "expected a mapping"),
    ("default: {threshold: 1.5}", "default.threshold"),
    ("excluded: [S99]", "S99"),
    ("categories: {S1: {action: explode}}", "categories.S1.action"),
    ("fail_mode: sideways", "fail_mode"),
    ("checkpoints: {output: false}", "checkpoints.output"),
    ("custom: [{code: S1, name: x, description: y}]", "already taken"),
    ("categories: {Q7: {action: flag}}", "unknown categories"),
])
def test_policy_file_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message) as caught:
        load_policy(path)
    assert "\n" not in str(caught.value)


def test_missing_policy_names_the_shipped_ones():
    with pytest.raises(PolicyError, match="default, permissive, off"):
        load_policy("strictest")
