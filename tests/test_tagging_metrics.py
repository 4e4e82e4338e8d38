"""Tagging metrics (mAP, mAUC, d′ in two modes) and label flips, on hand-built Evidence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from avharness import Budget, Evidence, Metric, Task, ThreatModel, UserError
from avharness.conformance import check_plugin
from avharness.plugins import get_registry
from avharness.store import json_safe
from avharness_plugins.metrics.tagging import (
    AUC_CLIP,
    LabelFlips,
    MultiLabelOnly,
    Tagging,
    build_label_flips,
    build_tagging,
    dprime,
    gas_eval_per_class,
    register_metrics,
    sklearn_per_class,
)

THREAT = ThreatModel("t", {"audio": Budget("linf", 0.1, (-1.0, 1.0))})
MODES = ("sklearn", "gas_eval")
DPRIME_CAP = math.sqrt(2) * norm.ppf(1 - AUC_CLIP)


def ml_evidence(target, clean, adv=None, threshold=0.0, classes=None):
    target, clean = torch.as_tensor(target).float(), torch.as_tensor(clean, dtype=torch.float64)
    adv = clean.clone() if adv is None else torch.as_tensor(adv, dtype=torch.float64)
    classes = classes or tuple(f"c{i}" for i in range(target.shape[1]))
    task = Task("multilabel", tuple(classes), threshold)
    return Evidence(task, [f"s{i}" for i in range(len(target))], target, clean, adv, THREAT)


def random_case(n=300, c=12, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < np.linspace(0.02, 0.5, c)
    y[:, 0] = False  # a class with no positive
    y[:, 1] = True  # a class with no negative
    s = rng.normal(size=(n, c)) + 1.5 * y
    if ties:
        s = np.round(s * 2) / 2
    adv = s + rng.normal(size=(n, c))
    return y, s, adv


def reference_gas_eval(scores, truth):
    """A plain loop over the grouped ROC, straight from the description in docs/seed_code.md §4.1."""
    ap, auc = [], []
    for k in range(truth.shape[1]):
        s, y = scores[:, k], truth[:, k].astype(bool)
        if not y.any():
            continue
        tp = fp = 0
        points = [(0, 0)]
        for v in sorted(set(s), reverse=True):  # one cut-off per distinct score
            tp += int(y[s == v].sum())
            fp += int((~y[s == v]).sum())
            points.append((tp, fp))
        a = sum(t / (t + f) * (t - pt) for (pt, _), (t, f) in zip(points, points[1:])) / tp
        u = sum((t + pt) * (f - pf) for (pt, pf), (t, f) in zip(points, points[1:])) / (2 * tp * fp) if fp else math.nan
        ap.append(a)
        auc.append(u)
    return float(np.mean(ap)), float(np.mean(auc))


# ------------------------------------------------------------------ registration and parameters


def test_registered_and_protocol():
    names = {}
    register_metrics(register=lambda name, factory: names.__setitem__(name, factory))
    assert set(names) == {"tagging", "label_flips"}
    for factory in names.values():
        assert isinstance(factory(), Metric)
    reg = get_registry()
    assert reg.get("metric", "tagging") is build_tagging and reg.get("metric", "label_flips") is build_label_flips


def test_mode_is_checked():
    assert build_tagging().mode == "sklearn"
    assert build_tagging("gas_eval").mode == "gas_eval"
    with pytest.raises(ValueError, match="mode must be one of sklearn, gas_eval"):
        build_tagging("sklearn_macro")


def test_directions():
    m = Tagging().higher_is_better
    for v in ("map", "mauc", "dprime"):
        assert m[f"clean_{v}"] and m[f"robust_{v}"] and not m[f"{v}_drop"]
    f = LabelFlips().higher_is_better
    assert not f["label_flip_rate"] and not f["samples_flipped"] and f["clean_exact_match"] and f["robust_exact_match"]


# ------------------------------------------------------------------ agreement with sklearn and the seed's definition


def test_sklearn_mode_matches_sklearn_per_class():
    y, s, adv = random_case()
    out = Tagging("sklearn").compute(ml_evidence(y, s, adv))
    scored = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    assert len(scored) == y.shape[1] - 2  # the no-positive and the no-negative class are left out
    for scores, which in ((s, "clean"), (adv, "robust")):
        ap = np.mean([average_precision_score(y[:, k], scores[:, k]) for k in scored])
        auc = np.mean([roc_auc_score(y[:, k], scores[:, k]) for k in scored])
        assert out[f"{which}_map"] == pytest.approx(ap, abs=1e-12)
        assert out[f"{which}_mauc"] == pytest.approx(auc, abs=1e-12)
        assert out[f"{which}_dprime"] == pytest.approx(math.sqrt(2) * norm.ppf(auc), abs=1e-12)
    assert out["classes_scored"] == len(scored)
    assert out["map_drop"] == pytest.approx(out["clean_map"] - out["robust_map"])


@pytest.mark.parametrize("ties", [False, True])
def test_gas_eval_per_class_equals_sklearn_where_defined(ties):
    y, s, _ = random_case(n=400, c=20, seed=3, ties=ties)
    if not ties:
        assert all(len(np.unique(s[:, k])) == len(s) for k in range(s.shape[1]))
    ga, gu = gas_eval_per_class(s, y, chunk=7)  # a chunk that does not divide C
    sa, su = sklearn_per_class(s, y)
    np.testing.assert_array_equal(np.isnan(ga), np.isnan(sa))
    np.testing.assert_array_equal(np.isnan(gu), np.isnan(su))
    np.testing.assert_allclose(ga, sa, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(gu, su, atol=1e-12, equal_nan=True)
    for k in range(y.shape[1]):
        if 0 < y[:, k].sum() < len(y):
            assert gu[k] == pytest.approx(roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
            assert ga[k] == pytest.approx(average_precision_score(y[:, k], s[:, k]), abs=1e-12)


def test_gas_eval_matches_the_loop_reference():
    y, s, _ = random_case(n=120, c=9, seed=5, ties=True)
    y[:, 1] = y[:, 2]  # no all-positive class, so the reference's mAUC is a number
    out = Tagging("gas_eval").compute(ml_evidence(y, s))
    ap, auc = reference_gas_eval(s, y)
    assert out["clean_map"] == pytest.approx(ap, abs=1e-12)
    assert out["clean_mauc"] == pytest.approx(auc, abs=1e-12)
    assert out["classes_scored"] == 8


# ------------------------------------------------------------------ ties and degenerate classes: how the modes differ


def test_tie_case_by_hand():
    # scores 3 3 | 2 2 | 1 | 0 with truth 1 0 | 1 0 | 0 | 1 (P = 3, Q = 3). Grouped ROC points
    # (TP, FP): (0,0) (1,1) (2,2) (2,3) (3,3). AP = (1/2·1 + 2/4·1 + 3/6·1) / 3 = 1/2.
    # AUC = [(1+0)·1 + (2+1)·1 + (2+2)·1 + (3+2)·0] / (2·3·3) = 8/18 = 4/9.
    y = [[1], [0], [1], [0], [0], [1]]
    s = [[3.0], [3.0], [2.0], [2.0], [1.0], [0.0]]
    for mode in MODES:
        out = Tagging(mode).compute(ml_evidence(y, s))
        assert out["clean_map"] == pytest.approx(0.5, abs=1e-15)
        assert out["clean_mauc"] == pytest.approx(4 / 9, abs=1e-15)
        assert out["clean_dprime"] == pytest.approx(math.sqrt(2) * norm.ppf(4 / 9), abs=1e-12)
    # Grouping is what matters: breaking the ties with positives first would give AP (1 + 2/3 + 1/2)/3.
    broken = np.array(s)[:, 0] + 1e-9 * np.array(y)[:, 0]
    assert average_precision_score(np.array(y)[:, 0], broken) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)


def test_modes_differ_only_on_a_class_without_negatives():
    # c0: truth 1 0 1 0, scores 4 3 2 1: AP (1 + 2/3)/2 = 5/6; AUC 3/4 (3 of 4 pos-neg pairs in order).
    # c1: no positive: left out by both modes. c2: every sample positive: AP 1, AUC 0/0.
    y = [[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]]
    s = [[4, 0.3, 1], [3, 0.1, 2], [2, 0.4, 3], [1, 0.2, 4]]
    sk = Tagging("sklearn").compute(ml_evidence(y, s))
    assert sk["classes_scored"] == 1
    assert sk["clean_map"] == pytest.approx(5 / 6) and sk["clean_mauc"] == pytest.approx(3 / 4)
    assert sk["clean_dprime"] == pytest.approx(math.sqrt(2) * norm.ppf(0.75))  # 0.95387
    ge = Tagging("gas_eval").compute(ml_evidence(y, s))
    assert ge["classes_scored"] == 2
    assert ge["clean_map"] == pytest.approx((5 / 6 + 1) / 2)  # the all-positive class counts with AP 1
    assert math.isnan(ge["clean_mauc"]) and math.isnan(ge["clean_dprime"])  # its AUC is 0/0, as in the seed
    # Without the all-positive class the modes agree exactly; the no-positive class changes nothing.
    y2 = [row[:2] for row in y]
    s2 = [row[:2] for row in s]
    a, b = Tagging("sklearn").compute(ml_evidence(y2, s2)), Tagging("gas_eval").compute(ml_evidence(y2, s2))
    assert a == pytest.approx(b) and a["classes_scored"] == b["classes_scored"] == 1
    d = Tagging("gas_eval").details(ml_evidence(y, s))["per_class"]
    assert math.isnan(d["c1"]["clean_ap"]) and not d["c1"]["scored"] and d["c1"]["positives"] == 0
    assert d["c2"]["clean_ap"] == 1.0 and math.isnan(d["c2"]["clean_auc"]) and d["c2"]["scored"]
    assert not Tagging("sklearn").details(ml_evidence(y, s))["per_class"]["c2"]["scored"]


def test_logits_avoid_sigmoid_saturation_ties():
    # Distinct logits whose float32 sigmoids are all exactly 1.0: as probabilities they would tie.
    logits = torch.tensor([[40.0], [30.0], [20.0], [-1.0]], dtype=torch.float64)
    assert len(torch.sigmoid(logits.float()).unique()) == 2
    y = [[0], [1], [1], [0]]
    out = Tagging("gas_eval").compute(ml_evidence(y, logits))
    # ranked 0 1 1 0: AP = (1/2 + 2/3)/2; on tied probabilities it would be (2/3·2)/2 = 2/3.
    assert out["clean_map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["clean_mauc"] == pytest.approx(2 / 4)


# ------------------------------------------------------------------ eps = 0, d′, details


@pytest.mark.parametrize("mode", MODES)
def test_eps_zero_gives_no_drop_and_no_flip(mode):
    y, s, _ = random_case(seed=7)
    y[:, 1] = y[:, 3]
    ev = ml_evidence(y, s, s.copy())
    out = Tagging(mode).compute(ev)
    for v in ("map", "mauc", "dprime"):
        assert out[f"robust_{v}"] == out[f"clean_{v}"] and out[f"{v}_drop"] == 0.0
    flips = LabelFlips().compute(ev)
    assert flips["label_flip_rate"] == 0.0 and flips["samples_flipped"] == 0.0
    assert flips["robust_exact_match"] == flips["clean_exact_match"]
    assert all(v["flips"] == 0 for v in LabelFlips().details(ev)["per_class"].values())
    assert all(v["ap_delta"] == 0.0 for v in Tagging(mode).details(ev)["per_class"].values() if v["scored"])


@pytest.mark.parametrize("mode", MODES)
def test_dprime_perfect_chance_and_inverted(mode):
    y = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1]])
    perfect = ml_evidence(y, 2.0 * y - 1, 1.0 - 2.0 * y)  # adversarial: perfectly inverted
    out = Tagging(mode).compute(perfect)
    assert out["clean_map"] == 1.0 and out["clean_mauc"] == 1.0
    assert out["clean_dprime"] == pytest.approx(DPRIME_CAP) and math.isfinite(out["clean_dprime"])
    assert out["robust_mauc"] == 0.0 and out["robust_dprime"] == pytest.approx(-DPRIME_CAP)
    assert DPRIME_CAP == pytest.approx(6.7224, abs=1e-4)
    chance = Tagging(mode).compute(ml_evidence(y, np.zeros(y.shape)))  # all scores tied: one ROC point
    assert chance["clean_mauc"] == 0.5 and chance["clean_dprime"] == 0.0
    assert chance["clean_map"] == pytest.approx(0.5)  # precision = prevalence of each class
    assert dprime(math.nan) != dprime(math.nan)


@pytest.mark.parametrize("mode", MODES)
def test_details_json_and_consistent(mode):
    y, s, adv = random_case(seed=11)
    ev = ml_evidence(y, s, adv)
    m = Tagging(mode)
    out, det = m.compute(ev), m.details(ev)
    json.dumps(det, allow_nan=True)
    json.dumps(json_safe(det), allow_nan=False)  # what the store writes: NaN -> null
    assert det["mode"] == mode and det["score"] == "logits" and det["classes_scored"] == out["classes_scored"]
    pc = det["per_class"]
    assert list(pc) == list(ev.task.classes)
    scored = [v for v in pc.values() if v["scored"]]
    assert len(scored) == det["classes_scored"]
    assert np.mean([v["ap_delta"] for v in scored]) == pytest.approx(out["map_drop"], abs=1e-12)
    assert np.mean([v["clean_ap"] for v in scored]) == pytest.approx(out["clean_map"], abs=1e-12)
    assert np.mean([v["robust_auc"] for v in scored]) == pytest.approx(out["robust_mauc"], abs=1e-12, nan_ok=True)
    assert all(v["ap_delta"] == pytest.approx(v["clean_ap"] - v["robust_ap"]) for v in scored)
    assert [v["positives"] for v in pc.values()] == y.sum(0).tolist()


def test_details_keys_survive_duplicate_class_names():
    det = Tagging().details(ml_evidence([[1, 0], [0, 1]], [[1, 0], [0, 1]], classes=("x", "x")))
    assert list(det["per_class"]) == ["0:x", "1:x"]


def test_empty_evidence():
    ev = ml_evidence(torch.zeros(0, 3), torch.zeros(0, 3))
    for mode in MODES:
        out = Tagging(mode).compute(ev)
        assert out["classes_scored"] == 0 and math.isnan(out["clean_map"]) and math.isnan(out["robust_dprime"])
    assert LabelFlips().compute(ev) == {k: 0.0 for k in LabelFlips().higher_is_better}


def test_shape_mismatch_is_refused():
    ev = ml_evidence([[1, 0]], [[1.0, 0.0]])
    ev.adv_logits = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="adv_logits has shape"):
        Tagging().compute(ev)


# ------------------------------------------------------------------ multiclass: macro-mAP


def test_multiclass_macro_map():
    task = Task("multiclass", ("a", "b", "c"))
    g = torch.Generator().manual_seed(0)
    target = torch.arange(30) % 3
    clean = torch.randn(30, 3, generator=g) + 1.5 * torch.nn.functional.one_hot(target, 3)
    adv = torch.randn(30, 3, generator=g)
    # shift each sample's logits by its own constant: softmax (and the prediction) are unchanged
    clean = clean + 10 * torch.randn(30, 1, generator=g)
    ev = Evidence(task, [str(i) for i in range(30)], target, clean, adv, THREAT)
    onehot = torch.nn.functional.one_hot(target, 3).numpy()
    for mode in MODES:
        m = Tagging(mode)
        out = m.compute(ev)
        for logits, which in ((clean, "clean"), (adv, "robust")):
            proba = torch.softmax(logits.double(), 1).numpy()
            assert out[f"{which}_map"] == pytest.approx(average_precision_score(onehot, proba, average="macro"), abs=1e-12)
            assert out[f"{which}_mauc"] == pytest.approx(roc_auc_score(onehot, proba, average="macro"), abs=1e-12)
        assert out["classes_scored"] == 3
        det = m.details(ev)
        assert det["score"] == "log_softmax" and [v["positives"] for v in det["per_class"].values()] == [10, 10, 10]
    # ranking by the raw (shifted) logits would be another, arbitrary answer
    raw = average_precision_score(onehot, clean.numpy(), average="macro")
    assert abs(raw - Tagging().compute(ev)["clean_map"]) > 1e-3


def test_label_flips_refuses_multiclass():
    task = Task("multiclass", ("a", "b"))
    ev = Evidence(task, ["0", "1"], torch.tensor([0, 1]), torch.eye(2), torch.eye(2), THREAT)
    for call in (LabelFlips().compute, LabelFlips().details):
        with pytest.raises(ValueError, match="multi-label metric.*use the accuracy metric") as info:
            call(ev)
        assert isinstance(info.value, UserError) and isinstance(info.value, MultiLabelOnly)


# ------------------------------------------------------------------ label flips


def test_label_flips_known_answer():
    # threshold 0.5; target / clean decisions / adversarial decisions per sample:
    #  s0: 1 0 1 / 1 0 1 / 1 0 1   exact, no flip
    #  s1: 0 1 0 / 0 1 0 / 1 1 0   exact clean, one flip (c0 off->on)
    #  s2: 1 1 0 / 1 0 0 / 0 0 1   wrong clean, two flips (c0 on->off, c2 off->on)
    #  s3: 0 0 0 / 0 0 0 / 0 0 0   exact, no flip (0.5 itself is not above the threshold)
    target = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]]
    clean = [[2, 0, 1], [0, 3, 0], [1, 0.5, 0], [0.5, 0, 0]]
    adv = [[2, 0, 0.9], [0.6, 3, 0], [0.2, 0.1, 0.7], [0.5, 0.4, 0.5]]
    ev = ml_evidence(target, clean, adv, threshold=0.5)
    out = LabelFlips().compute(ev)
    assert out["label_flip_rate"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 0) / 4)
    assert out["samples_flipped"] == 0.5
    assert out["clean_exact_match"] == 0.75 and out["robust_exact_match"] == 0.5
    assert out["samples_flipped"] == float(ev.success.double().mean())  # the any_flip success rule
    det = LabelFlips().details(ev)
    json.dumps(det, allow_nan=False)
    assert det["threshold"] == 0.5
    assert det["per_class"] == {
        "c0": {"flips": 2, "on_to_off": 1, "off_to_on": 1, "positives": 2},
        "c1": {"flips": 0, "on_to_off": 0, "off_to_on": 0, "positives": 2},
        "c2": {"flips": 1, "on_to_off": 0, "off_to_on": 1, "positives": 1},
    }
    total = sum(v["flips"] for v in det["per_class"].values())
    assert total == pytest.approx(out["label_flip_rate"] * 4 * 3)


# ------------------------------------------------------------------ the conformance kit


@pytest.mark.parametrize("mode", MODES)
def test_conformance_kit_passes_for_tagging(mode):
    results = check_plugin("tagging", get_registry(), params={"mode": mode})
    assert results and all(ok for _, ok, _ in results), results


def test_conformance_kit_label_flips_refuses_only_clearly():
    # The kit feeds multiclass evidence, which label_flips refuses by design.
    results = check_plugin("label_flips", get_registry())
    for name, ok, detail in results:
        assert ok or "refused: label_flips is a multi-label metric" in detail, (name, detail)


def test_moderate_size_modes_agree():
    y, s, adv = random_case(n=2000, c=60, seed=13)
    y[:, 1] = y[:, 5]
    ev = ml_evidence(y, s, adv)
    a, b = Tagging("sklearn").compute(ev), Tagging("gas_eval").compute(ev)
    assert a == pytest.approx(b, abs=1e-12)
