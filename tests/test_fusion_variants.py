"""Mid and score fusion: the contract, and the score fusion's averaging rule."""

import pytest
import torch
from toy import SPECS

from avharness import Task
from avharness.conformance import check_model
from avharness_plugins.models.small import ScoreFusion, build_mid_fusion, build_score_fusion

SPEC2 = {"audio": SPECS["audio"].__class__((20, 8), (-4.0, 4.0)), "video": SPECS["video"].__class__((3, 12, 12), (0.0, 1.0))}


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
@pytest.mark.parametrize("build", [build_mid_fusion, build_score_fusion])
def test_contract(build, kind):
    task = Task(kind, tuple("abcde"))
    results = check_model(lambda: build(task, SPEC2, width=4, latent_dim=16), task, SPEC2)
    assert all(ok for _, ok, _ in results), [r for r in results if not r[1]]


def inputs(n=6):
    g = torch.Generator().manual_seed(0)
    return {"audio": torch.randn(n, 20, 8, generator=g), "video": torch.rand(n, 3, 12, 12, generator=g)}


def test_score_fusion_averages_probabilities():
    task = Task("multiclass", tuple("abcde"))
    torch.manual_seed(0)
    m = ScoreFusion(task, SPEC2, width=4, latent_dim=8, audio_weight=0.6).eval()
    x = inputs()
    z = m.embed(x)
    want = 0.6 * z["fused"][:, 0].softmax(1) + 0.4 * z["fused"][:, 1].softmax(1)
    assert torch.allclose(m(x).softmax(1), want, atol=1e-6)
    m.weight = 1.0
    assert torch.allclose(m(x).softmax(1), z["fused"][:, 0].softmax(1), atol=1e-6)


def test_score_fusion_multilabel_is_log_odds_of_the_average():
    task = Task("multilabel", tuple("abc"))
    torch.manual_seed(0)
    m = ScoreFusion(task, SPEC2, width=4, latent_dim=8, audio_weight=0.25).eval()
    x = inputs()
    f = m.embed(x)["fused"]
    assert torch.allclose(m(x).sigmoid(), 0.25 * f[:, 0].sigmoid() + 0.75 * f[:, 1].sigmoid(), atol=1e-5)


def test_bad_parameters():
    task = Task("multiclass", tuple("ab"))
    from avharness import UserError
    with pytest.raises(UserError, match="heads must divide latent_dim"):
        build_mid_fusion(task, SPEC2, latent_dim=10, heads=4)
    with pytest.raises(UserError, match="audio_weight must be in"):
        build_score_fusion(task, SPEC2, audio_weight=1.5)
