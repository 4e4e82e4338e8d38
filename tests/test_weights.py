"""Starting models from checkpoints: safe loading, key remapping, provenance, defense none."""

import hashlib
import json

import pytest
import torch
from test_cli import run_cli, write
from torch import nn

from avharness import UserError
from avharness.weights import load_weights

EVAL_ONLY = """\
name: eval-only
seed: 5
data: {plugin: gaussian_av, n: 200}
eval: {batch_size: 50}
models:
  - {name: audio, plugin: linear_av, modalities: [audio]}
  - {name: fused, plugin: linear_av}
defenses: [none]
attacks: [{plugin: pgd, steps: 3}]
threats:
  - {name: audio-linf, audio: {norm: linf, eps: [0.0, 0.5]}}
metrics: [accuracy]
"""


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)


def test_unwraps_containers_and_dataparallel_prefix(tmp_path):
    src = Net()
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = Net()
    info = load_weights(dst, path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["missing"] == [] and info["unexpected"] == []


def test_key_map_renames_and_drops(tmp_path):
    src = Net()
    state = {k.replace("body.", "encoder.fc."): v for k, v in src.state_dict().items()}
    state["aux.weight"] = torch.zeros(1)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"missing: body.weight, body.bias; 3 unexpected: .*aux.weight.*key_map"):
        load_weights(Net(), path)
    dst = Net()
    info = load_weights(dst, path, key_map={"encoder.fc.": "body.", "aux.": None})
    assert torch.equal(dst.body.weight, src.body.weight) and info["key_map"] == {"encoder.fc.": "body.", "aux.": None}


def test_wrong_shape_and_unsafe_pickle_are_clear_errors(tmp_path):
    path = tmp_path / "shape.pt"
    torch.save({"body.weight": torch.zeros(5, 3), "body.bias": torch.zeros(4), "head.weight": torch.zeros(2, 4),
                "head.bias": torch.zeros(2)}, path)
    with pytest.raises(UserError, match=r"another shape: body.weight \(file \(5, 3\), model \(4, 3\)\)"):
        load_weights(Net(), path, strict=False)
    unsafe = tmp_path / "model_object.pt"
    torch.save(Net(), unsafe)  # a pickled module, not a state dict
    with pytest.raises(UserError, match="refused to unpickle.*Net.*weights_only=True"):
        load_weights(Net(), unsafe)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        load_weights(Net(), broken)


def test_eval_only_suite_needs_checkpoints_and_says_which(example, tmp_path, capsys):
    path = write(tmp_path, EVAL_ONLY)
    code, _, err = run_cli(["validate", path], capsys)
    assert code == 2
    assert "--set models.0.checkpoint=" in err and "--set models.1.checkpoint=" in err and "defenses[0]" in err
    code, _, err = run_cli(["validate", path, "--set", "models.0.checkpoint=nowhere.pt"], capsys)
    assert code == 2 and "(--set models.0.checkpoint)" in err and "does not exist" in err


def test_model_init_then_evaluate_as_loaded(example, tmp_path, capsys):
    path = write(tmp_path, EVAL_ONLY)
    code, out, _ = run_cli(["model", "init", path, "-o", tmp_path / "ckpt"], capsys)
    assert code == 0 and "--set models.1.checkpoint=" in out
    sets = ["--set", f"models.0.checkpoint={tmp_path / 'ckpt' / 'audio.pt'}",
            "--set", f"models.1.checkpoint={tmp_path / 'ckpt' / 'fused.pt'}"]
    code, _, err = run_cli(["run", path, "-o", tmp_path / "out", "-q", *sets], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for m in report["models"]:
        ckpt = tmp_path / "ckpt" / f"{m['name']}.pt"
        assert m["weights"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert m["fit"]["steps"] == 0
        # evaluated as loaded: the stored model holds exactly the checkpoint's tensors
        stored = torch.load(f"{m['checkpoint']}/model.pt", weights_only=True)
        assert all(torch.equal(stored[k], v) for k, v in torch.load(ckpt, weights_only=True).items())
    # other weights under the same path are a different model: nothing stale is reused
    state = torch.load(tmp_path / "ckpt" / "audio.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "ckpt" / "audio.pt")
    code, _, _ = run_cli(["run", path, "-o", tmp_path / "out", "-q", *sets], capsys)
    again = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [m["reused"] for m in again["models"]] == [False, True]


def test_data_stats_refuses_what_it_cannot_do(example, tmp_path, capsys):
    path = write(tmp_path, EVAL_ONLY)
    code, _, err = run_cli(["data", "stats", path, "-o", tmp_path / "s.json"], capsys)
    assert code == 2 and "computes no feature statistics" in err
    assert not (tmp_path / "s.json").exists()


def test_model_init_checks_parameters_before_writing(example, tmp_path, capsys):
    path = write(tmp_path, EVAL_ONLY)
    code, _, err = run_cli(["model", "init", path, "--set", "models.1.widht=3", "-o", tmp_path / "ckpt"], capsys)
    assert code == 2 and "models[1].widht" in err and "unknown parameter" in err
    assert not list((tmp_path / "ckpt").glob("*.pt")) if (tmp_path / "ckpt").exists() else True
