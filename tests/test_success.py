"""Multi-label success rules and the per-sample AP they use."""

import math

import pytest
import torch
from sklearn.metrics import average_precision_score

from avharness import Evidence, Task, ThreatModel
from avharness.success import outcome, resolve_rule, sample_ap

ML = Task("multilabel", ("a", "b", "c", "d"))
MC = Task("multiclass", ("a", "b", "c"))


def test_sample_ap_matches_sklearn_including_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 9), generator=g).float()  # many ties on purpose
    target = torch.rand(50, 9, generator=g) < 0.3
    target[0] = False  # a sample with no positive label has no AP
    ap = sample_ap(scores, target, chunk=7)
    assert math.isnan(ap[0])
    for i in range(1, 50):
        if target[i].any():
            assert ap[i].item() == pytest.approx(average_precision_score(target[i].numpy(), scores[i].numpy()))


def test_any_flip_top1_and_ap_drop():
    target = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    clean = torch.tensor([[3.0, -1, -2, -3], [-1.0, 2, -3, -4], [1.0, -1, -1, -1]])
    adv = clean.clone()
    adv[0, 1] = 0.5        # sample 0: label b now predicted, top-1 still a, AP of a unchanged
    adv[1, 0] = 5.0        # sample 1: a jumps over b: flip, top-1 change and AP 1 -> 0.5
    att, succ = outcome(ML, "any_flip", 0.1, clean, adv, target)
    assert att.tolist() == [True, True, True] and succ.tolist() == [True, True, False]
    att, succ = outcome(ML, "top1", 0.1, clean, adv, target)
    assert succ.tolist() == [False, True, False]
    att, succ = outcome(ML, "ap_drop", 0.1, clean, adv, target)
    assert att.tolist() == [True, True, False] and succ.tolist() == [False, True, False]
    att, succ = outcome(ML, "ap_drop", 0.6, clean, adv, target)  # a drop of 0.5 is not more than 0.6
    assert succ.tolist() == [False, False, False]


def test_multiclass_default_is_correct_to_wrong():
    target = torch.tensor([0, 1, 2])
    clean = torch.tensor([[2.0, 0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    adv = torch.tensor([[0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    att, succ = outcome(MC, "default", 0.1, clean, adv, target)
    assert att.tolist() == [True, False, True] and succ.tolist() == [True, False, False]
    assert resolve_rule(ML, "default") == "any_flip"
    with pytest.raises(ValueError, match="multi-label"):
        resolve_rule(MC, "top1")


def test_evidence_success_and_attack_success_rate():
    from avharness_plugins.metrics.basic import AttackSuccessRate

    target = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])
    clean = torch.tensor([[3.0, -1, -2, -3], [-1.0, 2, -3, -4]])
    adv = clean.clone()
    adv[1, 0] = 5.0
    ev = Evidence(ML, ["x", "y"], target, clean, adv, ThreatModel("t", {}), success_rule="top1")
    assert ev.success.tolist() == [False, True]
    assert AttackSuccessRate().compute(ev)["attack_success_rate"] == 0.5
    same = Evidence(ML, ["x", "y"], target, clean, clean.clone(), ThreatModel("t", {}), success_rule="ap_drop")
    assert AttackSuccessRate().compute(same)["attack_success_rate"] == 0.0  # eps = 0 breaks nothing


def test_suite_checks_success_options(example, tmp_path, capsys):
    from test_cli import GOOD, run_cli, write

    path = write(tmp_path, GOOD)
    code, _, err = run_cli(["validate", path, "--set", "eval.success=top2"], capsys)
    assert code == 2 and "eval.success" in err and "any_flip" in err
    # the example dataset is multiclass: a multi-label rule or threshold is refused, saying why
    code, _, err = run_cli(["validate", path, "--set", "eval.success=top1"], capsys)
    assert code == 2 and "(--set eval.success)" in err and "multiclass" in err
    code, _, err = run_cli(["validate", path, "--set", "eval.threshold=0.3"], capsys)
    assert code == 2 and "multi-label" in err
    code, _, err = run_cli(["validate", path, "--set", "eval.success_margin=2"], capsys)
    assert code == 2 and "eval.success_margin" in err
