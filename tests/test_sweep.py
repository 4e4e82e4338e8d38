"""eval.reuse_sweep: samples wrong when clean are not attacked, samples broken at a smaller eps are
carried; on a model where the answer is known, and never weaker than the independent attack."""

import json

import pytest
import torch
from conftest import make_dist
from test_cli import GOOD, write

from avharness.cli import main
from avharness.sweep import nested
from avharness.threat import Budget, ThreatModel

# A 1-d binary task: logits [-x, x], so FGSM at L∞ eps flips exactly the samples with |x| < eps.
LINE = '''
import hashlib
import torch
from torch import nn
from avharness import AVModel, Batch, InputSpec, Task, hookimpl

MAGS = [0.05 + 0.1 * k for k in range(10)]


class Line:
    def __init__(self):
        self.task = Task("multiclass", ("neg", "pos"))
        self.specs = {"audio": InputSpec((1,), (-4.0, 4.0), "feature")}
        x = [s * m for m in MAGS for s in (1, -1)] + [0.3, -0.3, 0.7, -0.7]
        y = [int(v > 0) for v in x[:20]] + [0, 1, 0, 1]  # the last four are labelled wrong
        self._x, self._y = torch.tensor(x).unsqueeze(1), torch.tensor(y)

    def splits(self):
        return ("test",)

    def size(self, split):
        return len(self._y)

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        n = len(self._y) if limit is None else min(limit, len(self._y))
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield Batch({"audio": self._x[i:j]}, self._y[i:j], [f"s{k:02d}" for k in range(i, j)])

    def info(self):
        return {}

    def manifest(self, split):
        return hashlib.sha256(self._x.numpy().tobytes()).hexdigest()


class Sign(AVModel):
    def __init__(self, task, specs):
        super().__init__()
        self.modalities = ("audio",)
        self.w = nn.Parameter(torch.tensor([[-1.0], [1.0]]))

    def embed(self, inputs):
        return {"fused": inputs["audio"]}

    def head(self, latent):
        return latent @ self.w.t()


@hookimpl
def register_datasets(register):
    register("line", Line)


@hookimpl
def register_models(register):
    register("sign", Sign)
'''

SUITE = """\
name: line
data: {plugin: line}
eval: {batch_size: 7, reuse_sweep: REUSE}
models:
  - {name: sign, plugin: sign, checkpoint: CKPT}
defenses: [{plugin: none}]
attacks: [{plugin: fgsm}]
threats:
  - {name: a, audio: {norm: linf, eps: [0.0, 0.2, 0.5, 1.0]}}
metrics: [accuracy, attack_success_rate, perturbation]
"""


@pytest.fixture
def line(with_site, tmp_path_factory):
    site = tmp_path_factory.mktemp("line_site")
    make_dist(site, "avharness-line", "avharness_line", LINE, entry="line")
    with_site(site)
    ckpt = site / "sign.pt"
    torch.save({"w": torch.tensor([[-1.0], [1.0]])}, ckpt)
    return ckpt


def run(tmp_path, text, out):
    assert main(["run", str(write(tmp_path, text)), "-o", str(out), "-q"]) == 0
    return json.loads((out / "report.json").read_text())


def test_known_answer(line, tmp_path):
    with_reuse = run(tmp_path, SUITE.replace("REUSE", "true").replace("CKPT", str(line)), tmp_path / "on")
    without = run(tmp_path, SUITE.replace("REUSE", "false").replace("CKPT", str(line)), tmp_path / "off")
    # 24 samples, 4 wrong when clean; robust at eps: |x| > eps among the 20 right ones
    expect_robust = [20, 16, 10, 0]
    stats = []
    for r in (with_reuse, without):
        cells = sorted(r["cells"], key=lambda c: c["step"])
        assert [round(c["robust_accuracy"] * 24) for c in cells] == expect_robust
        stats.append([c["attack_stats"] for c in cells])
    on, off = stats
    assert [s["attacked_samples"] for s in on] == [20, 20, 16, 10]  # the robust ones of the step before
    assert [s["carried_samples"] for s in on] == [0, 0, 4, 10]
    assert all(s["skipped_samples"] == 4 for s in on)
    assert [s["attacked_samples"] for s in off] == [24] * 4
    assert sum(s.get("forward_samples", 0) for s in on) < sum(s.get("forward_samples", 0) for s in off)
    # a carried sample keeps the (smaller) perturbation that broke it, inside the larger ball
    for c in with_reuse["cells"]:
        assert c["achieved"]["audio"] <= max(c["eps"]["audio"], 0) + 1e-6
    # the keys differ: a reuse cell is never served to a run without reuse (and vice versa)
    assert not {c["key"] for c in with_reuse["cells"]} & {c["key"] for c in without["cells"]}


def test_resume_mid_sweep_gives_the_same_numbers(line, tmp_path):
    text = SUITE.replace("REUSE", "true").replace("CKPT", str(line))
    full = run(tmp_path, text, tmp_path / "full")
    # a store holding steps 0-2 with the sweep state of step 2 lost: step 2 is recomputed for it
    part = run(tmp_path, text.replace("0.5, 1.0]", "0.5]"), tmp_path / "part")
    for f in (tmp_path / "part" / "store" / "sweeps").glob("*.pt"):
        f.unlink()
    resumed = run(tmp_path, text, tmp_path / "part")
    assert [c["reused"] for c in sorted(resumed["cells"], key=lambda c: c["step"])] == [True, True, True, False]
    assert [c["metrics"] for c in resumed["cells"]] == [c["metrics"] for c in full["cells"]]
    assert len(part["cells"]) == 3


def test_reuse_is_never_weaker(example, tmp_path):
    on = run(tmp_path, GOOD, tmp_path / "on")
    off = run(tmp_path, GOOD.replace("eval: {batch_size: 32}", "eval: {batch_size: 32, reuse_sweep: false}"),
              tmp_path / "off")
    ref = {c["id"]: c for c in off["cells"]}
    attacked = {"on": 0, "off": 0}
    for c in on["cells"]:
        assert c["robust_accuracy"] <= ref[c["id"]]["robust_accuracy"] + 1e-12, c["id"]
        assert c["clean_accuracy"] == ref[c["id"]]["clean_accuracy"]
        attacked["on"] += c["attack_stats"]["attacked_samples"]
        attacked["off"] += ref[c["id"]]["attack_stats"]["attacked_samples"]
    assert attacked["on"] < attacked["off"]


def test_nested():
    def t(**b):
        return ThreatModel("t", {m: Budget(n, e, (-1.0, 1.0)) for m, (n, e) in b.items()})

    assert nested(t(audio=("linf", 0.1)), t(audio=("linf", 0.2)))
    assert nested(t(audio=("linf", 0.1), video=("l2", 1.0)), t(audio=("linf", 0.1), video=("l2", 2.0)))
    assert not nested(t(audio=("linf", 0.2)), t(audio=("linf", 0.1)))
    assert not nested(t(audio=("linf", 0.1)), t(audio=("l2", 0.2)))
    assert not nested(t(audio=("linf", 0.1), video=("l2", 3.0)), t(audio=("linf", 0.2), video=("l2", 2.0)))
    assert not nested(t(audio=("linf", 0.1)), t(audio=("linf", 0.1), video=("linf", 0.1)))


def test_bad_keys_are_located(example, tmp_path, capsys):
    for old, new, pattern in [
        ("eval: {batch_size: 32}", "eval: {batch_size: 32, reuse_sweep: maybe}", "eval.reuse_sweep: expected true/false"),
        ("seed: 3", "seed: 3\nprecision: fp8", "suite.yaml:3: precision: must be one of fp32, bf16, fp16"),
        ("seed: 3", "seed: 3\nexecutor: dask", "suite.yaml:3: executor: must be one of local, ray"),
        ("seed: 3", "seed: 3\nresources: {num_gpu: 1}", "suite.yaml:3: resources.num_gpu: unknown key (did you mean 'num_gpus'?)"),
        ("seed: 3", "seed: 3\nresources: {num_cpus: -1}", "resources.num_cpus: expected a number >= 0"),
    ]:
        assert main(["validate", str(write(tmp_path, GOOD.replace(old, new)))]) == 2
        err = capsys.readouterr().err
        assert pattern in err and err.count("\n") == 1, err
