"""Corruptions under unbounded (norm none) and bounded threats, and their place in a run."""

import json

import pytest
import torch
from test_cli import GOOD, write

from avharness import Budget, SampleRNG, ThreatModel, UserError
from avharness.cli import main
from avharness_plugins.attacks.corruptions import DropModality, GaussianNoise, Occlusion

WIDE = (-1e6, 1e6)


def batch(n=6, t=8):
    g = torch.Generator().manual_seed(0)
    return {"audio": torch.randn(n, t, 5, generator=g), "video": torch.rand(n, t, 3, 3, generator=g)}


def rng(n=6, key="k"):
    return SampleRNG(0, key, [f"s{i}" for i in range(n)])


def unbounded(bounds=WIDE, m="audio"):
    return ThreatModel("t", {m: Budget("none", float("inf"), bounds)})


def test_gaussian_noise_hits_its_snr_and_is_batch_independent():
    x = batch()
    out = GaussianNoise(snr_db=10).perturb(None, x, None, unbounded(), None, rng())
    d = (out["audio"] - x["audio"]).flatten(1)
    snr = 10 * torch.log10(x["audio"].flatten(1).pow(2).sum(1) / d.pow(2).sum(1))
    assert torch.allclose(snr, torch.full_like(snr, 10.0), atol=1e-3)
    assert out["video"] is x["video"]
    half = GaussianNoise(snr_db=10).perturb(None, {k: v[3:] for k, v in x.items()}, None, unbounded(), None,
                                            SampleRNG(0, "k", [f"s{i}" for i in range(3, 6)]))
    assert torch.allclose(half["audio"], out["audio"][3:])


@pytest.mark.parametrize("pattern, fraction, block, masked", [
    ("alternate", 0.5, 2, [2, 3, 6, 7]), ("first", 0.5, 1, [0, 1, 2, 3]),
    ("middle", 0.25, 1, [3, 4]), ("last", 0.25, 1, [6, 7]),
])
def test_occlusion_masks_the_seed_patterns(pattern, fraction, block, masked):
    x = batch()
    out = Occlusion(pattern, fraction, block).perturb(None, x, None, unbounded((-3.0, 3.0), "video"), None, rng())
    hit = (out["video"] != x["video"]).flatten(2).any(2).any(0)
    assert hit.nonzero().flatten().tolist() == masked
    assert (out["video"][:, masked] == -3.0).all()


def test_drop_modality():
    x = batch()
    zero = DropModality("zero").perturb(None, x, None, unbounded((0.0, 1.0), "video"), None, rng())
    assert (zero["video"] == 0).all() and zero["audio"] is x["audio"]
    mean = DropModality("mean").perturb(None, x, None, unbounded((0.0, 1.0), "video"), None, rng())
    assert torch.allclose(mean["video"][:, 0, 0, 0], x["video"].flatten(1).mean(1))
    assert (mean["video"].flatten(1).std(1) == 0).all()


def test_a_bounded_threat_projects_the_corruption():
    x = batch()
    t = ThreatModel("t", {"audio": Budget("linf", 0.1, WIDE)})
    out = GaussianNoise(snr_db=0).perturb(None, x, None, t, None, rng())
    assert (out["audio"] - x["audio"]).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("factory, kw, msg", [
    (Occlusion, {"pattern": "checker"}, "pattern must be one of"),
    (Occlusion, {"fraction": 0}, "fraction must be in"),
    (DropModality, {"mode": "noise"}, "mode must be zero or mean"),
    (GaussianNoise, {"snr_db": "loud"}, "snr_db must be a finite number"),
])
def test_bad_parameters(factory, kw, msg):
    with pytest.raises(UserError, match=msg):
        factory(**kw)


SUITE = GOOD.replace("threats:\n", "threats:\n  - {name: noisy, audio: {norm: none}}\n").replace(
    "  - {plugin: fgsm}\n", "  - {plugin: fgsm}\n  - {plugin: gaussian_noise, snr_db: 0}\n")


def test_corruptions_in_a_run(example, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, SUITE)), "-o", str(out), "-q"]) == 0
    r = json.loads((out / "report.json").read_text())
    noisy = [c for c in r["cells"] if c["threat"] == "noisy"]
    assert {c["attack"] for c in noisy} == {"gaussian_noise"}
    assert all(c["robust_accuracy"] <= c["clean_accuracy"] for c in noisy)
    assert any(s["attack"] == "pgd" and s["threat"] == "noisy" and "unbounded" in s["reason"] for s in r["skipped"])
    # the noise also runs under the bounded threats, projected onto their balls
    assert any(c["attack"] == "gaussian_noise" and c["threat"] == "audio-linf" for c in r["cells"])
    assert "audio unbounded" in (out / "report.md").read_text()


def test_norm_none_takes_no_eps(example, tmp_path, capsys):
    bad = GOOD.replace("threats:\n", "threats:\n  - {name: noisy, audio: {norm: none, eps: 1}}\n")
    assert main(["validate", str(write(tmp_path, bad))]) == 2
    assert "norm none is unbounded and takes no eps" in capsys.readouterr().err
