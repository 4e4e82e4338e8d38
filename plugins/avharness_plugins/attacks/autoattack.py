"""``autoattack``: AutoAttack (Croce & Hein, ICML 2020) as a preset of the ``ensemble`` cascade, per modality.

Each stage attacks only the samples still robust after the stages before it, and the cell's
``attack_stats`` hold every stage's ``attacked`` / ``robust_after`` counts and passes:

- ``standard``: APGD-CE -> APGD-T (targeted DLR, ``targets`` runner-up classes) -> FAB-T -> Square
  (``n_queries``), the reference's sequence. A gradient-free Square breaking samples every gradient
  stage left robust is the reference's sign of gradient masking; ``gradient_free_broke`` counts them.
- ``fast``: APGD-CE -> APGD-T with 3 targets: the two stages that decide nearly every sample in the
  paper's evaluations, at a fifth of the gradient passes of ``standard`` with 9 targets.
- ``rand``: APGD-CE -> APGD-DLR, each averaging gradients over ``eot_iter`` (20) passes, for
  randomized models (the reference's ``rand`` version).

On a multi-label task "still robust" follows the ``goal`` (the suite's ``eval.success`` rule; auto =
any_flip): a sample is done once its prediction moved as the rule says. Under ``ap_drop`` APGD-T
becomes APGD-DLR (the ranking surrogate) and FAB is left out (no decision boundary). FAB is also
skipped, with ``<stage>/skipped`` counted, on threats mixing L-inf and L2 modalities.
"""

from __future__ import annotations

from avharness import AttackOutput, AttackStats, UserError

from .apgd import build_apgd
from .ensemble import Ensemble
from .fab import build_fab
from .goals import Goal, check_goal, check_int
from .square import build_square

VERSIONS = ("standard", "fast", "rand")


class _SkipUnsupported:
    """A stage that steps aside (inputs unchanged, counted as skipped) on threats it cannot express."""

    def __init__(self, attack):
        self.attack = attack
        self.iterative = getattr(attack, "iterative", None)

    def perturb(self, model, inputs, target, threat, task, rng):
        attacked = threat.attacked(inputs, "autoattack")
        if not self.attack.supports(threat, attacked):
            return AttackOutput(dict(inputs), {"skipped": float(len(target))})
        return self.attack.perturb(model, inputs, target, threat, task, rng)


class AutoAttack(Ensemble):
    def __init__(self, stages, version: str, goal: str, margin: float):
        super().__init__(stages)
        self.version, self.goal, self.margin = version, goal, margin

    def __repr__(self) -> str:
        return f"AutoAttack(version={self.version!r}, stages={[n for n, _ in self.stages]}, goal={self.goal!r})"

    def held(self, task, logits, target, clean_logits):
        """Still robust: multiclass correct; multi-label not yet moved as the goal's rule says."""
        if task.kind == "multiclass":
            return task.correct(logits, target)
        return ~Goal(task, self.goal, self.margin, clean_logits, target).broken(logits)

    def perturb(self, model, inputs, target, threat, task, rng):
        out = super().perturb(model, inputs, target, threat, task, rng)
        if isinstance(out, AttackOutput):
            names = [f"{i}:{n}" for i, (n, _) in enumerate(self.stages)]
            free = [i for i, (n, _) in enumerate(self.stages) if n == "square"]
            if free and free[0] > 0:
                before = out.stats.get(f"{names[free[0] - 1]}/robust_after")
                after = out.stats.get(f"{names[free[0]]}/robust_after")
                if before is not None and after is not None:
                    out.stats[AttackStats.GRADIENT_FREE_BROKE] = before - after
        return out


def build_autoattack(version: str = "standard", steps: int = 100, targets: int = 9, n_queries: int = 5000,
                     eot_iter: int = 20, goal: str = "auto", margin: float = 0.1) -> AutoAttack:
    """AutoAttack: the cascade APGD-CE -> APGD-T -> FAB-T -> Square (version standard | fast | rand).

    steps: iterations of every APGD and FAB run; targets: runner-up classes for APGD-T and FAB-T
    (fast uses at most 3); n_queries: Square's queries; eot_iter: gradient passes averaged (rand).
    goal / margin: the multi-label success rule the losses and the cascade follow (docs/attacks.md).
    """
    if version not in VERSIONS:
        raise UserError(f"autoattack: version must be one of {', '.join(VERSIONS)}, got {version!r}")
    check_int("autoattack", "steps", steps)
    check_int("autoattack", "targets", targets)
    check_int("autoattack", "n_queries", n_queries)
    check_int("autoattack", "eot_iter", eot_iter)
    check_goal("autoattack", goal, margin)
    common = {"goal": goal, "margin": float(margin)}
    apgd_t = (build_apgd("dlr", steps, **common) if goal == "ap_drop"
              else build_apgd("dlr_targeted", steps, targets=targets if version == "standard" else min(3, targets), **common))
    if version == "standard":
        stages = [("apgd-ce", build_apgd("ce", steps, **common)), ("apgd-t", apgd_t)]
        if goal != "ap_drop":
            stages.append(("fab-t", _SkipUnsupported(build_fab(steps, targets, **common))))
        stages.append(("square", build_square(n_queries, **common)))
    elif version == "fast":
        stages = [("apgd-ce", build_apgd("ce", steps, **common)), ("apgd-t", apgd_t)]
    else:
        stages = [("apgd-ce", build_apgd("ce", steps, eot_iter=eot_iter, **common)),
                  ("apgd-dlr", build_apgd("dlr", steps, eot_iter=eot_iter, **common))]
    return AutoAttack(stages, version, goal, float(margin))


def register_attacks(register):
    register("autoattack", build_autoattack)
