"""precision: bf16 (autocast for the model's forward; inputs, gradients and attack state in fp32)."""

import json

import torch
from test_cli import GOOD, write

from avharness.cli import main
from avharness.precision import with_precision


def run(tmp_path, out, *extra):
    assert main(["run", str(write(tmp_path, GOOD)), "-o", str(out), "-q", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def test_bf16_on_cpu_stays_close_to_fp32(example, tmp_path):
    fp32 = run(tmp_path, tmp_path / "fp32")
    bf16 = run(tmp_path, tmp_path / "bf16", "--set", "precision=bf16")
    assert bf16["suite"]["config"]["precision"] == "bf16"
    ref = {c["id"]: c for c in fp32["cells"]}
    assert not {c["key"] for c in bf16["cells"]} & {c["key"] for c in fp32["cells"]}
    for c in bf16["cells"]:
        assert abs(c["robust_accuracy"] - ref[c["id"]]["robust_accuracy"]) <= 0.05, c["id"]
        assert abs(c["clean_accuracy"] - ref[c["id"]]["clean_accuracy"]) <= 0.03, c["id"]
        assert c["robust_accuracy"] <= c["clean_accuracy"]


def test_autocast_wrapper_keeps_inputs_and_gradients_fp32(example):
    from avharness import InputSpec, Task
    from avharness_example import LinearAV

    specs = {"audio": InputSpec((4,), (-1.0, 1.0), "f"), "video": InputSpec((3,), (-1.0, 1.0), "f")}
    model = LinearAV(Task("multiclass", ("a", "b")), specs).eval()
    wrapped = with_precision(model, "bf16", torch.device("cpu"))
    x = {"audio": torch.randn(5, 4, requires_grad=True), "video": torch.randn(5, 3)}
    logits = wrapped(x)
    assert logits.dtype == torch.float32 and wrapped.modalities == model.modalities
    torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long)).backward()
    assert x["audio"].grad.dtype == torch.float32 and torch.isfinite(x["audio"].grad).all()
    assert torch.allclose(logits, model(x), atol=0.1)
    assert with_precision(model, "fp32", torch.device("cpu")) is model
