"""suites/audioset_pgd.yaml and suites/kinetics_sounds_pgd.yaml end to end, on generated folders in
the real layouts with randomly initialised checkpoints (`avharness model init`): what a lab with its
own data and weights runs, shrunk to seconds."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from test_cli import run_cli

from avharness_plugins.testing.layouts import write_audioset_csv_layout, write_kinetics_sounds_layout

SUITES = Path(__file__).resolve().parents[1] / "suites"
AUDIOSET = SUITES / "audioset_pgd.yaml"
KINETICS = SUITES / "kinetics_sounds_pgd.yaml"
AUDIOSET_MODELS = ["audio", "video", "early", "mid", "late"]
KINETICS_MODELS = ["audio", "video", "mid", "late"]


def small(n_models, no_layers=()):
    """--set flags shrinking the suite's seed-size models to a few thousand parameters."""
    out = []
    for i in range(n_models):
        out += ["--set", f"models.{i}.embed_dim=64"]
        if i not in no_layers:
            out += ["--set", f"models.{i}.layers=1", "--set", f"models.{i}.heads=4"]
    return out


def checkpoints(folder, names):
    return [x for i, n in enumerate(names) for x in ("--set", f"models.{i}.checkpoint={folder / (n + '.pt')}")]


@pytest.fixture(scope="module")
def audioset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("audioset")
    written = write_audioset_csv_layout(root, 8, n_classes=5, seconds=2.0, video_features=True, feature_dim=64,
                                        missing=1)
    return root, written


def test_audioset_suite_says_what_to_provide(audioset_root, tmp_path, capsys):
    root, _ = audioset_root
    code, _, err = run_cli(["validate", AUDIOSET], capsys)
    assert code == 2 and "--set data.root=" in err and "class_labels_indices.csv" in err
    code, _, err = run_cli(["validate", AUDIOSET, "--set", f"data.root={root}"], capsys)
    assert code == 2 and all(f"--set models.{i}.checkpoint=" in err for i in range(5))


def test_audioset_suite_end_to_end(audioset_root, tmp_path, capsys):
    root, written = audioset_root
    data = ["--set", f"data.root={root}"]
    # normalisation statistics computed by the command, not typed in
    code, out, err = run_cli(["data", "stats", AUDIOSET, *data, "--split", "eval", "-o", tmp_path / "stats.json"], capsys)
    assert code == 0, err
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["pipeline"] == "logmel64" and stats["n_clips"] == 8 and stats["std"] > 0
    data += ["--set", f"data.stats={tmp_path / 'stats.json'}"]
    code, out, err = run_cli(["model", "init", AUDIOSET, *data, *small(5), "-o", tmp_path / "ckpt"], capsys)
    assert code == 0, err
    args = [*data, *small(5), *checkpoints(tmp_path / "ckpt", AUDIOSET_MODELS), "--set", "attacks.0.steps=2",
            "--set", "attacks.1.steps=2", "--set", "attacks.1.n_queries=5"]
    code, out, err = run_cli(["run", AUDIOSET, *args, "-o", tmp_path / "out", "-q"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    assert report["data"]["task"]["kind"] == "multilabel"
    assert report["data"]["info"]["audio"]["pipeline"]["normalisation"]["mean"] == stats["mean"]
    info = json.dumps(report["data"]["info"])
    assert written["missing"][0] in info  # the clip absent on disk is listed, not silently dropped
    for m in report["models"]:
        ckpt = tmp_path / "ckpt" / f"{m['name']}.pt"
        assert m["weights"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert {c["model"] for c in report["cells"]} == set(AUDIOSET_MODELS)
    for c in report["cells"]:
        v = c["metrics"]
        for key in ("clean_map", "robust_map", "clean_dprime", "robust_dprime", "label_flip_rate"):
            assert key in v
        assert c["success_rule"] == "any_flip" and c["n"] == 8
        if all(e == 0 for e in c["eps"].values()):  # eps = 0 changes nothing
            assert v["robust_map"] == v["clean_map"] and v["label_flip_rate"] == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Clean vs robust map" in md and "## Clean vs robust dprime" in md and "robust mAP" in md
    assert "1 of 9 listed clips missing or unreadable" in md
    # PGD-2 (for speed) may leave loss_converged failing, rightly; every other check must pass
    assert not [c for c in report["checks"] if c["status"] == "fail" and c["name"] != "loss_converged"]


def test_audioset_waveform_domain_attack(audioset_root, tmp_path, capsys):
    """Audio as a waveform: the model computes log-mel itself, the attack's budget is in amplitude."""
    root, _ = audioset_root
    suite = tmp_path / "wave.yaml"
    suite.write_text(f"""\
name: wave
data: {{plugin: audioset, root: "{root}", audio: waveform, clip_seconds: 2.0}}
eval: {{split: eval, batch_size: 4, success: top1}}
models: [{{name: audio, plugin: crnn, embed_dim: 64, checkpoint: null}}]
defenses: [none]
attacks: [{{plugin: pgd, steps: 3}}]
threats: [{{name: wave, audio: {{norm: linf, eps: [0.0, 0.001, 0.01]}}}}]
metrics: [tagging, attack_success_rate, perturbation]
""")
    code, _, err = run_cli(["model", "init", suite, "-o", tmp_path / "ckpt"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["run", suite, "--set", f"models.0.checkpoint={tmp_path / 'ckpt' / 'audio.pt'}",
                            "-o", tmp_path / "out", "-q"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["specs"]["audio"]["units"] == "waveform"
    assert report["data"]["specs"]["audio"]["frontend"]["pipeline"] == "logmel64"
    cells = sorted(report["cells"], key=lambda c: c["step"])
    assert [c["achieved"]["audio"] <= c["eps"]["audio"] + 1e-6 for c in cells] == [True] * 3
    assert cells[0]["metrics"]["attack_success_rate"] == 0.0
    assert cells[-1]["metrics"]["audio_linf_max"] > 0


def test_kinetics_sounds_suite_end_to_end(tmp_path, capsys):
    root = tmp_path / "ks"
    written = write_kinetics_sounds_layout(root, 4, n_classes=3, seconds=3.0, missing=1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    code, _, err = run_cli(["validate", KINETICS, "--set", f"data.root={root}"], capsys)
    assert code == 2 and "video_weights" in err
    data = ["--set", f"data.root={root}", "--set", "data.video_backbone=resnet18",
            "--set", f"data.video_weights={tmp_path / 'r18.pt'}", "--set", "data.frames=3"]
    code, _, err = run_cli(["model", "init", KINETICS, *data, *small(4, no_layers=(0,)), "-o", tmp_path / "ckpt"], capsys)
    assert code == 0, err
    args = [*data, *small(4, no_layers=(0,)), *checkpoints(tmp_path / "ckpt", KINETICS_MODELS),
            "--set", "attacks.1.steps=2", "--set", "attacks.2.steps=2", "--set", "attacks.2.n_queries=5",
            "--set", "threats.0.audio.eps=[0.0, 0.1]",
            "--set", "threats.1.video.eps=[0.0, 0.1]", "--set", "threats.2.audio.eps=[0.0, 0.1]",
            "--set", "threats.2.video.eps=[0.0, 0.1]"]
    code, _, err = run_cli(["run", KINETICS, *args, "-o", tmp_path / "out", "-q"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["task"]["kind"] == "multiclass" and len(report["data"]["task"]["classes"]) == 34
    assert written["test"]["missing"][0] in json.dumps(report["data"]["info"])
    for c in report["cells"]:
        assert {"clean_accuracy", "robust_accuracy", "clean_map", "robust_map"} <= set(c["metrics"])
        assert c["metrics"]["robust_accuracy"] <= c["metrics"]["clean_accuracy"]
    # PGD-2 (for speed) may leave loss_converged failing, rightly; every other check must pass
    assert not [c for c in report["checks"] if c["status"] == "fail" and c["name"] != "loss_converged"]


def test_real_audioset_clip_through_an_attack(shared_audioset, tmp_path, capsys):
    """The real eval_segments.csv (20,371 segments) and the one real clip, Kaldi fbank, a CRNN, PGD."""
    suite = tmp_path / "real.yaml"
    suite.write_text(f"""\
name: real
data: {{plugin: audioset, root: "{shared_audioset}", audio: fbank128}}
eval: {{split: eval, batch_size: 4, success: ap_drop}}
models: [{{name: crnn, plugin: crnn, embed_dim: 256, checkpoint: null}}]
defenses: [none]
attacks: [{{plugin: pgd, steps: 3}}]
threats: [{{name: audio, audio: {{norm: linf, eps: [0.0, 0.1]}}}}]
metrics: [tagging, label_flips, attack_success_rate]
""")
    assert run_cli(["model", "init", suite, "-o", tmp_path / "ckpt"], capsys)[0] == 0
    code, _, err = run_cli(["run", suite, "--set", f"models.0.checkpoint={tmp_path / 'ckpt' / 'crnn.pt'}",
                            "-o", tmp_path / "out", "-q"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["data"]["task"]["classes"]) == 527 and report["data"]["eval"]["n_effective"] == 1
    assert report["data"]["info"]["splits"]["eval"]["listed"] == 20371
    sample = json.loads((tmp_path / "out" / "samples.jsonl").read_text().splitlines()[0])
    hammer = report["data"]["task"]["classes"].index("Hammer")
    assert sample["id"] == "--BfvyPmVMo" and hammer in sample["target"]


@pytest.mark.parametrize("layout", ["json", "hdf5"])
def test_other_audioset_layouts_through_an_attack(layout, tmp_path, capsys):
    """The AST json manifest (paths remapped) and the seed's HDF5 (precomputed features and video),
    each evaluated by a fused model under a joint PGD attack."""
    from avharness_plugins.testing.layouts import write_audioset_hdf5, write_audioset_json_layout, write_class_labels

    root = tmp_path / "a"
    if layout == "json":
        w = write_audioset_json_layout(root, 6, n_classes=4, seconds=2.0, video_features=True, feature_dim=32,
                                       missing=1)
        data = (f'{{plugin: audioset, root: "{root}", layout: json, clip_seconds: 2.0, video: features, '
                f'remap: {json.dumps(w["remap"])}}}')
    else:
        root.mkdir()
        write_audioset_hdf5(root / "data.h5", 6, n_frames=64, n_bins=32, video=True, video_shape=(10, 32),
                            n_classes=4)
        write_class_labels(root / "class_labels_indices.csv", 4)
        data = f'{{plugin: audioset, root: "{root}", layout: hdf5, video: features}}'
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""\
name: {layout}
data: {data}
eval: {{split: eval, batch_size: 4}}
models: [{{name: late, plugin: av_late_fusion, embed_dim: 32, layers: 1, heads: 4, checkpoint: null}}]
defenses: [none]
attacks: [{{plugin: pgd, steps: 2}}]
threats: [{{name: joint, audio: {{norm: linf, eps: [0.0, 0.1]}}, video: {{norm: linf, eps: [0.0, 0.1]}}}}]
metrics: [tagging, label_flips]
""")
    assert run_cli(["model", "init", suite, "-o", tmp_path / "ckpt"], capsys)[0] == 0
    code, _, err = run_cli(["run", suite, "--set", f"models.0.checkpoint={tmp_path / 'ckpt' / 'late.pt'}",
                            "-o", tmp_path / "out", "-q"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["n"] for c in report["cells"]] == [6, 6]
    assert report["cells"][0]["metrics"]["label_flip_rate"] == 0.0
    assert report["cells"][1]["achieved"]["video"] <= 0.1 + 1e-5
