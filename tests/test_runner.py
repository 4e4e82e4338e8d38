"""End to end on the example plugin: reports, reuse, resume, determinism, rebuilding a checkpoint."""

import json

import pytest
import torch
from report_diff import compare
from test_cli import GOOD, write

import avharness
from avharness.cli import main


def run(tmp_path, out, *extra, suite=GOOD):
    path = write(tmp_path, suite)
    code = main(["run", str(path), "-o", str(out), "-q", *map(str, extra)])
    assert code == 0
    return json.loads((out / "report.json").read_text())


def test_report_has_every_cell_and_provenance(example, tmp_path):
    out = tmp_path / "out"
    r = run(tmp_path, out)
    assert r["schema"] == "avharness/report@1"
    # audio model: 2 attacks × audio sweep (3); fused model: 2 attacks × (3 + 2); joint skipped for audio
    assert len(r["cells"]) == 2 * 3 + 2 * 5
    assert {s["threat"] for s in r["skipped"]} == {"joint-l2"}
    assert r["seeds"]["global"] == 3
    assert r["suite"]["sha256"] and r["data"]["manifest_sha256"]
    assert {"python", "torch", "avharness"} <= set(r["environment"])
    assert any(d["dist"] == "avharness-example" for d in r["plugins"])
    assert {"plan_s", "train_s", "attack_s", "total_s"} <= set(r["stages"])
    for c in r["cells"]:
        assert c["robust_accuracy"] <= c["clean_accuracy"]
        assert c["metrics"]["robust_accuracy"] == pytest.approx(c["robust_accuracy"])
        if all(e == 0 for e in c["eps"].values()):
            assert c["robust_accuracy"] == c["clean_accuracy"]
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == sum(c["n"] for c in r["cells"])
    first = json.loads(lines[0])
    assert {"cell", "id", "clean_pred", "adv_pred", "robust", "success"} <= set(first)
    names = {c["name"] for c in r["checks"]}
    assert {"eps_zero_noop", "budget_respected", "robust_le_clean", "sweep_monotone", "iterative_beats_single_step",
            "deterministic_outputs", "zero_gradient_share", "gradients_finite"} <= names
    assert all(c["status"] in ("pass", "warn", "fail") for c in r["checks"])
    budget = next(c for c in r["checks"] if c["name"] == "budget_respected")
    assert budget["status"] == "pass" and 0.5 < budget["value"] <= 1 + 1e-5  # PGD uses its budget
    md = (out / "report.md").read_text()
    assert "Clean vs robust accuracy" in md and "audio-linf" in md


def test_second_run_reuses_everything_and_same_seed_same_numbers(example, tmp_path):
    a = run(tmp_path, tmp_path / "a")
    again = run(tmp_path, tmp_path / "a")
    assert all(c["reused"] for c in again["cells"]) and all(m["reused"] for m in again["models"])
    b = run(tmp_path, tmp_path / "b")  # a fresh store: everything recomputed
    assert not any(c["reused"] for c in b["cells"])
    assert compare(b, a, tolerance=0.0) == []
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()


def test_interrupted_run_resumes(example, tmp_path, monkeypatch):
    from avharness import executor as runner

    calls = {"n": 0}
    original = runner._attack_cell

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "_attack_cell", flaky)
    path = write(tmp_path, GOOD)
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "-q"]) == 130
    assert not (out / "report.json").exists()
    assert len(list((out / "store" / "cells").glob("*.json"))) == 3
    monkeypatch.setattr(runner, "_attack_cell", original)
    r = run(tmp_path, out)
    assert sum(c["reused"] for c in r["cells"]) == 3
    fresh = run(tmp_path, tmp_path / "fresh")
    assert compare(r, fresh) == []


def test_changed_cell_is_recomputed_alone(example, tmp_path):
    out = tmp_path / "out"
    run(tmp_path, out)
    r = run(tmp_path, out, suite=GOOD.replace("[0.0, 0.5, 2.0]", "[0.0, 0.5, 3.0]"))
    fresh = [c["id"] for c in r["cells"] if not c["reused"]]
    assert sorted(fresh) == ["audio/standard/fgsm/audio-linf/2", "audio/standard/pgd/audio-linf/2",
                             "fused/standard/fgsm/audio-linf/2", "fused/standard/pgd/audio-linf/2"]


def test_checkpoint_rebuilds_outside_the_harness(example, tmp_path):
    out = tmp_path / "out"
    r = run(tmp_path, out)
    folder = next(m["checkpoint"] for m in r["models"] if m["name"] == "fused")
    model = avharness.load_model(folder)
    spec = json.loads((tmp_path / "out" / "store" / "models" / folder.split("/")[-1] / "model.json").read_text())
    assert spec["plugin"] == "linear_av"
    x = {"audio": torch.zeros(2, 16), "video": torch.zeros(2, 12)}
    again = avharness.load_model(folder)
    assert torch.equal(model(x), again(x))
    state = torch.load(f"{folder}/model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_limit_is_recorded(example, tmp_path):
    r = run(tmp_path, tmp_path / "out", "--limit", "10")
    assert r["data"]["eval"]["n_effective"] == 10 and all(c["n"] == 10 for c in r["cells"])


def test_check_command(example, tmp_path, capsys):
    out = tmp_path / "out"
    run(tmp_path, out)
    assert main(["check", str(out / "report.json"), "--baseline", str(out / "report.json")]) == 0
    moved = json.loads((out / "report.json").read_text())
    moved["cells"][3]["robust_accuracy"] += 0.2
    (tmp_path / "base.json").write_text(json.dumps(moved))
    capsys.readouterr()
    assert main(["check", str(out / "report.json"), "--baseline", str(tmp_path / "base.json"), "--tolerance", "0.1"]) == 1
    assert "robust_accuracy" in capsys.readouterr().out
    assert main(["check", str(out / "report.json"), "--baseline", str(tmp_path / "base.json"), "--tolerance", "0.3"]) == 0
    assert main(["check", str(tmp_path / "missing.json"), "--baseline", str(out / "report.json")]) == 2


def test_damaged_checkpoint_is_retrained(example, tmp_path):
    out = tmp_path / "out"
    first = run(tmp_path, out)
    for m in first["models"]:
        (tmp_path / "out" / "store" / "models" / m["key"] / "model.pt").write_bytes(b"not a checkpoint")
    again = run(tmp_path, out)
    assert not any(m["reused"] for m in again["models"])
    assert compare(again, first) == []


def test_cuda_on_a_cpu_machine_is_a_clear_error(example, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["run", str(write(tmp_path, GOOD)), "-o", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA device is available; use --device cpu" in err


def test_dataset_with_wrong_shapes_is_a_clear_error(example, tmp_path, capsys, monkeypatch):
    import avharness_example

    real = avharness_example.GaussianAV.batches

    def wrong(self, *a, **kw):
        for b in real(self, *a, **kw):
            b.inputs["audio"] = b.inputs["audio"][:, :5]
            yield b

    monkeypatch.setattr(avharness_example.GaussianAV, "batches", wrong)
    code = main(["run", str(write(tmp_path, GOOD.replace("epochs: 3", "epochs: 1"))), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    # a dataset breaking its own spec is the plugin's fault: exit 3, naming it and its distribution
    assert code == 3 and "dataset 'gaussian_av' (from avharness-example 0.1.0)" in err
    assert "yielded 'audio' of shape (5,) per sample but its spec says (16,)" in err


def test_model_scope_latent_metrics(example, tmp_path):
    suite = GOOD.replace("metrics: [accuracy, attack_success_rate, perturbation]",
                         "metrics: [accuracy, {plugin: convexity, pairs_per_class: 100}, {plugin: density, k: 5}]")
    out = tmp_path / "out"
    plain = run(tmp_path, tmp_path / "plain")
    r = run(tmp_path, out, suite=suite)
    fused = next(m for m in r["models"] if m["name"] == "fused")
    assert set(fused["metrics"]) == {"convexity", "density"}
    assert set(fused["metrics"]["convexity"]["latents"]) == {"audio", "video", "fused"}
    assert fused["metrics"]["convexity"]["latents"]["fused"]["scorer"] == "model head"
    assert "probe" in fused["metrics"]["convexity"]["latents"]["audio"]["scorer"]
    preds = [p for p in r["metric_predicts_robustness"] if p["model"] == "fused"]
    assert {p["series"] for p in preds} >= {"fused/argmax", "audio/knn_purity"}
    # model-scope metrics leave the cells alone, and are reused like cells
    assert [c["robust_accuracy"] for c in r["cells"]] == [c["robust_accuracy"] for c in plain["cells"]]
    stored = sorted((out / "store" / "model_metrics").glob("*.json"))
    assert len(stored) == 4
    before = [p.stat().st_mtime_ns for p in stored]
    again = run(tmp_path, out, suite=suite)
    assert [p.stat().st_mtime_ns for p in stored] == before
    assert again["models"][1]["metrics"]["density"]["latents"] == fused["metrics"]["density"]["latents"]
    assert "Do latent metrics predict robustness?" in (out / "report.md").read_text()


def test_ensemble_stages_in_the_report(example, tmp_path):
    suite = GOOD.replace("  - {plugin: fgsm}\n", "  - {plugin: ensemble, attacks: [fgsm, {plugin: pgd, steps: 3}]}\n")
    out = tmp_path / "out"
    r = run(tmp_path, out, suite=suite)
    cell = next(c for c in r["cells"] if c["attack"] == "ensemble" and c["step"] == 1)
    assert {"0:fgsm/attacked", "0:fgsm/robust_after", "1:pgd/robust_after"} <= set(cell["attack_stats"])
    assert cell["attack_stats"]["1:pgd/robust_after"] == round(cell["robust_accuracy"] * cell["n"])
    assert "## Attack stages" in (out / "report.md").read_text()


def test_findings_are_computed_from_the_cells(example, tmp_path):
    r = run(tmp_path, tmp_path / "out")
    q1 = r["findings"][0]
    assert q1["question"].startswith("Are multi-modal models")
    # every comparison pairs a fused cell with the uni-modal cell of the same budget on its modality
    cells = {(c["model"], c["canonical"]): c for c in r["cells"]}
    assert q1["rows"]
    for row in q1["rows"]:
        uni_budget = "|".join(p for p in row["budget"].split("|") if p.startswith("audio:"))
        assert min(c["robust_accuracy"] for (m, can), c in cells.items() if m == "audio" and can == uni_budget) == row["uni_robust"]
    worse = sum(row["fused_robust"] < row["uni_robust"] for row in q1["rows"])
    assert (f"In {worse} of {len(q1['rows'])} comparisons" in q1["answer"]) or (worse == 0 and "Not refuted" in q1["answer"])
    assert "No evidence in this run" in r["findings"][1]["answer"]  # no latent metric in this suite
    assert "## Findings" in (tmp_path / "out" / "report.md").read_text()
