"""The ``standard`` defense (plain training): seeding, progress, facts returned, errors."""

from __future__ import annotations

import pytest
import torch

import avharness
from avharness import Batch, FitContext, InputSpec, NumericalError, Task, UserError
from avharness_plugins.defenses.standard import Standard, standard
from avharness_plugins.models.small import build_audio_cnn, build_late_fusion

TASK = Task("multiclass", ("a", "b", "c"))
SPECS = {"audio": InputSpec((12, 8), (-4.0, 4.0)), "video": InputSpec((2, 8, 8), (0.0, 1.0))}


class TinyData:
    """Three classes whose audio and video carry a class-dependent pattern plus noise."""

    task = TASK
    specs = SPECS

    def __init__(self, n=96, seed=0, poison=False):
        g = torch.Generator().manual_seed(seed)
        self.data = {}
        for _k, split in enumerate(("train", "val")):
            m = n if split == "train" else n // 3
            y = torch.arange(m) % 3
            audio = torch.randn(m, 12, 8, generator=g) * 0.5
            audio[torch.arange(m), 4 * y, :] += 2.0
            video = (torch.rand(m, 2, 8, 8, generator=g) * 0.5).clone()
            video[torch.arange(m), :, 2 * y + 1, :] = 1.0
            if poison:
                audio[0, 0, 0] = float("nan")
            self.data[split] = (audio.clamp(-4, 4) if not poison else audio, video, y)

    def splits(self):
        return ("train", "val")

    def size(self, split):
        return len(self.data[split][2])

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        audio, video, y = self.data[split]
        n = len(y) if limit is None else min(limit, len(y))
        order = torch.arange(n) if shuffle is None else torch.randperm(n, generator=shuffle)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            yield Batch({"audio": audio[idx], "video": video[idx]}, y[idx], [f"{split}/{int(i)}" for i in idx])

    def manifest(self, split):
        return split

    def info(self):
        return {}


def _ctx(seed=0, calls=None):
    def progress(desc, total):
        if calls is not None:
            calls.append([desc, total, 0])

        def advance(n=1):
            if calls is not None:
                calls[-1][2] += n

        return advance

    return FitContext(torch.device("cpu"), seed, progress=progress)


def _fresh(factory=build_audio_cnn, init_seed=0):
    torch.manual_seed(init_seed)
    return factory(TASK, SPECS, width=8, latent_dim=16)


def test_training_lowers_the_loss_and_reports_facts():
    data, calls = TinyData(), []
    model = _fresh()
    facts = standard(epochs=5, batch_size=16, lr=3e-3).fit(model, data, _ctx(calls=calls))
    assert facts["epochs"] == 5 and facts["steps"] == 5 * 6
    assert facts["backward_samples"] == 5 * 96 and facts["forward_samples"] == 5 * 96 + 32
    assert facts["epoch_train_loss"][-1] < 0.5 * facts["epoch_train_loss"][0]
    assert facts["final_train_loss"] == facts["epoch_train_loss"][-1]
    assert 0.0 <= facts["val_accuracy"] <= 1.0 and facts["val_accuracy"] > 0.6
    assert facts["wall_s"] >= 0
    assert not model.training
    assert calls == [["standard AudioCNN", 30, 30]]


def test_same_seed_same_weights_other_seed_other_weights():
    data = TinyData()
    states = []
    for seed in (7, 7, 8):
        model = _fresh(build_late_fusion)
        standard(epochs=2, batch_size=32).fit(model, data, _ctx(seed))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_dropout_draws_are_seeded_by_the_run():
    data = TinyData()
    a, b = (_fresh(), _fresh())
    for model in (a, b):
        model.classifier[0].p = 0.5
        torch.manual_seed(123 if model is a else 456)  # global state before fit must not matter
        standard(epochs=1, batch_size=32).fit(model, data, _ctx(3))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_trains(optimizer):
    facts = standard(optimizer=optimizer, epochs=3, lr=1e-2 if optimizer == "sgd" else 3e-3).fit(
        _fresh(), TinyData(), _ctx())
    assert facts["epoch_train_loss"][-1] < facts["epoch_train_loss"][0]


def test_nan_loss_is_a_numerical_error():
    with pytest.raises(NumericalError, match="loss became nan"):
        standard(epochs=1, batch_size=200).fit(_fresh(), TinyData(poison=True), _ctx())


@pytest.mark.parametrize(
    "params, match",
    [
        ({"optimizer": "rmsprop"}, "allowed: adam, adamw, sgd"),
        ({"lr": 0}, "lr must be a positive number"),
        ({"lr": -1e-3}, "lr must be a positive number"),
        ({"lr": "fast"}, "lr must be a finite number"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": 2.5}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
    ],
)
def test_bad_params_are_user_errors(params, match):
    with pytest.raises(UserError, match=match):
        standard(**params)


def test_yaml_style_numbers_are_accepted():
    d = standard(lr="1e-3", weight_decay="0")  # YAML 1.1 reads 1e-3 (no dot) as a string
    assert d.lr == 1e-3 and d.weight_decay == 0.0


def test_registered_through_the_entry_point():
    registry = avharness.plugins.load_registry()
    assert registry.get("defense", "standard") is standard
    assert isinstance(standard(), Standard) and isinstance(standard(), avharness.Defense)
