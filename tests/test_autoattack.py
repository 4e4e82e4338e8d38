"""``autoattack``: the cascade is at least as strong as PGD-20 on every cell of a small suite, and
strictly stronger on a model that masks its gradients; its stages, versions and multi-label rule."""

from __future__ import annotations

import pytest
import torch
from toy import ToyModel, sample_rng, test_batch, threat, toy_data, trained

from avharness import AttackOutput, UserError
from avharness.success import outcome
from avharness_plugins.attacks.autoattack import build_autoattack
from avharness_plugins.attacks.pgd import build_pgd

FUSED = ("audio", "video")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(attack, model, data, batch, tm):
    return attack.perturb(model, batch.inputs, batch.target, tm, data.task, sample_rng(batch))


def held(model, data, batch, adv) -> float:
    """Multiclass: robust accuracy; multi-label: share of samples with no flipped label (any_flip)."""
    with torch.no_grad():
        clean, logits = model(batch.inputs), model(adv)
    if data.task.kind == "multiclass":
        return (data.task.correct(clean, batch.target) & data.task.correct(logits, batch.target)).float().mean().item()
    return 1 - outcome(data.task, "any_flip", 0.1, clean, logits, batch.target)[1].float().mean().item()


# the cells of a small suite: models x threats x budgets, multiclass and multi-label
CELLS = [(kind, mods, scope, norm, eps)
         for kind in ("multiclass", "multilabel")
         for mods in (("audio",), ("video",), FUSED)
         for scope, norm, eps in (
             ({"audio"}, "linf", (0.3, 0.0)), ({"audio"}, "linf", (0.5, 0.0)), ({"video"}, "l2", (0.0, 2.0)),
             ({"video"}, "linf", (0.0, 0.25)), ({"audio", "video"}, "linf", (0.2, 0.15)), ({"audio", "video"}, "l2", (2.0, 1.5)))
         if scope <= set(mods)]


def test_at_least_as_strong_as_pgd20_on_every_cell():
    attack = build_autoattack("standard", steps=20, n_queries=200)
    rows = []
    for kind, mods, scope, norm, (ea, ev) in CELLS:
        data = toy_data(kind)
        batch = test_batch(data)
        model = trained(mods, kind)
        budgets = {m: (norm, e) for m, e in (("audio", ea), ("video", ev)) if m in scope}
        tm = threat(data, **budgets)
        aa, pgd = held(model, data, batch, run(attack, model, data, batch, tm)), \
            held(model, data, batch, run(build_pgd(steps=20), model, data, batch, tm))
        rows.append((kind, mods, budgets, aa, pgd))
    worse = [r for r in rows if r[3] > r[4]]
    assert not worse, worse
    assert any(r[3] < 1.0 for r in rows) and any(r[4] > 0.0 for r in rows), rows  # the suite is not vacuous


class Saturated(ToyModel):
    """The trained toy model with logits scaled by 1e4: softmax saturates, so cross-entropy and its
    input gradient are exactly 0 on confidently classified samples (masked gradients)."""

    def head(self, latent):
        return super().head(latent) * 1e4


def test_strictly_stronger_on_a_gradient_masking_model():
    data = toy_data()
    batch = test_batch(data)
    model = Saturated(data.task, data.specs, FUSED)
    model.load_state_dict(trained(FUSED).state_dict())
    model.eval()
    tm = threat(data, audio=("linf", 0.25), video=("linf", 0.15))
    pgd = held(model, data, batch, run(build_pgd(steps=20), model, data, batch, tm))
    out = run(build_autoattack("standard", steps=20, n_queries=200), model, data, batch, tm)
    aa = held(model, data, batch, out)
    assert aa < pgd - 0.1, (aa, pgd)
    # APGD-CE is masked just as PGD is; the scale-invariant targeted DLR stage does the breaking
    assert out.stats["0:apgd-ce/robust_after"] > out.stats["1:apgd-t/robust_after"]


def test_stages_and_stats():
    data = toy_data()
    batch = test_batch(data)
    model = trained(FUSED)
    tm = threat(data, audio=("linf", 0.25), video=("linf", 0.15))
    out = run(build_autoattack("standard", steps=10, n_queries=50), model, data, batch, tm)
    assert isinstance(out, AttackOutput)
    names = ["0:apgd-ce", "1:apgd-t", "2:fab-t", "3:square"]
    for a, b in zip(names, names[1:]):
        assert out.stats[f"{b}/attacked"] == out.stats[f"{a}/robust_after"]
    assert out.stats["gradient_free_broke"] == out.stats["2:fab-t/robust_after"] - out.stats["3:square/robust_after"]
    assert out.stats["3:square/robust_after"] == round(held(model, data, batch, out) * len(batch.ids))
    fast = build_autoattack("fast", steps=10)
    assert [n for n, _ in fast.stages] == ["apgd-ce", "apgd-t"] and fast.stages[1][1].targets == 3
    rand = build_autoattack("rand", steps=10, eot_iter=2)
    assert [n for n, _ in rand.stages] == ["apgd-ce", "apgd-dlr"] and rand.stages[0][1].eot_iter == 2
    assert [n for n, _ in build_autoattack(goal="ap_drop").stages] == ["apgd-ce", "apgd-t", "square"]


def test_mixed_norm_threat_skips_fab():
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat(data, audio=("linf", 0.2), video=("l2", 1.0))
    out = run(build_autoattack("standard", steps=5, n_queries=20), trained(FUSED), data, batch, tm)
    assert out.stats.get("2:fab-t/skipped", 0) == out.stats["2:fab-t/attacked"]


def test_multilabel_cascade_follows_the_goal():
    data = toy_data("multilabel")
    batch = test_batch(data)
    model = trained(FUSED, "multilabel")
    tm = threat(data, audio=("linf", 0.18), video=("linf", 0.12))
    out = run(build_autoattack("fast", steps=10), model, data, batch, tm)
    # every sample starts robust under any_flip (nothing flipped when clean), unlike exact match
    assert out.stats["0:apgd-ce/attacked"] == len(batch.ids)
    assert out.stats["1:apgd-t/robust_after"] == round(held(model, data, batch, out) * len(batch.ids))


def test_bad_parameters():
    for kwargs, word in (({"version": "plus"}, "version"), ({"steps": 0}, "steps"), ({"goal": "x"}, "goal")):
        with pytest.raises(UserError, match=word):
            build_autoattack(**kwargs)


def test_gradient_free_stage_check():
    from avharness.report.checks import cell_checks

    def cell(broke):
        return {"id": f"c{broke}", "model": "m", "defense": "d", "attack": "autoattack", "threat": "t", "step": 1,
                "eps": {"audio": 0.1}, "n": 100, "robust_accuracy": 0.3, "clean_accuracy": 0.9, "samples": [],
                "attack_stats": {"gradient_free_broke": float(broke)}}

    def status(cells):
        return {c["name"]: c for c in cell_checks(cells, {"autoattack": True})}["gradient_free_stage_breaks"]

    assert status([cell(0), cell(2)])["status"] == "pass"
    bad = status([cell(0), cell(7)])
    assert bad["status"] == "fail" and bad["value"] == 0.07 and bad["subject"] == "c7"
