"""``avharness check`` (the regression gate) and ``avharness compare`` on crafted reports, and end to end."""

import json

import pytest
from scipy.stats import binomtest
from test_cli import GOOD, write

from avharness.cli import main
from avharness.stats import ids_sha256

IDS = [f"s{i:03d}" for i in range(100)]


def cell(model="late", robust=None, clean=None, metrics=None, threat="audio", step=1, success_rule="argmax_changed"):
    robust = robust if robust is not None else [True] * 60 + [False] * 40
    clean = clean if clean is not None else [True] * 90 + [False] * 10
    c = {"id": f"{model}/standard/pgd/{threat}/{step}", "key": "k", "model": model, "defense": "standard",
         "attack": "pgd", "threat": threat, "step": step, "norm": {"audio": "linf"}, "eps": {"audio": 0.1 * step},
         "canonical": f"audio:linf:{0.1 * step:g}", "n": len(robust),
         "clean_accuracy": sum(clean) / len(clean), "robust_accuracy": sum(robust) / len(robust),
         "metrics": {"clean_accuracy": sum(clean) / len(clean), "robust_accuracy": sum(robust) / len(robust),
                     "audio_snr_db_mean": 20.0, **(metrics or {})},
         "higher_is_better": {"clean_accuracy": True, "robust_accuracy": True, "audio_snr_db_mean": False,
                              **{k: True for k in (metrics or {})}},
         "success_rule": success_rule}
    c["_samples"] = [{"id": i, "target": 0, "clean_pred": 0, "adv_pred": 0, "clean_correct": cl, "robust": r,
                      "success": None} for i, cl, r in zip(IDS, clean, robust)]
    return c


def report(tmp_path, name, cells, torch_version="2.14.1", plugins=None, seed=0, ids=IDS):
    folder = tmp_path / name
    folder.mkdir()
    lines = [json.dumps({"cell": c["id"], **x}) for c in cells for x in c.pop("_samples")]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    r = {"schema": "avharness/report@1", "suite": {"name": "s", "version": 1, "sha256": "0" * 64},
         "seeds": {"global": seed}, "environment": {"avharness": "0.1.0", "torch": torch_version},
         "plugins": plugins or [{"dist": "avharness", "version": "0.1.0"}],
         "data": {"manifest_sha256": "m" * 64, "eval": {"split": "test", "n_effective": len(ids), "ids_sha256": ids_sha256(ids)}},
         "cells": cells, "per_sample": "samples.jsonl"}
    (folder / "report.json").write_text(json.dumps(r))
    return folder / "report.json"


def check(capsys, *args):
    code = main(["check", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_regression_fails_improvement_passes_two_sided_fails_both(tmp_path, capsys):
    base = report(tmp_path, "base", [cell()])
    worse = report(tmp_path, "worse", [cell(robust=[True] * 50 + [False] * 50)])
    better = report(tmp_path, "better", [cell(robust=[True] * 70 + [False] * 30)])
    code, out, _ = check(capsys, worse, "--baseline", base)
    assert code == 1 and "REGRESSION" in out and "robust_accuracy 0.6 -> 0.5" in out
    code, out, _ = check(capsys, better, "--baseline", base)
    assert code == 0 and "improvement" in out and "REGRESSION" not in out
    code, out, _ = check(capsys, better, "--baseline", base, "--two-sided")
    assert code == 1 and "MOVED" in out
    # one value per cell and metric: the accuracy metric's copy of the core's value is not repeated
    assert out.count("robust_accuracy") == 1


def test_per_value_tolerances(tmp_path, capsys):
    base = report(tmp_path, "base", [cell()])
    new = cell(robust=[True] * 58 + [False] * 42)
    new["metrics"]["audio_snr_db_mean"] = 20.4  # higher SNR: the attack needed less (worse for the model)
    new_path = report(tmp_path, "new", [new])
    assert check(capsys, new_path, "--baseline", base)[0] == 1
    assert check(capsys, new_path, "--baseline", base, "--tolerance", "robust_accuracy=0.02")[0] == 1  # SNR still
    code, out, _ = check(capsys, new_path, "--baseline", base, "--tolerance", "robust_accuracy=0.02",
                         "--tolerance", "*_snr_db_mean=0.5")
    assert code == 0 and "PASS" in out
    assert check(capsys, new_path, "--baseline", base, "--tolerance", "0.5")[0] == 0  # a bare number: the default
    code, _, err = check(capsys, new_path, "--baseline", base, "--tolerance", "robust_acc=0.1")
    assert code == 2 and "no value of that name" in err
    for bad in ("nan", "-1", "x=abc", "=0.1"):
        code, _, err = check(capsys, new_path, "--baseline", base, "--tolerance", bad)
        assert code == 2 and err.count("\n") == 1


def test_mcnemar_known_p_values_decide(tmp_path, capsys):
    base_flags = [True] * 60 + [False] * 40
    # 8 samples lost, 2 gained: p = binomtest(2, 10) = 0.109 -> within noise at alpha 0.05
    small = base_flags[:]
    for i in range(8):
        small[i] = False
    small[60], small[61] = True, True
    # 15 lost, 1 gained: p = binomtest(1, 16) = 0.00052 -> a significant regression
    big = base_flags[:]
    for i in range(15):
        big[i] = False
    big[70] = True
    base = report(tmp_path, "base", [cell(), cell(model="audio")])
    new = report(tmp_path, "new", [cell(robust=small), cell(model="audio", robust=big)])
    code, out, _ = check(capsys, new, "--baseline", base, "--test", "mcnemar", "--format", "json")
    res = json.loads(out)
    rows = {(r["cell"].split("/")[0], r["value"]): r for r in res["rows"]}
    assert rows[("late", "robust_accuracy")]["p_value"] == pytest.approx(binomtest(2, 10, 0.5).pvalue)
    assert rows[("audio", "robust_accuracy")]["p_value"] == pytest.approx(binomtest(1, 16, 0.5).pvalue)
    assert rows[("late", "robust_accuracy")]["status"] == "noise"
    assert rows[("audio", "robust_accuracy")]["status"] == "regression" and code == 1
    # Holm over the two tested cells: the smaller p doubled
    assert rows[("audio", "robust_accuracy")]["p_holm"] == pytest.approx(2 * binomtest(1, 16, 0.5).pvalue)
    # without the significant one, the gate passes although robust accuracy fell
    new2 = report(tmp_path, "new2", [cell(robust=small), cell(model="audio")])
    assert check(capsys, new2, "--baseline", base, "--test", "mcnemar")[0] == 0
    assert check(capsys, new2, "--baseline", base)[0] == 1
    # the samples file is needed for the test
    (tmp_path / "new2" / "samples.jsonl").unlink()
    code, _, err = check(capsys, new2, "--baseline", base, "--test", "mcnemar")
    assert code == 2 and "samples.jsonl" in err


@pytest.mark.parametrize("what", ["count", "ids", "seed", "success rule", "manifest"])
def test_refuses_reports_on_other_samples(tmp_path, capsys, what):
    base = report(tmp_path, "base", [cell()])
    kw = {}
    c = cell()
    if what == "count":
        ids = IDS[:50]
        c = cell(robust=[True] * 30 + [False] * 20, clean=[True] * 50)
        kw["ids"] = ids
    elif what == "ids":
        kw["ids"] = [f"x{i}" for i in range(100)]
    elif what == "seed":
        kw["seed"] = 1
    elif what == "success rule":
        c = cell(success_rule="any_flip")
    path = report(tmp_path, "new", [c], **kw)
    if what == "manifest":
        r = json.loads(path.read_text())
        r["data"]["manifest_sha256"] = "f" * 64
        path.write_text(json.dumps(r))
    code, out, err = check(capsys, path, "--baseline", base)
    assert code == 2 and "not comparable" in err and err.count("\n") == 1 and not out


def test_versions_and_extra_cells_are_listed_without_failing(tmp_path, capsys):
    base = report(tmp_path, "base", [cell(), cell(model="audio")])
    new = report(tmp_path, "new", [cell(), cell(model="video")], torch_version="2.15.0",
                 plugins=[{"dist": "avharness", "version": "0.1.0"}, {"dist": "my-plugin", "version": "1.2"}])
    code, out, _ = check(capsys, new, "--baseline", base)
    assert code == 0
    assert "torch 2.15.0 (this report) vs 2.14.1 (baseline)" in out
    assert "plugin my-plugin 1.2" in out
    assert "cell only in the baseline (not checked): audio/" in out
    assert "cell only in this report (not checked): video/" in out


def test_non_numeric_metric_is_a_clear_error(tmp_path, capsys):
    base = report(tmp_path, "base", [cell()])
    new = report(tmp_path, "new", [cell(metrics={"grade": "A"})])
    code, _, err = check(capsys, new, "--baseline", base)
    assert code == 2 and "grade" in err and "not a number" in err and "Traceback" not in err


def test_markdown_and_json_formats(tmp_path, capsys):
    base = report(tmp_path, "base", [cell()])
    worse = report(tmp_path, "worse", [cell(robust=[True] * 50 + [False] * 50)])
    code, out, _ = check(capsys, worse, "--baseline", base, "--format", "md")
    assert code == 1 and "| status | cell | value |" in out and "| REGRESSION |" in out and "FAIL" in out
    code, out, _ = check(capsys, worse, "--baseline", base, "--format", "json")
    res = json.loads(out)
    assert res["failed"] and res["counts"]["regression"] == 1


def test_compare_side_by_side(tmp_path, capsys):
    a = report(tmp_path, "a", [cell()])
    b = report(tmp_path, "b", [cell(robust=[False] * 20 + [True] * 40 + [False] * 40)])
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| cell | value | R1 | R2 | Δ R2 | p R2 |" in out
    row = next(line for line in out.splitlines() if "robust_accuracy" in line)
    assert "0.6 " in row and "0.4" in row and "-0.2" in row
    assert f"{2 * binomtest(0, 20, 0.5).pvalue:.3g} *" in row  # Holm over the two accuracies tested
    other = report(tmp_path, "other", [cell()], ids=[f"x{i}" for i in range(100)])
    assert main(["compare", str(a), str(other)]) == 2


def test_weakened_model_fails_the_gate_and_an_identical_retrain_passes(example, tmp_path, capsys):
    suite = write(tmp_path, GOOD)
    weak = write(tmp_path, GOOD.replace("epochs: 3", "epochs: 1").replace("lr: 0.01", "lr: 0.002"), "weak.yaml")
    for path, out in ((suite, "base"), (suite, "again"), (weak, "weak")):
        assert main(["run", str(path), "-o", str(tmp_path / out), "-q"]) == 0
    capsys.readouterr()
    gate = ["--test", "mcnemar", "--tolerance", "1e9", "--tolerance", "robust_accuracy=0", "--tolerance", "clean_accuracy=0"]
    code, out, _ = check(capsys, tmp_path / "again", "--baseline", tmp_path / "base" / "report.json", *gate)
    assert code == 0 and "0 regressions" in out
    assert check(capsys, tmp_path / "again", "--baseline", tmp_path / "base", "--two-sided")[0] == 0  # bit-identical
    code, out, _ = check(capsys, tmp_path / "weak", "--baseline", tmp_path / "base", *gate)
    assert code == 1 and "REGRESSION" in out and "McNemar p" in out
    # the report's intervals and the findings' paired tests
    r = json.loads((tmp_path / "base" / "report.json").read_text())
    c = r["cells"][0]
    assert c["clean_accuracy_ci"][0] <= c["clean_accuracy"] <= c["clean_accuracy_ci"][1]
    assert set(c["intervals"]) >= {"clean_accuracy", "robust_accuracy", "attack_success_rate"}
    assert "significant after Holm correction" in r["findings"][0]["answer"]
    assert "] |" in (tmp_path / "base" / "report.md").read_text()


def test_committed_baseline_reads_its_gzipped_samples(tmp_path):
    """Baselines keep their per-sample file gzipped (reports/baselines/<name>.samples.jsonl.gz)."""
    import gzip

    from avharness import gate

    report = {"schema": "avharness/report@1", "suite": {"name": "s", "version": 1}, "cells": []}
    (tmp_path / "base.json").write_text(json.dumps(report))
    line = json.dumps({"cell": "m/d/a/t/0", "id": "x1", "robust": True, "clean_correct": True})
    (tmp_path / "base.samples.jsonl.gz").write_bytes(gzip.compress((line + "\n").encode(), mtime=0))
    run = gate.Run(tmp_path / "base.json", report)
    assert run.samples() == {"m/d/a/t/0": {"x1": json.loads(line)}}
