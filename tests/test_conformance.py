"""`avharness plugin check`: every built-in passes its contract tests; broken plugins fail them."""

import pytest
import torch
from torch import nn

from avharness import AVModel
from avharness.cli import main
from avharness.conformance import check_attack, check_model, check_plugin
from avharness.plugins import get_registry

PARAMS = {"ensemble": {"attacks": ["fgsm", {"plugin": "pgd", "steps": 3}]},
          # small settings keep the kit fast; the contract does not depend on them
          "art.cw": {"steps": 10, "binary_search_steps": 2},
          "adversarial": {"budgets": {"audio": {"norm": "linf", "eps": 0.1}}, "epochs": 1},
          "standard": {"epochs": 2}, "mixup": {"epochs": 2}, "metric_mixup": {"epochs": 2},
          "square": {"n_queries": 200}, "autoattack": {"steps": 10, "n_queries": 200}, "apgd": {"steps": 20},
          "fab": {"steps": 20}}


#: built-ins whose contract tests run in their own test files: the AudioSet zoo reads frame features
#: that avdigits (raw frames) lacks (test_zoo.py), and the clip datasets need a data folder
#: (test_audioset_dataset.py, test_kinetics_sounds.py)
ELSEWHERE = ("avharness_plugins.models.audioset.", "avharness_plugins.datasets.audioset.dataset", "avharness_plugins.datasets.kinetics_sounds")


def builtins():
    reg = get_registry()
    return [(k, n) for k in ("model", "attack", "metric", "dataset", "defense") for n in reg.names(k)
            if reg.entries[k][n].dist == "avharness" and not reg.entries[k][n].module.startswith(ELSEWHERE)]


@pytest.mark.parametrize("kind, name", builtins())
def test_builtin_passes(kind, name):
    results = check_plugin(name, get_registry(), kind=kind, params=PARAMS.get(name))
    failed = [(n, d) for n, ok, d in results if not ok]
    assert results and not failed, failed


class Softmaxed(AVModel):
    modalities = ("audio",)
    head_latent = "audio"

    def __init__(self, task, specs):
        super().__init__()
        self.lin = nn.Linear(int(torch.tensor(specs["audio"].shape).prod()), task.num_classes)

    def embed(self, inputs):
        inputs["audio"].mul_(1.0)  # harmless in value, but an in-place op on the caller's tensor
        inputs["audio"][0, 0] = 0.0
        return {"audio": self.lin(inputs["audio"].flatten(1))}

    def head(self, z):
        return z.softmax(1)


def test_broken_model_fails():
    ds = get_registry().get("dataset", "avdigits")()
    results = {n: ok for n, ok, _ in check_model(lambda: Softmaxed(ds.task, ds.specs), ds.task, ds.specs)}
    assert not results["returns logits, not probabilities"]
    assert not results["does not mutate its inputs"]


class Greedy:
    """Ignores the budget: steps 2 eps."""

    def perturb(self, model, inputs, target, threat, task, rng):
        return {m: (x + 2 * threat.budgets[m].eps if m in threat.budgets else x) for m, x in inputs.items()}


def test_broken_attack_fails():
    results = {n: ok for n, ok, _ in check_attack(Greedy())}
    assert not results["budget and range hold (linf, audio)"]
    assert results["eps = 0 is a no-op"]


def test_cli(capsys):
    assert main(["plugin", "check", "pgd"]) == 0
    assert "pgd: 9 passed, 0 failed" in capsys.readouterr().out
    assert main(["plugin", "check", "ensemble"]) == 2
    assert "needs parameter(s) attacks" in capsys.readouterr().err
    assert main(["plugin", "check", "nope"]) == 2
