"""Auto-PGD (Croce & Hein, ICML 2020), native, under per-modality L-inf / L2 budgets.

One run from a random point of the ball (L-inf: ``eps * t / |t|_inf`` with t uniform; L2: a point
on the sphere), step size ``2 eps`` for every modality, then ``steps`` iterations of

    z = P(x + eta * dir(grad));  x_next = P(x + 0.75 (z - x) + 0.25 (x - x_prev))

(momentum 0.75; the first iteration takes the plain step). ``P`` is ``Budget.project``: each
attacked modality onto its own ball, then into its valid range, after every move. On a joint threat
every modality keeps its own ball and its step ``eta_m = 2 eps_m * s``; the factor ``s`` -- and so
the schedule -- is one per sample, shared by the modalities.

Checkpoints follow the paper: ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
of the steps (the reference code's intervals of ``0.22 N``, shrinking by ``0.03 N`` down to
``0.06 N``). At a checkpoint a sample halves its step and restarts from its best point (with the
gradient there) when either

1. its loss rose in fewer than ``rho`` (0.75) of the steps since the last checkpoint, or
2. its step was not halved at the last checkpoint and its best loss has not improved since
   (disabled at the first checkpoint, as in the reference).

Restarts (and, for APGD-T, the ``targets`` top runner-up classes, each with ``restarts`` runs) run
only on the samples no earlier run broke. Each sample comes back at its worst point over every run:
a broken point beats an unbroken one; between unbroken points, the higher loss wins. Samples broken
when clean are returned as they are (nothing to attack). What "broken" and the losses mean --
including the multi-label goals -- is in ``goals.py``.

``eot_iter`` > 1 averages the gradient (and loss) over that many forward/backward passes, for
randomized models (AutoAttack's ``rand`` version).
"""

from __future__ import annotations

import torch

from avharness import AttackOutput, AttackStats, NumericalError, SampleRNG, UserError

from .goals import LOSSES, Goal, ball_budgets, check_finite, check_goal, check_int
from .pgd import _direction, _l2, _per_sample


def checkpoints(steps: int) -> list[int]:
    """Iterations (0-based) after which the step-size conditions are checked (the paper's schedule)."""
    first, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at, k = [], 0, first
    while at + k <= steps:
        at += k
        out.append(at - 1)
        k = max(k - shrink, least)
    return out


def random_start(x: torch.Tensor, budget, modality: str, restart: int, rng) -> torch.Tensor:
    """A point on the boundary of the ball (the reference's start), clipped to the bounds."""
    shape = tuple(x.shape[1:])
    if budget.norm == "linf":
        t = rng.uniform(modality, shape, restart, device=x.device).to(x.dtype)
        t = t / _per_sample(t.flatten(1).abs().amax(1).clamp_min(1e-12), t)
    else:
        t = rng.normal(modality, shape, restart, device=x.device).to(x.dtype)
        t = t / _per_sample(_l2(t).clamp_min(1e-12), t)
    return budget.project(x + budget.eps * t, x)


class APGD:
    """Auto-PGD with CE, DLR or targeted-DLR loss (APGD-CE, APGD-DLR, APGD-T)."""

    #: read by the validity checks
    iterative = True

    def __init__(self, loss="ce", steps=100, restarts=1, targets=9, rho=0.75, eot_iter=1, goal="auto", margin=0.1,
                 name="apgd"):
        self.name, self.loss, self.steps, self.restarts, self.targets = name, loss, steps, restarts, targets
        self.rho, self.eot_iter, self.goal, self.margin = rho, eot_iter, goal, margin

    def __repr__(self) -> str:
        return (f"APGD(loss={self.loss!r}, steps={self.steps}, restarts={self.restarts}, targets={self.targets}, "
                f"rho={self.rho:g}, eot_iter={self.eot_iter}, goal={self.goal!r})")

    def perturb(self, model, inputs, target, threat, task, rng):
        budgets = ball_budgets(self.name, threat, inputs, target, rng, "APGD needs an eps-ball")
        out = dict(inputs)
        if not budgets:
            return out
        attacked, batch = list(budgets), int(target.shape[0])
        clean = {m: inputs[m].detach() for m in attacked}
        with torch.no_grad():
            clean_logits = model(inputs)
            check_finite(self.name, clean_logits)
        goal = Goal(task, self.goal, self.margin, clean_logits, target)
        runs = self._runs(goal)

        dev = target.device
        best = {m: clean[m].clone() for m in attacked}
        best_loss = torch.full((batch,), float("-inf"), device=dev)
        wrong = goal.broken(clean_logits)
        attackable = ~wrong
        # convergence evidence from each sample's last run: loss at the start, best at 80%, best at the end
        first = torch.zeros(batch, device=dev)
        at_mark = torch.zeros(batch, device=dev)
        at_end = torch.zeros(batch, device=dev)
        passes = 0.0
        for n_run, (k, _restart) in enumerate(runs):
            idx = (attackable & ~wrong).nonzero().flatten()
            if not idx.numel():
                break
            sub_rng = SampleRNG(rng.seed, rng.key, [rng.ids[j] for j in idx.tolist()])
            g = goal.subset(idx)
            t = g.targets(k) if k is not None else None
            res = self._run(model, inputs, idx, {m: clean[m][idx] for m in attacked}, budgets, g, t, sub_rng, n_run)
            passes += float(idx.numel()) * (self.steps + 1) * self.eot_iter
            x_best, loss_best, x_adv, broke, stats = res
            take_adv = broke
            take_best = ~broke & (loss_best > best_loss[idx])
            for m in attacked:
                cur = best[m][idx]
                cur = torch.where(_per_sample(take_best, cur), x_best[m], cur)
                best[m][idx] = torch.where(_per_sample(take_adv, cur), x_adv[m], cur)
            best_loss[idx] = torch.where(take_adv | take_best, loss_best, best_loss[idx])
            wrong[idx] = wrong[idx] | broke
            first[idx], at_mark[idx], at_end[idx] = stats

        for m in attacked:
            out[m] = best[m]
        unbroken = attackable & ~wrong
        return AttackOutput(out, _stats(batch, passes, unbroken, first, at_mark, at_end))

    def _runs(self, goal: Goal) -> list[tuple[int | None, int]]:
        """(target rank or None, restart) of every run: restarts per target class for the targeted DLR loss."""
        if self.loss == "dlr_targeted":
            goal.refuse_targets(self.name)
            return [(k, r) for k in range(1, min(self.targets, goal.max_targets) + 1) for r in range(self.restarts)]
        return [(None, r) for r in range(self.restarts)]

    # Long on purpose: one APGD run is Algorithm 1 of Croce & Hein (2020) kept in one piece, so it reads
    # against the paper; its per-sample state (step sizes, momentum point, checkpoint counters, best
    # point) would otherwise travel through half a dozen helpers' arguments.
    def _run(self, model, inputs, idx, x, budgets, goal, t, rng, restart):
        """One APGD run on a sub-batch; returns (best point, its loss, a broken point, broken?, stats)."""
        attacked = list(budgets)
        rest = {m: v[idx] for m, v in inputs.items() if m not in budgets}
        n = int(idx.numel())
        dev = idx.device
        eps = {m: budgets[m].eps for m in attacked}
        nonfinite = torch.zeros((), dtype=torch.bool, device=dev)

        def evaluate(adv):
            nonlocal nonfinite
            grads = {m: torch.zeros_like(adv[m]) for m in attacked}
            total = torch.zeros(n, device=dev)
            for _ in range(self.eot_iter):
                with torch.enable_grad():  # also when the caller is under no_grad
                    leaves = {m: adv[m].detach().requires_grad_(True) for m in attacked}
                    logits = model({**rest, **leaves})
                    loss = goal.loss(self.loss, logits, t)
                    gs = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
                for m, gm in zip(attacked, gs):
                    if gm is not None:
                        grads[m] += gm
                total += loss.detach()
            if self.eot_iter > 1:
                grads = {m: gm / self.eot_iter for m, gm in grads.items()}
                total = total / self.eot_iter
            nonfinite |= ~torch.isfinite(total).all()
            return total, grads, logits.detach()

        adv = {m: random_start(x[m], budgets[m], m, restart, rng) for m in attacked}
        loss, grad, logits = evaluate(adv)
        broke = goal.broken(logits)
        x_adv = dict(adv)  # the latest broken iterate (meaningful where broke)
        x_best, grad_best, loss_best = dict(adv), dict(grad), loss.clone()
        first = loss.clone()
        at_mark = loss.clone()
        mark = max(0, int(0.8 * self.steps) - 1)
        step = torch.full((n,), 2.0, device=dev)
        prev = dict(adv)
        checks = set(checkpoints(self.steps))
        since, increases, last_loss = 0, torch.zeros(n, device=dev), loss
        best_at_check = loss_best.clone()
        halved_at_check = torch.ones(n, dtype=torch.bool, device=dev)

        for i in range(self.steps):
            with torch.no_grad():
                a = 0.75 if i > 0 else 1.0
                for m in attacked:
                    cur, b = adv[m], budgets[m]
                    z = b.project(cur + _per_sample(step * eps[m], cur) * _direction(grad[m], b.norm), x[m])
                    if a != 1.0:
                        z = b.project(cur + a * (z - cur) + (1 - a) * (cur - prev[m]), x[m])
                    prev[m], adv[m] = cur, z
            loss, grad, logits = evaluate(adv)
            with torch.no_grad():
                now = goal.broken(logits)
                for m in attacked:
                    x_adv[m] = torch.where(_per_sample(now, adv[m]), adv[m], x_adv[m])
                broke = broke | now
                increases += (loss > last_loss).to(increases.dtype)
                last_loss = loss
                better = loss > loss_best
                for m in attacked:
                    x_best[m] = torch.where(_per_sample(better, adv[m]), adv[m], x_best[m])
                    grad_best[m] = torch.where(_per_sample(better, grad[m]), grad[m], grad_best[m])
                loss_best = torch.where(better, loss, loss_best)
                if i == mark:
                    at_mark = loss_best.clone()
                since += 1
                if i in checks:
                    slow = increases <= since * self.rho
                    stalled = ~halved_at_check & (best_at_check >= loss_best)
                    halve = slow | stalled
                    halved_at_check, best_at_check = halve, loss_best.clone()
                    step = torch.where(halve, step / 2, step)
                    for m in attacked:
                        adv[m] = torch.where(_per_sample(halve, adv[m]), x_best[m], adv[m])
                        grad[m] = torch.where(_per_sample(halve, grad[m]), grad_best[m], grad[m])
                    since, increases = 0, torch.zeros_like(increases)
        if bool(nonfinite):
            raise NumericalError(f"{self.name}: the model's loss was NaN or inf on some inputs; check the model for "
                                 "overflow (its logits must be finite inside the input bounds)")
        return x_best, loss_best, x_adv, broke, (first, at_mark, loss_best)


def _stats(batch: int, passes: float, unbroken: torch.Tensor, first: torch.Tensor, at_mark: torch.Tensor,
           at_end: torch.Tensor) -> dict[str, float]:
    """Cost, and convergence evidence: an unbroken sample whose loss still rose by over a tenth of its
    total gain after the last checkpoint mark (80% of the steps) may need more steps."""
    total = at_end - first
    late = at_end - at_mark
    rising = unbroken & (total > 1e-6) & (late > 0.1 * total)
    return {"forward_samples": float(batch) + passes, "backward_samples": passes,
            AttackStats.UNBROKEN_RISING_AT_END: float(rising.sum()), AttackStats.UNBROKEN_AT_END: float(unbroken.sum())}


def build_apgd(loss: str = "ce", steps: int = 100, restarts: int = 1, targets: int = 9, rho: float = 0.75,
               eot_iter: int = 1, goal: str = "auto", margin: float = 0.1) -> APGD:
    """Auto-PGD (Croce & Hein 2020): momentum, checkpointed step-size halving, restarts from the best point.

    loss: ce | dlr | dlr_targeted (APGD-T: one run per target among the `targets` top runner-up classes).
    steps: iterations per run (>= 1); restarts: runs per loss/target on the samples still unbroken.
    rho: share of loss increases below which the step is halved at a checkpoint (0 < rho <= 1).
    eot_iter: gradients averaged over this many passes (randomized models).
    goal: multi-label success rule the losses serve (auto = any_flip) -- see docs/attacks.md.
    margin: the AP drop that counts as broken under goal ap_drop.
    """
    if loss not in LOSSES:
        raise UserError(f"apgd: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    check_int("apgd", "steps", steps)
    check_int("apgd", "restarts", restarts)
    check_int("apgd", "targets", targets)
    check_int("apgd", "eot_iter", eot_iter)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise UserError(f"apgd: rho must be a number in (0, 1], got {rho!r}")
    check_goal("apgd", goal, margin)
    if goal == "ap_drop" and loss == "dlr_targeted":
        raise UserError("apgd: the ap_drop goal has no single decision boundary to target; use loss ce or dlr")
    return APGD(loss, steps, restarts, targets, float(rho), eot_iter, goal, float(margin))


def register_attacks(register):
    register("apgd", build_apgd)
