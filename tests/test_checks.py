"""Validity checks: each symptom makes its check fail; healthy runs pass."""

import torch
from torch import nn

from avharness import AVModel, Batch, Task
from avharness.report.checks import cell_checks, model_checks, probe_model

TASK = Task("multiclass", ("a", "b"))


class Linear(AVModel):
    modalities = ("audio",)
    head_latent = "audio"

    def __init__(self, quantize=False, noisy=False):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.quantize, self.noisy = quantize, noisy

    def embed(self, inputs):
        x = inputs["audio"]
        if self.quantize:  # a non-differentiable step in front of the model: zero input gradients
            x = torch.round(x * 4) / 4
        if self.noisy:  # a randomized model
            x = x + 0.1 * torch.randn_like(x)
        return {"audio": self.lin(x)}

    def head(self, z):
        return z


def batch():
    g = torch.Generator().manual_seed(0)
    return Batch({"audio": torch.randn(8, 4, generator=g)}, torch.arange(8) % 2, [str(i) for i in range(8)])


def statuses(checks):
    return {c["name"]: c["status"] for c in checks}


def test_healthy_model_passes():
    torch.manual_seed(0)
    assert set(statuses(model_checks("m", probe_model(Linear(), TASK, batch()))).values()) == {"pass"}


def test_quantized_model_fails_the_gradient_check():
    torch.manual_seed(0)
    probe = probe_model(Linear(quantize=True), TASK, batch())
    assert probe["zero_gradient_share"] == 1.0
    assert statuses(model_checks("m", probe))["zero_gradient_share"] == "fail"


def test_randomized_model_fails_determinism():
    torch.manual_seed(0)
    assert statuses(model_checks("m", probe_model(Linear(noisy=True), TASK, batch())))["deterministic_outputs"] == "fail"


def cell(attack, step, robust, clean=0.9, eps=0.1, n=100):
    samples = [{"robust": i < robust * n, "clean_correct": i < clean * n} for i in range(n)]
    return {"id": f"m/d/{attack}/t/{step}", "model": "m", "defense": "d", "attack": attack, "threat": "t", "step": step,
            "eps": {"audio": eps * step}, "n": n, "clean_accuracy": clean, "robust_accuracy": robust, "samples": samples}


def test_cell_checks_pass_on_a_healthy_sweep():
    cells = [cell("fgsm", 0, 0.9), cell("fgsm", 1, 0.5), cell("fgsm", 2, 0.3),
             cell("pgd", 0, 0.9), cell("pgd", 1, 0.4), cell("pgd", 2, 0.1)]
    assert set(statuses(cell_checks(cells, {"fgsm": False, "pgd": True})).values()) == {"pass"}


def test_weak_iterative_attack_and_non_monotone_sweep_fail():
    cells = [cell("fgsm", 0, 0.9), cell("fgsm", 1, 0.5), cell("fgsm", 2, 0.3),
             cell("pgd", 0, 0.9), cell("pgd", 1, 0.6), cell("pgd", 2, 0.7)]
    s = statuses(cell_checks(cells, {"fgsm": False, "pgd": True}))
    assert s["sweep_monotone"] == "fail" and s["iterative_beats_single_step"] == "fail"
    assert s["eps_zero_noop"] == "pass" and s["robust_le_clean"] == "pass"


def test_eps_zero_that_changes_accuracy_fails():
    s = statuses(cell_checks([cell("pgd", 0, 0.8)], {"pgd": True}))
    assert s["eps_zero_noop"] == "fail"


def test_too_few_steps_fails_loss_converged():
    cells = [cell("pgd", 1, 0.5)]
    cells[0]["attack_stats"] = {"unbroken_loss_rising_at_end": 40, "unbroken_at_end": 50}
    assert statuses(cell_checks(cells, {"pgd": True}))["loss_converged"] == "fail"
    cells[0]["attack_stats"] = {"unbroken_loss_rising_at_end": 2, "unbroken_at_end": 50}
    assert statuses(cell_checks(cells, {"pgd": True}))["loss_converged"] == "pass"


def test_gradient_free_attack_beating_gradient_attacks_fails():
    cells = [cell("pgd", 1, 0.5), cell("square", 1, 0.3)]
    s = statuses(cell_checks(cells, {"pgd": True, "square": True}, {"square": True}))
    assert s["gradient_free_not_stronger"] == "fail"
    cells = [cell("pgd", 1, 0.3), cell("square", 1, 0.4)]
    assert statuses(cell_checks(cells, {"pgd": True}, {"square": True}))["gradient_free_not_stronger"] == "pass"


def test_one_step_pgd_on_a_real_run_flags_too_few_steps(example, tmp_path):
    """A deliberately weak attack (1 step) makes the convergence check complain in a real report."""
    import json

    from test_cli import GOOD, write

    from avharness.cli import main

    suite = GOOD.replace("  - {plugin: pgd, steps: 5}\n", "  - {plugin: pgd, steps: 1}\n")
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, suite)), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert statuses(report["checks"])["loss_converged"] == "fail"
    assert main(["run", str(write(tmp_path, suite)), "-o", str(out), "-q", "--strict"]) == 1
    # enough steps: the same check passes and --strict is content
    strong = GOOD.replace("  - {plugin: pgd, steps: 5}\n", "  - {plugin: pgd, steps: 30}\n")
    assert main(["run", str(write(tmp_path, strong)), "-o", str(tmp_path / "ok"), "-q", "--strict"]) == 0


QUANTIZED = """
import torch
import avharness
from avharness_example import LinearAV


class Quantized(LinearAV):
    '''linear_av behind a rounding step: a non-differentiable front end (zero input gradients).'''

    def embed(self, inputs):
        return super().embed({m: torch.round(x) for m, x in inputs.items()})


@avharness.hookimpl
def register_models(register):
    register("quantized_av", Quantized)
"""


def test_quantized_model_fails_the_gradient_check_in_the_report(example, with_site, tmp_path):
    """A deliberately broken model (rounding in front of it) makes zero_gradient_share fail."""
    import json

    from conftest import make_dist
    from test_cli import GOOD, write

    from avharness.cli import main

    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "quantized-plugin", "quantized_plugin", QUANTIZED)
    with_site(example, site)
    suite = GOOD.replace("plugin: linear_av}\n", "plugin: quantized_av}\n")
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, suite)), "-o", str(out), "-q", "--strict"]) == 1
    checks = {(c["name"], c["subject"]): c for c in json.loads((out / "report.json").read_text())["checks"]}
    assert checks[("zero_gradient_share", "fused/standard")]["status"] == "fail"
    assert checks[("zero_gradient_share", "fused/standard")]["value"] == 1.0
    assert checks[("zero_gradient_share", "audio/standard")]["status"] == "pass"


def ml_cell(attack, step, broken, n=100):
    """A multi-label cell: exact-match accuracy 0 throughout; ``broken`` share of samples flipped."""
    c = cell(attack, step, 0.0, clean=0.0, n=n)
    c["success_rule"] = "any_flip"
    for i, s in enumerate(c["samples"]):
        s["success"] = i < broken * n
    return c


def test_multilabel_checks_use_the_success_rule_not_exact_match():
    healthy = [ml_cell("fgsm", 0, 0.0), ml_cell("fgsm", 1, 0.4), ml_cell("pgd", 0, 0.0), ml_cell("pgd", 1, 0.7)]
    assert set(statuses(cell_checks(healthy, {"fgsm": False, "pgd": True})).values()) == {"pass"}
    # exact match is 0 everywhere, so only the success rule can see these
    weak = [ml_cell("fgsm", 0, 0.0), ml_cell("fgsm", 1, 0.6), ml_cell("fgsm", 2, 0.3),
            ml_cell("pgd", 0, 0.1), ml_cell("pgd", 1, 0.2), ml_cell("pgd", 2, 0.9)]
    s = statuses(cell_checks(weak, {"fgsm": False, "pgd": True}))
    assert s["sweep_monotone"] == "fail" and s["iterative_beats_single_step"] == "fail" and s["eps_zero_noop"] == "fail"
