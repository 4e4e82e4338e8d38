"""Built-in metrics on hand-built Evidence with known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avharness import Budget, Evidence, Metric, Task, ThreatModel
from avharness_plugins.metrics.basic import build_accuracy, build_attack_success_rate, build_perturbation, register_metrics

MC = Task("multiclass", ("a", "b", "c"))
ML = Task("multilabel", ("x", "y"))
THREAT = ThreatModel("t", {"audio": Budget("linf", 0.1, (-1.0, 1.0))})


def onehot_logits(pred, n=3):
    return torch.nn.functional.one_hot(torch.tensor(pred), n).float() * 5


def mc_evidence(clean_pred, adv_pred, target, perturbation=None):
    return Evidence(MC, [f"s{i}" for i in range(len(target))], torch.tensor(target), onehot_logits(clean_pred),
                    onehot_logits(adv_pred), THREAT, perturbation or {})


def test_registered_and_protocol():
    names = {}
    register_metrics(register=lambda name, factory: names.__setitem__(name, factory))
    assert set(names) == {"accuracy", "attack_success_rate", "perturbation"}
    for factory in names.values():
        assert isinstance(factory(), Metric)


def test_accuracy_known_answer():
    # targets 0 1 2 0 1; clean right on 0,1,2,3; adversarial right on 0,2,4 (4 was wrong clean).
    ev = mc_evidence([0, 1, 2, 0, 2], [0, 0, 2, 1, 1], [0, 1, 2, 0, 1])
    out = build_accuracy().compute(ev)
    assert out == {"clean_accuracy": pytest.approx(0.8), "robust_accuracy": pytest.approx(0.4)}
    assert set(out) == set(build_accuracy().higher_is_better)


def test_robust_counts_only_clean_correct_samples():
    # Sample 1 is wrong when clean but "right" after the attack: it is not robust.
    ev = mc_evidence([0, 2], [0, 1], [0, 1])
    out = build_accuracy().compute(ev)
    assert out["clean_accuracy"] == 0.5 and out["robust_accuracy"] == 0.5
    assert (ev.robust_correct <= ev.clean_correct).all()


def test_attack_success_rate_known_answer():
    ev = mc_evidence([0, 1, 2, 0, 2], [0, 0, 2, 1, 1], [0, 1, 2, 0, 1])
    # clean-correct: samples 0..3; the attack broke 1 and 3 -> 2 / 4.
    assert build_attack_success_rate().compute(ev) == {"attack_success_rate": pytest.approx(0.5)}
    assert build_attack_success_rate().higher_is_better == {"attack_success_rate": False}


def test_attack_success_rate_without_clean_correct_samples_is_zero():
    ev = mc_evidence([1, 2], [0, 1], [0, 1])
    assert build_attack_success_rate().compute(ev) == {"attack_success_rate": 0.0}


def test_empty_evidence_gives_zeros_not_nan():
    ev = Evidence(MC, [], torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, 3), THREAT)
    assert build_accuracy().compute(ev) == {"clean_accuracy": 0.0, "robust_accuracy": 0.0}
    assert build_attack_success_rate().compute(ev) == {"attack_success_rate": 0.0}


def test_multilabel_uses_exact_match():
    target = torch.tensor([[1, 0], [1, 1], [0, 0]]).float()
    clean = torch.tensor([[3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]])  # all exact
    adv = torch.tensor([[3.0, -3.0], [3.0, -1.0], [1.0, -3.0]])  # only sample 0 still exact
    ev = Evidence(ML, ["a", "b", "c"], target, clean, adv, THREAT)
    assert build_accuracy().compute(ev) == {"clean_accuracy": 1.0, "robust_accuracy": pytest.approx(1 / 3)}
    assert build_attack_success_rate().compute(ev)["attack_success_rate"] == pytest.approx(2 / 3)


def test_perturbation_known_answer():
    pert = {
        "audio": {"linf": torch.tensor([0.1, 0.05, 0.0]), "l2": torch.tensor([1.0, 0.5, 0.0]),
                  "signal_l2": torch.tensor([10.0, 50.0, 3.0])},
        "video": {"linf": torch.tensor([0.02, 0.04, 0.03]), "l2": torch.tensor([0.2, 0.4, 0.3]),
                  "signal_l2": torch.tensor([2.0, 4.0, 0.0])},
    }
    ev = mc_evidence([0, 1, 2], [0, 1, 2], [0, 1, 2], pert)
    metric = build_perturbation()
    out = metric.compute(ev)
    assert out["audio_linf_mean"] == pytest.approx(0.05)
    assert out["audio_linf_max"] == pytest.approx(0.1)
    assert out["audio_l2_mean"] == pytest.approx(0.5)
    assert out["audio_l2_max"] == pytest.approx(1.0)
    # SNRs 20 dB and 40 dB; the unperturbed third sample (infinite SNR) is left out.
    assert out["audio_snr_db_mean"] == pytest.approx(30.0)
    assert out["video_linf_mean"] == pytest.approx(0.03) and out["video_l2_max"] == pytest.approx(0.4)
    # 10 dB twice; the zero-signal third sample is left out.
    assert out["video_snr_db_mean"] == pytest.approx(20.0)
    assert all(math.isfinite(v) for v in out.values())
    assert set(out) <= set(metric.higher_is_better)
    for key in out:
        assert metric.higher_is_better[key] is not key.endswith("_snr_db_mean")


def test_perturbation_without_any_perturbed_sample():
    pert = {"audio": {"linf": torch.zeros(2), "l2": torch.zeros(2), "signal_l2": torch.ones(2)}}
    out = build_perturbation().compute(mc_evidence([0, 1], [0, 1], [0, 1], pert))
    assert out["audio_linf_max"] == 0.0 and out["audio_l2_mean"] == 0.0
    assert math.isnan(out["audio_snr_db_mean"])


def test_perturbation_directions_for_any_modality_name():
    hib = build_perturbation().higher_is_better
    assert hib["depth_l2_max"] is True and hib.get("depth_snr_db_mean") is False
    assert "depth_linf_mean" in hib and "depth_other" not in hib and hib.get("_l2_max") is None
    with pytest.raises(KeyError):
        hib["nonsense"]
    json.dumps(hib)  # still a plain dict to serialise


def test_perturbation_directions_gain_computed_keys():
    # The runner copies directions with dict.update after compute: every emitted key must be stored.
    metric = build_perturbation()
    pert = {"depth": {"linf": torch.ones(1), "l2": torch.ones(1), "signal_l2": torch.ones(1)}}
    out = metric.compute(mc_evidence([0], [0], [0], pert))
    copied = {}
    copied.update(metric.higher_is_better)
    assert set(out) <= set(copied)
    assert copied["depth_snr_db_mean"] is False and copied["depth_l2_mean"] is True


def test_only_attacked_modalities_are_reported():
    out = build_perturbation().compute(mc_evidence([0], [0], [0], {}))
    assert out == {}
