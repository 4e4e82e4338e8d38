"""The universal perturbation: fitted on another split, projected, one perturbation for all samples."""

import json

import pytest
import torch
from test_cli import GOOD, write
from toy import sample_rng, test_batch, threat, toy_data, trained

from avharness import UserError
from avharness.cli import main
from avharness_plugins.attacks.universal import Universal


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 3.0)])
def test_fitted_on_train_projected_and_shared(norm, eps):
    data = toy_data()
    model = trained()
    t = threat(data, audio=(norm, eps))
    fitted = Universal(epochs=3, fit_split="train").prepare(model, data, t, data.task, "test")
    d = fitted.delta["audio"]
    size = d.abs().max() if norm == "linf" else d.norm()
    assert size <= eps * (1 + 1e-5) and size > 0
    batch = test_batch(data)
    adv = fitted.perturb(model, batch.inputs, batch.target, t, data.task, sample_rng(batch))
    assert adv["video"] is batch.inputs["video"]
    lo, hi = data.specs["audio"].bounds
    # the same perturbation for every sample, up to clipping at the bounds
    inside = (batch.inputs["audio"] + d > lo) & (batch.inputs["audio"] + d < hi)
    assert torch.allclose((adv["audio"] - batch.inputs["audio"])[inside], d.expand_as(adv["audio"])[inside], atol=1e-6)
    again = Universal(epochs=3, fit_split="train").prepare(model, data, t, data.task, "test")
    assert torch.equal(again.delta["audio"], d)


def test_breaks_the_model_at_a_large_budget():
    data = toy_data()
    model = trained()
    t = threat(data, audio=("linf", 1.0), video=("linf", 0.5))
    fitted = Universal(epochs=5, fit_split="train").prepare(model, data, t, data.task, "test")
    batch = test_batch(data)
    with torch.no_grad():
        acc = data.task.correct(model(fitted.perturb(model, batch.inputs, batch.target, t, data.task, sample_rng(batch))),
                                batch.target).float().mean()
    assert acc < 0.5


def test_refuses_the_evaluated_split_and_unprepared_use():
    data = toy_data()
    t = threat(data, audio=("linf", 0.1))
    with pytest.raises(UserError, match="transductive"):
        Universal(fit_split="test").prepare(trained(), data, t, data.task, "test")
    with pytest.raises(UserError, match="no split 'val'"):
        Universal().prepare(trained(), data, t, data.task, "test")
    with pytest.raises(RuntimeError, match="before prepare"):
        batch = test_batch(data)
        Universal().perturb(trained(), batch.inputs, batch.target, t, data.task, sample_rng(batch))


def test_in_a_run(example, tmp_path):
    suite = GOOD.replace("  - {plugin: fgsm}\n", "  - {plugin: universal, epochs: 2}\n")
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, suite)), "-o", str(out), "-q"]) == 0
    r = json.loads((out / "report.json").read_text())
    cells = [c for c in r["cells"] if c["attack"] == "universal"]
    assert cells and all(c["robust_accuracy"] <= c["clean_accuracy"] for c in cells)
    top = max((c for c in cells if c["model"] == "audio" and c["threat"] == "audio-linf"), key=lambda c: c["step"])
    assert top["robust_accuracy"] < top["clean_accuracy"]
