"""The command line: bad input gets exit code 2 and one clear line; runs write whole reports."""

import os
import subprocess
import sys
import textwrap

import pytest

from avharness.cli import main

GOOD = """\
name: tiny
seed: 3
data: {plugin: gaussian_av, n: 240}
eval: {batch_size: 32}
models:
  - {name: audio, plugin: linear_av, modalities: [audio]}
  - {name: fused, plugin: linear_av}
defenses:
  - {plugin: standard, epochs: 3, batch_size: 32, lr: 0.01}
attacks:
  - {plugin: fgsm}
  - {plugin: pgd, steps: 5}
threats:
  - {name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5, 2.0]}}
  - {name: joint-l2, audio: {norm: l2, eps: [0.0, 2.0]}, video: {norm: l2, eps: [0.0, 2.0]}}
metrics: [accuracy, attack_success_rate, perturbation]
"""


def write(tmp_path, text, name="suite.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


BAD = {
    "yaml syntax": (GOOD.replace("eval: {batch_size: 32}", "eval: {batch_size: 32"), r"suite.yaml:\d+: YAML syntax error"),
    "unknown key": (GOOD.replace("seed: 3", "seed: 3\nsede: 4"), r"suite.yaml:3: sede: unknown key"),
    "wrong type": (GOOD.replace("seed: 3", "seed: three"), r"suite.yaml:2: seed: expected an integer, got 'three'"),
    "wrong param type": (GOOD.replace("epochs: 3", "epochs: many"), r"suite.yaml:9: defenses\[0\].epochs: expected an integer"),
    "unknown param": (GOOD.replace("steps: 5", "stpes: 5"), r"suite.yaml:12: attacks\[1\].stpes: unknown parameter \(did you mean 'steps'\?\)"),
    "unknown plugin": (GOOD.replace("plugin: pgd", "plugin: pdg"), r"suite.yaml:12: attacks\[1\].plugin: unknown attack 'pdg' — did you mean 'pgd'\?"),
    "negative eps": (GOOD.replace("[0.0, 0.5, 2.0]", "[0.0, -0.5]"), r"suite.yaml:14: threats\[0\].audio.eps: eps must be >= 0, got -0.5"),
    "missing modality": (GOOD.replace("audio-linf, audio:", "audio-linf, depth:"), r"suite.yaml:14: threats\[0\].depth: dataset 'gaussian_av' has no modality 'depth'; it has: audio, video"),
    "unequal sweep": (GOOD.replace("video: {norm: l2, eps: [0.0, 2.0]}", "video: {norm: l2, eps: [0.0, 1.0, 2.0]}"), r"threats\[1\]\.\w+\.eps: has \d values but"),
    "bad norm": (GOOD.replace("norm: linf", "norm: l7"), r"threats\[0\].audio.norm: must be one of linf, l2"),
    "duplicate name": (GOOD.replace("name: fused", "name: audio"), r"models\[1\].name: name 'audio' is already used"),
    "threat no model takes": (GOOD.replace("  - {name: fused, plugin: linear_av}\n", ""),
                              r"threats\[1\]: threat 'joint-l2' is taken by no model and attack: audio × fgsm: "
                              r"model reads audio; threat attacks video"),
    "no cell at all": (GOOD.replace("  - {name: fused, plugin: linear_av}\n", "").replace(
        "  - {name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5, 2.0]}}\n", ""),
        r"threats: no cell to run: every \(model, attack, threat\) combination is skipped — audio × fgsm × joint-l2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_suite_is_one_clear_line(example, tmp_path, capsys, case):
    text, pattern = BAD[case]
    path = write(tmp_path, text)
    for command in (["validate", path], ["run", path, "-o", tmp_path / "out"]):
        code, out, err = run_cli(command, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("avharness: error: "), err
        import re

        assert re.search(pattern, err), err
    assert not (tmp_path / "out" / "report.json").exists()


def test_missing_suite_file(capsys, tmp_path):
    code, _, err = run_cli(["run", tmp_path / "nope.yaml"], capsys)
    assert code == 2 and "nope.yaml: suite file not found" in err and err.count("\n") == 1


def test_unwritable_output_folder(example, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["run", write(tmp_path, GOOD), "-o", blocker / "out"], capsys)
    assert code == 2 and "output folder is not writable" in err and err.count("\n") == 1


def test_set_override_is_located(example, tmp_path, capsys):
    code, _, err = run_cli(["validate", write(tmp_path, GOOD), "--set", "seed=x"], capsys)
    assert code == 2 and "(--set seed): seed: expected an integer" in err


def test_user_error_in_subprocess_has_no_traceback(example, tmp_path):
    path = write(tmp_path, GOOD.replace("plugin: pgd", "plugin: pdg"))
    env = {**os.environ, "PYTHONPATH": str(example)}
    proc = subprocess.run([sys.executable, "-m", "avharness.cli", "validate", str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "did you mean 'pgd'" in proc.stderr


def test_list_shows_distributions(example, capsys):
    code, out, _ = run_cli(["list", "model"], capsys)
    assert code == 0 and "linear_av" in out and "avharness-example" in out and "late_fusion" in out


def test_validate_ok(example, tmp_path, capsys):
    code, out, _ = run_cli(["validate", write(tmp_path, GOOD)], capsys)
    assert code == 0 and "valid" in out
