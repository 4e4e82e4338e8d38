"""A third party's plugins broken one way at a time: every fault ends in one line naming the plugin, its
distribution and version (exit 3, or 2 for the user's own mistakes), or is caught by `plugin check`;
none is silently accepted and none prints a traceback without --traceback."""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import make_dist

from avharness.cli import main
from avharness.plugins import get_registry, load_registry
from avharness.scaffold import new_plugin

SUITE = """\
name: faults
seed: 1
data: {{plugin: gaussian_av, n: 48}}
eval: {{batch_size: 16}}
models:
  - {{name: m, plugin: {model}}}
defenses:
  - {{plugin: {defense}, epochs: 1, batch_size: 16}}
attacks:
  - {{plugin: {attack}}}
threats:
  - {{name: a, audio: {{norm: linf, eps: [0.3]}}}}
metrics: [{metrics}]
"""

FAULTS = '''
import torch
from torch import nn

import avharness
from avharness import AVModel, hookimpl


class Bad(AVModel):
    """A linear model whose output is broken in one of several ways."""

    def __init__(self, task, specs, how="ok"):
        super().__init__()
        self.modalities = ("audio", "video")
        self.head_latent = "fused"
        self.how = how
        extra = {"wide": 2, "narrow": -1}.get(how, 0)
        self.enc = nn.Linear(specs["audio"].shape[0] + specs["video"].shape[0], 8)
        self.out = nn.Linear(8, task.num_classes + extra)

    def embed(self, inputs):
        if self.how == "mutates":
            inputs["audio"].mul_(0.5)
        return {"fused": torch.tanh(self.enc(torch.cat([inputs["audio"], inputs["video"]], 1)))}

    def head(self, z):
        out = self.out(z)
        if self.how == "probs":
            return out.softmax(1)
        if self.how == "nan":
            return out * float("nan")
        return out


def model(how):
    return lambda task, specs: Bad(task, specs, how)


class Attack:
    def __init__(self, how):
        self.how = how

    def perturb(self, model, inputs, target, threat, task, rng):
        if self.how == "raises":
            raise RuntimeError("CUDA kernel exploded")
        out = dict(inputs)
        for m, b in threat.budgets.items():
            if self.how == "greedy":
                out[m] = inputs[m] + 3 * b.eps
            elif self.how == "nan":
                out[m] = inputs[m] * float("nan")
        return out


class Metric:
    def __init__(self, how):
        self.how = how
        self.higher_is_better = {} if how == "undirected" else {"score": True}

    def compute(self, ev):
        if self.how == "string":
            return {"score": "high"}
        if self.how == "inf":
            return {"score": float("inf")}
        if self.how == "raises":
            raise KeyError("score")
        return {"score": 0.5}


class Defense:
    def __init__(self, how, epochs: int = 1, batch_size: int = 16):
        self.how = how

    def fit(self, model, data, ctx):
        if self.how == "raises":
            raise ZeroDivisionError("division by zero")
        return {"epochs": 1}  # no backward_samples


@hookimpl
def register_models(register):
    for how in ("wide", "narrow", "probs", "nan", "mutates"):
        register(f"bad_{how}", model(how))


@hookimpl
def register_attacks(register):
    for how in ("raises", "greedy", "nan"):
        register(f"attack_{how}", lambda how=how: Attack(how))


@hookimpl
def register_metrics(register):
    for how in ("string", "inf", "raises", "undirected"):
        register(f"metric_{how}", lambda how=how: Metric(how))


@hookimpl
def register_defenses(register):
    for how in ("raises", "nofacts"):
        register(f"defense_{how}", lambda epochs=1, batch_size=16, how=how: Defense(how, epochs, batch_size))
'''


@pytest.fixture
def faults(with_site, example_site, tmp_path_factory):
    site = tmp_path_factory.mktemp("faults")
    make_dist(site, "mylab-faults", "mylab_faults", FAULTS, entry="faults", version="1.2.3")
    with_site(example_site, site)
    return site


def run(tmp_path, capsys, *extra, model="linear_av", defense="standard", attack="fgsm", metrics="accuracy"):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(model=model, defense=defense, attack=attack, metrics=metrics))
    code = main([*extra, "run", str(path), "-o", str(tmp_path / "out"), "-q"])
    cap = capsys.readouterr()
    return code, cap.err


CASES = {
    # (suite entry, expected message part)
    "wide logits": ({"model": "bad_wide"}, r"model 'bad_wide' \(from mylab-faults 1.2.3\) in model 'm' .*before training: "
                    r"expected logits of shape \[B, num_classes\] = \[8, 4\], got \[8, 6\]"),
    "narrow logits": ({"model": "bad_narrow"}, r"expected logits of shape \[B, num_classes\] = \[8, 4\], got \[8, 3\]"),
    "probabilities": ({"model": "bad_probs"}, r"model 'bad_probs' .*expected raw logits .* got probabilities"),
    "nan logits": ({"model": "bad_nan"}, r"model 'bad_nan' .*expected finite logits"),
    "mutating model": ({"model": "bad_mutates"}, r"model 'bad_mutates' .*modified audio in place"),
    "attack raises": ({"attack": "attack_raises"}, r"attack 'attack_raises' \(from mylab-faults 1.2.3\) in cell m/standard/"
                      r"attack_raises/a/0: perturb\(\) raised RuntimeError: CUDA kernel exploded"),
    "attack leaves budget": ({"attack": "attack_greedy"}, r"attack 'attack_greedy' .* in cell m/.*: expected a linf perturbation "
                             r"of 'audio' within eps 0.3, got 0.9"),
    "attack nan": ({"attack": "attack_nan"}, r"attack 'attack_nan' .*expected finite adversarial 'audio' inputs, got NaN"),
    "metric string": ({"metrics": "metric_string"}, r"metric 'metric_string' \(from mylab-faults 1.2.3\) in cell .*: "
                      r"expected value 'score' to be a number or null, got str 'high'"),
    "metric inf": ({"metrics": "metric_inf"}, r"metric 'metric_inf' .*expected value 'score' to be finite"),
    "metric raises": ({"metrics": "metric_raises"}, r"metric 'metric_raises' .*compute\(\) raised KeyError"),
    "metric undirected": ({"metrics": "metric_undirected"}, r"metric 'metric_undirected' .*expected higher_is_better"),
    "defense raises": ({"defense": "defense_raises"}, r"defense 'defense_raises' .* in unit m \(defense_raises\): fit\(\) raised "
                       r"ZeroDivisionError"),
    "defense no facts": ({"defense": "defense_nofacts"}, r"defense 'defense_nofacts' .*expected fit\(\) to return 'backward_samples'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault_is_one_line_exit_3(faults, tmp_path, capsys, case):
    entry, pattern = CASES[case]
    code, err = run(tmp_path, capsys, **entry)
    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("avharness: plugin error: ") and "rerun with --traceback" in lines[0]
    import re
    assert re.search(pattern, lines[0]), lines[0]


def test_traceback_flag_shows_the_trace(faults, tmp_path, capsys):
    code, err = run(tmp_path, capsys, "--traceback", attack="attack_raises")
    assert code == 3
    assert "Traceback" in err and "CUDA kernel exploded" in err and "in perturb" in err


def test_subprocess_has_no_traceback(faults, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(model="bad_narrow", defense="standard", attack="fgsm", metrics="accuracy"))
    import os
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in faults.parent.iterdir())}
    sites = [str(p) for p in sys.path if "faults" in p or "site" in p.rsplit("/", 1)[-1]]
    env["PYTHONPATH"] = os.pathsep.join(sites)
    res = subprocess.run([sys.executable, "-m", "avharness.cli", "run", str(path), "-o", str(tmp_path / "o"), "-q"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_misspelled_hook_is_a_load_failure_naming_the_nearest_hook(with_site, example_site, tmp_path, capsys):
    code = """
        import avharness
        from avharness_example import LinearAV

        @avharness.hookimpl
        def register_model(register):
            register("typo_model", LinearAV)
    """
    make_dist(tmp_path, "mylab-typo", "mylab_typo", code, version="0.3.0")
    with_site(example_site, tmp_path)
    reg = get_registry()
    assert [(d, "did you mean 'register_models'" in e) for _, d, e in reg.failures] == [("mylab-typo", True)]
    assert "linear_av" in reg.names("model") and "pgd" in reg.names("attack")  # the others load
    err = capsys.readouterr().err
    assert "mylab-typo" in err and "'register_model'" in err
    code, err = run(tmp_path, capsys, model="typo_model")
    assert code == 2 and "unknown model 'typo_model'" in err and "failed to load: mylab-typo" in err


def test_unmarked_hook_function_is_reported(with_site, tmp_path):
    make_dist(tmp_path, "mylab-unmarked", "mylab_unmarked", "def register_attacks(register):\n    register('x', dict)\n")
    with_site(tmp_path)
    fails = get_registry().failures
    assert fails and fails[0][1] == "mylab-unmarked" and "without @avharness.hookimpl" in fails[0][2]


CLASH = """
    import avharness
    from avharness_plugins.attacks.pgd import build_pgd

    def mine(steps: int = 3):
        return build_pgd(steps=steps)

    @avharness.hookimpl
    def register_attacks(register):
        register("pgd", mine)
"""


def test_name_clash_both_listed_qualified_name_picks_and_disable_flag(with_site, example_site, tmp_path, capsys, monkeypatch):
    make_dist(tmp_path, "mylab-attacks", "mylab_attacks", CLASH, version="2.0.0")
    with_site(example_site, tmp_path)
    code, err = run(tmp_path, capsys, attack="pgd")
    assert code == 2
    assert "--disable-plugin mylab-attacks" in err and "AVHARNESS_DISABLE_PLUGINS=mylab-attacks" in err
    assert "plugin: avharness:pgd" in err and "plugin: mylab-attacks:pgd" in err and "--no-plugin" not in err
    assert main(["list", "attack"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if ":pgd" in line]
    assert any("avharness:pgd" in r and "avharness " in r for r in rows), out
    assert any("mylab-attacks:pgd" in r and "mylab-attacks" in r and "2.0.0" in r for r in rows), out
    # a qualified name picks one
    code, err = run(tmp_path, capsys, attack="mylab-attacks:pgd")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(p["dist"] == "mylab-attacks" and p["version"] == "2.0.0" for p in report["plugins"])
    # disabling the third party leaves the built-in
    code, err = run(tmp_path, capsys, "--disable-plugin", "mylab-attacks", attack="pgd")
    assert code == 0, err
    main(["list"])  # back to no blocked distributions for the next tests
    capsys.readouterr()
    monkeypatch.setenv("AVHARNESS_DISABLE_PLUGINS", "mylab-attacks,other")
    reg = load_registry()
    assert reg.entry("attack", "pgd").dist == "avharness" and "mylab-attacks" in reg.disabled


TYPED = """
    from typing import Literal, Optional
    import avharness
    from avharness_plugins.attacks.pgd import build_pgd

    class Typed:
        def __init__(self, mode: Literal["fast", "slow"] = "fast", steps: Optional[int] = None,
                     scales: list[float] = (1.0,), weights: dict[str, int] = None):
            self.inner = build_pgd(steps=steps or 2)

        def perturb(self, *args):
            return self.inner.perturb(*args)

    @avharness.hookimpl
    def register_attacks(register):
        register("typed", Typed)
"""


@pytest.mark.parametrize("param, expected", [
    ("mode: medium", r"attacks\[0\].mode: expected one of 'fast', 'slow', got 'medium'"),
    ("steps: two", r"attacks\[0\].steps: expected an integer or null, got 'two'"),
    ("scales: [1, x]", r"attacks\[0\].scales: expected a list of numbers, got \[1, 'x'\]"),
    ("weights: {a: 1.5}", r"attacks\[0\].weights: expected a mapping of integers keyed by strings, got \{'a': 1.5\}"),
])
def test_class_factory_parameter_types_are_checked(with_site, example_site, tmp_path, capsys, param, expected):
    import re
    make_dist(tmp_path, "mylab-typed", "mylab_typed", TYPED)
    with_site(example_site, tmp_path)
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(model="linear_av", defense="standard", attack="typed", metrics="accuracy")
                    .replace("{plugin: typed}", "{plugin: typed, " + param + "}"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err


def test_example_class_model_gets_type_checks(example, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(model="linear_av", defense="standard", attack="fgsm", metrics="accuracy")
                    .replace("{name: m, plugin: linear_av}", "{name: m, plugin: linear_av, latent: many}"))
    assert main(["validate", str(path)]) == 2
    assert "models[0].latent: expected an integer, got 'many'" in capsys.readouterr().err


# --- caught by `plugin check` ----------------------------------------------------------------------

KIT = """
    import torch
    import avharness

    class Noop:
        def perturb(self, model, inputs, target, threat, task, rng):
            return dict(inputs)

    class Nan:
        def perturb(self, model, inputs, target, threat, task, rng):
            return {m: (x * float("nan") if m in threat.budgets and threat.budgets[m].eps > 0 else x)
                    for m, x in inputs.items()}

    class Lazy:
        trains = True
        def fit(self, model, data, ctx):
            return {"backward_samples": 0}

    def picky(strength: float = 1.0):
        raise ValueError("strength must be positive")

    def broken():
        raise RuntimeError("forgot to ship weights")

    @avharness.hookimpl
    def register_attacks(register):
        register("noop", Noop)
        register("nan", Nan)
        register("picky", picky)
        register("broken", broken)

    @avharness.hookimpl
    def register_defenses(register):
        register("lazy", Lazy)
"""


@pytest.fixture
def kit(with_site, tmp_path):
    make_dist(tmp_path, "mylab-kit", "mylab_kit", KIT)
    with_site(tmp_path)


def check(name, capsys, *extra):
    code = main(["plugin", "check", name, *extra])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_plugin_check_fails_a_noop_attack(kit, capsys):
    code, out, _ = check("noop", capsys)
    assert code == 1
    assert "FAIL  actually attacks  (does not lower accuracy at all — a no-op?" in out


def test_plugin_check_fails_nan_budget_with_the_right_reason(kit, capsys):
    code, out, _ = check("nan", capsys)
    assert code == 1
    assert "FAIL  budget and range hold (linf, audio)  (audio: output contains NaN or inf)" in out
    assert "nan/" not in out


def test_plugin_check_fails_a_defense_that_does_not_train(kit, capsys):
    code, out, _ = check("lazy", capsys)
    assert code == 1 and "FAIL  fit changes the model" in out


def test_plugin_check_factory_value_error_is_one_line(kit, capsys):
    code, out, err = check("picky", capsys)
    assert code == 2 and "Traceback" not in err
    assert "attack 'picky' (from mylab-kit 0.1.0) rejected its parameters: ValueError: strength must be positive" in err


def test_plugin_check_factory_crash_is_a_failed_check(kit, capsys):
    code, out, err = check("broken", capsys)
    assert code == 1 and "FAIL  factory builds  (RuntimeError: forgot to ship weights)" in out


# --- no stale results ------------------------------------------------------------------------------

def test_plugin_upgrade_recomputes_cells(with_site, example_site, tmp_path, capsys):
    """`plugin new`'s attack, installed at 0.1.0, run; then upgraded to 0.2.0 with weaker steps and
    rerun into the same folder: its cells are recomputed (the model, which it did not make, is reused)."""
    gen = new_plugin("step_attack", "attack", tmp_path / "gen")
    site_a, site_b = tmp_path / "site_a", tmp_path / "site_b"
    site_a.mkdir()
    site_b.mkdir()
    make_dist(site_a, "avharness-step-attack", "avharness_step_attack", gen / "avharness_step_attack", version="0.1.0")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(model="linear_av", defense="standard", attack="step_attack", metrics="accuracy"))
    out = tmp_path / "out"
    with_site(example_site, site_a)
    assert main(["run", str(suite), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    first = json.loads((out / "report.json").read_text())
    assert main(["run", str(suite), "-o", str(out), "-q"]) == 0
    assert all(c["reused"] for c in json.loads((out / "report.json").read_text())["cells"])

    # the upgrade: a new version whose default step is a tenth of eps
    src = (gen / "avharness_step_attack" / "__init__.py").read_text()
    upgraded = gen.parent / "gen2"
    (upgraded / "avharness_step_attack").mkdir(parents=True)
    (upgraded / "avharness_step_attack" / "__init__.py").write_text(
        src.replace("out[m] = b.project(inputs[m] + self.step * b.eps * d", "out[m] = b.project(inputs[m] + 0.1 * self.step * b.eps * d"))
    make_dist(site_b, "avharness-step-attack", "avharness_step_attack", upgraded / "avharness_step_attack", version="0.2.0")
    import sys as _sys
    _sys.path.remove(str(site_a))
    for mod in [m for m in _sys.modules if m.startswith("avharness_step_attack")]:
        del _sys.modules[mod]
    with_site(site_b)
    assert main(["run", str(suite), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    second = json.loads((out / "report.json").read_text())
    assert not any(c["reused"] for c in second["cells"])
    assert all(m["reused"] for m in second["models"])  # the model was not made by the attack
    assert second["cells"][0]["achieved"]["audio"] < first["cells"][0]["achieved"]["audio"]
    plugin = next(p for p in second["plugins"] if p["dist"] == "avharness-step-attack")
    assert plugin["version"] == "0.2.0" and len(plugin["source_sha256"]) == 64
    old = next(p for p in first["plugins"] if p["dist"] == "avharness-step-attack")
    assert old["source_sha256"] != plugin["source_sha256"]


def test_editable_source_change_alone_recomputes(with_site, example_site, tmp_path, capsys):
    """Same version, edited source of a working-tree install: a new key."""
    from avharness import plugins

    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "mylab-edit", "mylab_edit", "import avharness\n")
    with_site(site)
    entry_mod = "mylab_edit"
    a = plugins.source_sha256(entry_mod)
    (site / "mylab_edit.py").write_text("import avharness  # edited\n")
    plugins._SOURCE_SHA.clear()
    assert plugins.source_sha256(entry_mod) != a
    dist = next(d for d in get_registry().distributions() if d["dist"] == "mylab-edit")
    assert dist["editable"] and dist["source_sha256"]


def test_builtins_are_keyed_by_their_kind_package_only():
    reg = get_registry()
    pgd = reg.entry("attack", "pgd").provenance()
    assert pgd["dist"] == "avharness" and pgd["version"]
    assert reg.entry("attack", "pgd").ep_module == "avharness_plugins.attacks"
    if "source_sha256" in pgd:  # an editable checkout: attacks/ is hashed, models/ is not part of it
        assert pgd["source_sha256"] != reg.entry("model", "audio_cnn").provenance()["source_sha256"]


def _unused():  # keep textwrap imported for readers who copy a case
    return textwrap


def test_verbose_logs_through_logging(example, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(model="linear_av", defense="standard", attack="fgsm", metrics="accuracy"))
    assert main(["-v", "run", str(path), "-o", str(tmp_path / "o"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "avharness: model m (standard): trained in" in err
    main(["list"])  # -v off again
    capsys.readouterr()
