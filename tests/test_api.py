"""The Python API: avharness.run / load_report, the report as DataFrames and figures."""

import json

import pytest
import yaml
from test_cli import GOOD

import avharness


def test_run_a_suite_dict_and_read_it_as_tables(example, tmp_path, capsys):
    suite = yaml.safe_load(GOOD)
    out = tmp_path / "out"
    report = avharness.run(suite, overrides={"defenses.0.epochs": 2}, out=out, limit=40)
    assert isinstance(report, avharness.Report) and report.path == out
    stored = json.loads((out / "report.json").read_text())
    assert report.json == stored
    assert (out / "suite.yaml").exists() and stored["suite"]["path"] == str(out / "suite.yaml")
    assert stored["suite"]["config"]["defenses"][0]["params"]["epochs"] == 2 and stored["data"]["eval"]["n_effective"] == 40
    # plain log lines on stderr, no progress bars
    err = capsys.readouterr().err
    assert "trained in" in err and "\x1b[" not in err

    cells = report.cells()
    assert len(cells) == len(stored["cells"])
    assert list(cells["robust_accuracy"]) == [c["robust_accuracy"] for c in stored["cells"]]
    assert list(cells["clean_accuracy"]) == [c["clean_accuracy"] for c in stored["cells"]]
    assert str(cells["step"].dtype) == "int64" and str(cells["eps_audio"].dtype) == "float64"
    assert str(cells["reused"].dtype) == "bool" and str(cells["fused"].dtype) == "bool"
    for c, (_, row) in zip(stored["cells"], cells.iterrows()):
        assert (row["model"], row["defense"], row["attack"], row["threat"]) == (c["model"], c["defense"], c["attack"], c["threat"])
        assert row["eps_audio"] == c["eps"]["audio"]
        assert row["eps_video"] == c["eps"]["video"] if "video" in c["eps"] else row["eps_video"] != row["eps_video"]
        assert row["attack_success_rate"] == c["metrics"]["attack_success_rate"]

    samples = report.samples()
    assert len(samples) == sum(c["n"] for c in stored["cells"])
    per_cell = samples.groupby("cell", sort=False)["robust"].mean()
    assert [per_cell[c["id"]] for c in stored["cells"]] == pytest.approx([c["robust_accuracy"] for c in stored["cells"]],
                                                                         abs=0)
    assert str(samples["success"].dtype) == "boolean"

    again = avharness.load_report(out / "report.json")
    assert again.json == stored and again.cells().equals(cells)

    figs = report.plot("curve", threat="audio-linf", worst=True)
    assert len(figs) == 1 and figs[0].axes[0].get_ylabel() == "robust accuracy (%)"
    assert len(report.plot("curve", threat="joint-l2")) == 3  # fgsm, pgd, worst case
    assert len(report.plot("heatmap")) == 2
    with pytest.raises(avharness.UserError, match="no curve plot matches"):
        report.plot("curve", threat="nope")
    with pytest.raises(avharness.UserError, match="unknown plot kind"):
        report.plot("pie")


def test_run_from_a_path_uses_the_default_output_folder(example, tmp_path, monkeypatch):
    (tmp_path / "suite.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    report = avharness.run("suite.yaml", overrides=["attacks.1.steps=2"], limit=16, quiet=True)
    assert report.path == avharness.api.Path("reports") / "tiny"
    assert (tmp_path / "reports" / "tiny" / "report.html").exists()


@pytest.mark.parametrize("call, message", [
    (lambda tmp: avharness.run({"seed": 1}, out=tmp), "needs a 'name'"),
    (lambda tmp: avharness.run(str(tmp / "missing.yaml")), "suite file not found"),
    (lambda tmp: avharness.run(str(tmp / "missing.yaml"), limit=0), "limit must be an integer >= 1"),
    (lambda tmp: avharness.load_report(tmp / "nothing"), "report not found"),
])
def test_user_errors(tmp_path, call, message):
    with pytest.raises(avharness.UserError, match=message):
        call(tmp_path)
