"""The Ray executor on a local cluster of 2 workers: the same numbers as the local executor, a shared
store, a worker killed mid-run, and the one-line errors (no Ray; a node that cannot see the data)."""

import json
import os
import sys

import pytest
from conftest import make_dist
from report_diff import compare
from test_cli import GOOD, write

from avharness.cli import main

pytest.importorskip("ray")

# An attack that kills its own worker process the first time it runs (a lost node), then is FGSM;
# and a dataset that only the driver process can read (a node that does not see the data).
HELPERS = '''
import os
from avharness import UserError, hookimpl


class KillOnce:
    def __init__(self, marker):
        from avharness_plugins.attacks.pgd import build_fgsm

        self.marker, self.inner = marker, build_fgsm()
        self.iterative = False

    def perturb(self, model, inputs, target, threat, task, rng):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.inner.perturb(model, inputs, target, threat, task, rng)


def driver_only(root="/data/only-on-the-driver", **params):
    from avharness_example import GaussianAV

    if os.getpid() != int(os.environ.get("AVH_TEST_DRIVER_PID", "-1")):
        raise UserError(f"data root {root} not found")
    return GaussianAV(**params)


@hookimpl
def register_attacks(register):
    register("kill_once", KillOnce)


@hookimpl
def register_datasets(register):
    register("driver_only", driver_only)
'''


@pytest.fixture
def helpers(with_site, example_site, tmp_path_factory):
    site = tmp_path_factory.mktemp("ray_helpers")
    make_dist(site, "avharness-ray-helpers", "avharness_ray_helpers", HELPERS, entry="rayhelpers")
    with_site(example_site, site)
    return site


def run(tmp_path, text, out, *extra, code=0):
    assert main(["run", str(write(tmp_path, text)), "-o", str(out), "-q", *map(str, extra)]) == code
    return json.loads((out / "report.json").read_text()) if code == 0 else None


RAY = ("--executor", "ray", "--num-cpus", "2")


WITH_DENSITY = GOOD.replace("metrics: [accuracy, attack_success_rate, perturbation]",
                            "metrics: [accuracy, attack_success_rate, perturbation, {plugin: density, k: 5}]")


def test_same_numbers_on_ray_and_shared_store(helpers, tmp_path):
    local = run(tmp_path, WITH_DENSITY, tmp_path / "local")
    ray = run(tmp_path, WITH_DENSITY, tmp_path / "ray", *RAY)
    assert not any(c["reused"] for c in ray["cells"])
    assert [c["key"] for c in ray["cells"]] == [c["key"] for c in local["cells"]]
    assert [c["metrics"] for c in ray["cells"]] == [c["metrics"] for c in local["cells"]]
    assert [c["attack_stats"] for c in ray["cells"]] == [c["attack_stats"] for c in local["cells"]]
    assert compare(ray, local, tolerance=0.0) == []
    assert (tmp_path / "ray" / "samples.jsonl").read_text() == (tmp_path / "local" / "samples.jsonl").read_text()
    def values(models):  # model-scope metrics, without their wall time
        return [{k: {x: y for x, y in v.items() if x != "wall_s"} for k, v in m["metrics"].items()} for m in models]

    assert values(ray["models"]) == values(local["models"]) and values(local["models"])[1]["density"]
    # the local executor reuses every checkpoint and cell the Ray run stored
    again = run(tmp_path, WITH_DENSITY, tmp_path / "ray")
    assert all(c["reused"] for c in again["cells"]) and all(m["reused"] for m in again["models"])


def test_worker_killed_mid_run_loses_nothing(helpers, tmp_path):
    marker = tmp_path / "killed"
    text = GOOD.replace("  - {plugin: fgsm}\n  - {plugin: pgd, steps: 5}\n", f"  - {{plugin: kill_once, marker: '{marker}'}}\n")
    ray = run(tmp_path, text, tmp_path / "ray", *RAY)
    assert marker.exists()  # a worker died; Ray retried its task
    local = run(tmp_path, text, tmp_path / "local")
    assert [c["metrics"] for c in ray["cells"]] == [c["metrics"] for c in local["cells"]]
    assert (tmp_path / "ray" / "samples.jsonl").read_text() == (tmp_path / "local" / "samples.jsonl").read_text()


def test_interrupted_ray_run_resumes(helpers, tmp_path, monkeypatch):
    from avharness.store import Store

    original, calls = Store.save_cell, {"n": 0}

    def interrupted(self, key, cell):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C on the driver while tasks are still running
            raise KeyboardInterrupt
        return original(self, key, cell)

    monkeypatch.setattr(Store, "save_cell", interrupted)
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, GOOD)), "-o", str(out), "-q", *RAY]) == 130
    assert len(list((out / "store" / "cells").glob("*.json"))) == 3
    monkeypatch.setattr(Store, "save_cell", original)
    resumed = run(tmp_path, GOOD, out, *RAY)
    assert sum(c["reused"] for c in resumed["cells"]) == 3
    fresh = run(tmp_path, GOOD, tmp_path / "fresh")
    assert compare(resumed, fresh) == []
    assert (out / "samples.jsonl").read_text() == (tmp_path / "fresh" / "samples.jsonl").read_text()


def test_node_without_the_data_is_one_line(helpers, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVH_TEST_DRIVER_PID", str(os.getpid()))
    text = GOOD.replace("data: {plugin: gaussian_av, n: 240}", "data: {plugin: driver_only, n: 240}")
    run(tmp_path, text, tmp_path / "out", *RAY, code=2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray worker on node" in err and "/data/only-on-the-driver" in err, err
    assert "shared filesystem" in err


def test_without_ray_installed(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    run(tmp_path, GOOD, tmp_path / "out", "--executor", "ray", code=2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "avharness[ray]"' in err, err
