"""The ``metric_mixup`` defense: metric-guided mix-up (ours; docs/defenses.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from toy import ToyModel, toy_data

import avharness
from avharness import FitContext, UserError
from avharness.cli import main
from avharness_plugins.defenses import robust_training
from avharness_plugins.defenses.robust_training import MetricMixup, build_metric_mixup

torch.set_num_threads(1)

N_TRAIN = 256  # toy train split (the toy data has no val split: the metric is measured on train)


def _ctx(seed=0):
    return FitContext(torch.device("cpu"), seed)


def _fresh(data, modalities=("audio", "video"), init_seed=0):
    torch.manual_seed(init_seed)
    return ToyModel(data.task, data.specs, modalities)


def test_registered_through_the_entry_point():
    registry = avharness.plugins.load_registry()
    assert registry.get("defense", "metric_mixup") is build_metric_mixup
    assert isinstance(build_metric_mixup(), avharness.Defense)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"alpha": 0}, r"^metric_mixup: alpha must be > 0"),
        ({"alpha": "wide"}, "^metric_mixup: alpha must be a finite number"),
        ({"prob": 1.5}, r"^metric_mixup: prob must be in \[0, 1\]"),
        ({"metric": "purity"}, "^metric_mixup: metric must be one of convexity, density, got 'purity'"),
        ({"latent": ""}, "^metric_mixup: latent must be a latent name"),
        ({"every": 0}, "^metric_mixup: every must be an integer >= 1"),
        ({"pairs_per_class": 2.5}, "^metric_mixup: pairs_per_class must be an integer >= 1"),
        ({"space": "wave"}, "^metric_mixup: space must be one of input, latent, got 'wave'"),
        ({"optimizer": "rmsprop"}, r"^metric_mixup: unknown optimizer 'rmsprop'"),
        ({"epochs": 0}, "^metric_mixup: epochs must be a positive integer"),
    ],
)
def test_bad_params_are_user_errors(params, match):
    with pytest.raises(UserError, match=match):
        build_metric_mixup(**params)


def test_latent_space_refuses_a_non_head_latent_and_unknown_latents_are_named():
    data = toy_data()
    with pytest.raises(UserError, match="metric_mixup: space latent mixes the latent the head reads .'fused'.; "
                                        "latent 'audio' is not it"):
        build_metric_mixup(space="latent", latent="audio", epochs=1).fit(_fresh(data), data, _ctx())
    with pytest.raises(UserError, match="metric_mixup: model ToyModel has no latent 'depth'; it has: audio, video, fused"):
        build_metric_mixup(latent="depth", epochs=2, batch_size=128).fit(_fresh(data), data, _ctx())


def test_same_seed_same_weights_other_seed_other_weights():
    data = toy_data()
    states = []
    for seed, global_seed in ((7, 1), (7, 2), (8, 1)):
        model = _fresh(data)
        torch.manual_seed(global_seed)
        build_metric_mixup(alpha=0.4, epochs=3, every=1, batch_size=64, pairs_per_class=50).fit(model, data, _ctx(seed))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("metric", ["convexity", "density"])
def test_deficits_are_recorded_and_costs_counted(metric):
    data = toy_data()
    facts = build_metric_mixup(metric=metric, epochs=4, every=2, batch_size=64, pairs_per_class=40,
                               lr=3e-3).fit(_fresh(data), data, _ctx())
    # warm-up epoch, then measured before epochs 2 and 4
    assert [m["before_epoch"] for m in facts["deficits"]] == [2, 4]
    for m in facts["deficits"]:
        assert m["split"] == "train" and m["latent"] == "fused" and set(m["deficit"]) == set(data.task.classes)
        assert all(0 <= d <= 1 for d in m["deficit"].values())
    # latents of the split each time, plus the head on the convexity interpolants
    per = N_TRAIN + (4 * 40 if metric == "convexity" else 0)
    assert facts["metric_forward_samples"] == 2 * per
    assert facts["forward_samples"] == 4 * N_TRAIN + 2 * per and facts["backward_samples"] == 4 * N_TRAIN
    assert 0 < facts["mixed_samples"] <= 4 * N_TRAIN
    assert sum(facts["mixed_per_class"].values()) == facts["mixed_samples"]
    assert facts["epoch_train_loss"][-1] < facts["epoch_train_loss"][0]
    json.dumps(facts)


def test_high_deficit_classes_are_mixed_more_and_with_their_own_class(monkeypatch):
    data = toy_data()
    fixed = {0: 0.95, 1: 0.95, 2: 0.1, 3: 0.1}  # convexity: classes 0, 1 convex, 2, 3 not

    def fake(lat, y, scorer, kind, **kw):
        return {"rules": ["argmax"], "per_class": {"argmax": dict(fixed)}}

    monkeypatch.setattr(robust_training, "convexity", fake)
    facts = build_metric_mixup(prob=0.5, epochs=5, every=1, batch_size=64).fit(_fresh(data), data, _ctx(3))
    deficit = facts["deficits"][0]["deficit"]
    assert deficit == pytest.approx({"c0": 0.05, "c1": 0.05, "c2": 0.9, "c3": 0.9})
    # warm-up epoch: prob 0.5 for all; then w = deficit / 0.475 → p = 0.053 for c0, c1 and 0.947 for c2, c3
    share = facts["mixed_share_per_class"]
    assert share["c2"] > 0.6 and share["c3"] > 0.6 and share["c0"] < 0.25 and share["c1"] < 0.25, share
    assert facts["same_class_partners"] > 0.5 * facts["mixed_samples"]


def test_sample_weights_normalise_to_mean_one_and_clip():
    d = MetricMixup(prob=0.8)
    d._deficit = torch.tensor([0.1, 0.3, float("nan")], dtype=torch.float64)
    member = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]]).bool()
    w, s = d._sample_weights(member)
    assert torch.allclose(w, torch.tensor([0.5, 1.5, 1.0, 1.0, 1.0], dtype=torch.float64))  # NaN class = mean
    assert torch.allclose(s, torch.tensor([0.1, 0.3, 0.2, 0.2, 0.2], dtype=torch.float64))
    d._deficit = None
    w, s = d._sample_weights(member)  # warm-up: plain mix-up
    assert (w == 1).all() and (s == 0).all()


def test_latent_space_mixing_trains_the_head():
    data = toy_data()
    model = _fresh(data)
    head_before = model.out.weight.detach().clone()
    facts = build_metric_mixup(space="latent", epochs=4, every=2, batch_size=32, lr=3e-3,
                               pairs_per_class=40).fit(model, data, _ctx())
    assert facts["space"] == "latent" and facts["mixed_samples"] > 0
    assert facts["epoch_train_loss"][-1] < facts["epoch_train_loss"][0]
    assert not torch.equal(head_before, model.out.weight)
    test = next(data.batches("test", 64))
    with torch.no_grad():
        assert data.task.correct(model(test.inputs), test.target).float().mean() > 0.8


@pytest.mark.parametrize("metric", ["convexity", "density"])
def test_multilabel_runs(metric):
    data = toy_data("multilabel")
    facts = build_metric_mixup(metric=metric, epochs=3, every=1, batch_size=64, pairs_per_class=40,
                               lr=3e-3).fit(_fresh(data), data, _ctx())
    assert len(facts["deficits"]) == 2
    assert all(d is None or 0 <= d <= 1 for m in facts["deficits"] for d in m["deficit"].values())
    assert facts["mixed_samples"] > 0 and math.isfinite(facts["final_train_loss"])
    assert facts["epoch_train_loss"][-1] < facts["epoch_train_loss"][0]


def test_non_head_latent_is_measured_with_a_probe():
    data = toy_data()
    facts = build_metric_mixup(latent="audio", epochs=2, batch_size=128, pairs_per_class=30).fit(
        _fresh(data), data, _ctx())
    assert facts["deficits"][0]["latent"] == "audio" and facts["metric_forward_samples"] == N_TRAIN


SUITE = """\
name: metric-mixup
seed: 1
data: {plugin: gaussian_av, n: 120}
eval: {batch_size: 64}
models:
  - {name: fused, plugin: linear_av}
defenses:
  - {plugin: metric_mixup, epochs: 2}
attacks:
  - {plugin: pgd, steps: 2}
threats:
  - {name: audio, audio: {norm: linf, eps: [0.3]}}
"""


def test_runs_from_a_suite(example, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    fit = json.loads((out / "report.json").read_text())["models"][0]["fit"]
    assert fit["epochs"] == 2 and fit["metric_split"] == "val" and len(fit["deficits"]) == 1
    assert all(d is None or 0 <= d <= 1 for d in fit["deficits"][0]["deficit"].values())
    assert fit["metric_forward_samples"] > 0 and fit["forward_samples"] > fit["backward_samples"]
