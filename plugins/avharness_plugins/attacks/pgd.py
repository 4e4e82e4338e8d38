"""Built-in gradient attacks: FGSM and PGD under per-modality linf / l2 budgets.

Both ascend the task's own loss (``task.loss``: cross-entropy for multiclass, mean BCE for
multilabel), summed over the batch, and take gradients with respect to the inputs only
(``torch.autograd.grad``: nothing accumulates in the model's parameters).

A threat model may name several modalities: every attacked modality takes a step on every
iteration (a joint attack), and each is projected onto its own ball and clipped to its own bounds
after every step (``Budget.project``). Modalities the threat does not name, and those with eps = 0,
are returned as the very tensors the caller passed. If every eps is 0 the model is not run at all.

Randomness comes only from the per-sample streams of ``SampleRNG`` (keyed by sample id, modality
and restart), so a sample's result does not depend on which other samples share its batch.

PGD returns, for each sample, the worst point it found. The forward pass that computes each
step's gradient also scores the point it was taken at (the random start and every iterate but the
last) at no extra cost. "Worse" means: misclassified (``not task.correct``) beats correctly
classified; between two points both misclassified or both correct, the higher loss wins, and an
exact tie goes to the later point. (Ties are common: float32 cross-entropy rounds to exactly 0 on
confident samples while the gradient still makes progress, and keeping the earlier point would undo
every step.)

- With one restart, a sample that any scored iterate misclassified comes back at the worst such
  iterate; every other sample comes back at the final iterate, as in textbook PGD. So PGD breaks
  at least the samples that its final iterate or any earlier iterate breaks, and costs exactly
  ``steps`` forward and backward passes, like a bare loop.
- With several restarts, each restart's final iterate is scored too (one extra forward pass per
  restart) and each sample keeps its worst point over all restarts. Restart 0 draws the same start
  as a single-restart run, so more restarts are never worse than one, sample by sample.

FGSM is the textbook single step and returns that step's point, even where the clean input had
higher loss.
"""

from __future__ import annotations

import torch

from avharness import AttackOutput, AttackStats, NumericalError, UserError

from .goals import ball_budgets


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a [B] tensor against a [B, ...] tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm for the given norm (linf: sign; l2: g/|g|_2)."""
    if norm == "linf":
        return g.sign()
    return g / _per_sample(_l2(g).clamp_min(1e-12), g)


def _keep_worse(kept, adv, loss, wrong):
    """Per sample, the worse of the kept point and adv: misclassified beats correct, then the higher loss (ties: adv)."""
    # kept = (points, loss, wrong), or (None, None, None) before the first point. No host sync here.
    best, best_loss, best_wrong = kept
    if best is None:
        return dict(adv), loss, wrong
    better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss >= best_loss))
    for m in adv:
        best[m] = torch.where(_per_sample(better, adv[m]), adv[m], best[m])
    return best, torch.where(better, loss, best_loss), best_wrong | wrong


class GradientAttack:
    """Projected gradient ascent on the task loss; FGSM and PGD are two settings of it.

    ``step_size`` is relative to each modality's eps (the step for modality m is
    ``step_size * eps_m``), so one setting serves budgets of any scale and any norm.
    """

    def __init__(self, name: str, steps: int, step_size: float, restarts: int, random_start: bool, keep_best: bool):
        #: read by the validity checks: an iterative attack should beat a single-step one
        self.iterative = steps > 1
        self.name = name
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.random_start = random_start
        self.keep_best = keep_best

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, steps={self.steps}, step_size={self.step_size:g}, "
            f"restarts={self.restarts}, random_start={self.random_start})"
        )

    def _start(self, x: torch.Tensor, budget, modality: str, restart: int, rng) -> torch.Tensor:
        """A random point of the ball around ``x`` (clipped to bounds), or ``x`` itself."""
        if not self.random_start:
            return x.detach()  # a new tensor object: requires_grad_ on it leaves the caller's alone
        shape = tuple(x.shape[1:])
        if budget.norm == "linf":
            delta = rng.uniform(modality, shape, restart, device=x.device).to(x.dtype) * budget.eps
        else:
            # Uniform direction on the sphere, radius uniform in [0, eps): diverse starts across restarts.
            direction = rng.normal(modality, shape, restart, device=x.device).to(x.dtype)
            direction = direction / _per_sample(_l2(direction).clamp_min(1e-12), direction)
            radius = (rng.uniform(modality + "#radius", (1,), restart, device=x.device).to(x.dtype).view(-1) + 1) / 2
            delta = direction * _per_sample(radius * budget.eps, direction)
        return budget.project(x + delta, x)

    def _ascend(self, model, inputs, adv, target, task, budgets, clean, alpha):
        """One step from adv (its entries replaced by the projected next iterate); (point stepped from, loss, logits)."""
        leaves = [adv[m].requires_grad_(True) for m in adv]
        logits = model({**inputs, **adv})
        loss = task.loss(logits, target)
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        with torch.no_grad():
            point = {m: adv[m].detach() for m in adv}
            for m, g in zip(list(adv), grads):
                x = adv[m].detach()
                if g is None:  # the model does not read this modality: nothing to follow
                    adv[m] = x
                    continue
                adv[m] = budgets[m].project(x + alpha[m] * _direction(g, budgets[m].norm), clean[m])
        return point, loss.detach(), logits.detach()

    def _iterate(self, model, inputs, target, task, adv, budgets, clean, alpha, kept, nonfinite):
        """All steps of one restart from adv: (final iterate, kept worst points, convergence trace (first, at_mark, run_max))."""
        # Convergence evidence: the running max of each sample's loss after the first step, at 80%
        # of the steps, and at the end. nonfinite (a bool tensor) is updated in place.
        mark = max(0, int(0.8 * self.steps) - 1)
        first = at_mark = run_max = None
        for step in range(self.steps):
            point, loss, logits = self._ascend(model, inputs, adv, target, task, budgets, clean, alpha)
            with torch.no_grad():
                run_max = loss if step == 0 else torch.maximum(run_max, loss)
                if step == 0:
                    first = loss
                if step == mark:
                    at_mark = run_max
                nonfinite |= ~torch.isfinite(loss).all()
                if self.keep_best:
                    kept = _keep_worse(kept, point, loss, ~task.correct(logits, target))
        return adv, kept, (first, at_mark, run_max)

    def _end_restart(self, model, inputs, target, task, adv, kept, nonfinite):
        """Fold a restart's final iterate into the kept points (scored only with several restarts; updates nonfinite)."""
        if not self.keep_best:
            return adv, kept[1], kept[2]
        if self.restarts == 1:
            # The final iterate is not scored (that would cost a forward pass): keep the scored
            # iterate where it is misclassified, else the final one.
            best, best_wrong = kept[0], kept[2]
            for m in adv:
                best[m] = torch.where(_per_sample(best_wrong, adv[m]), best[m], adv[m])
            return kept
        with torch.no_grad():
            logits = model({**inputs, **adv})
            loss = task.loss(logits, target)
            nonfinite |= ~torch.isfinite(loss).all()
            return _keep_worse(kept, adv, loss, ~task.correct(logits, target))

    def _stats(self, batch: int, best_wrong, trace) -> dict:
        """Forward/backward sample counts and, for PGD, how many unbroken samples were still rising at the end."""
        extra = self.restarts if self.keep_best and self.restarts > 1 else 0
        stats = {"forward_samples": float(batch * (self.steps * self.restarts + extra)),
                 "backward_samples": float(batch * self.steps * self.restarts)}
        first, at_mark, run_max = trace
        if self.keep_best and first is not None:
            # Among samples not broken, those whose best loss still grew by more than 10% of its
            # total gain in the last 20% of the steps: more steps would likely find more. A single
            # step shows no convergence at all, so every unbroken sample counts.
            unbroken = ~best_wrong
            if self.steps == 1:
                rising = unbroken
            else:
                total = run_max - first
                late = run_max - at_mark
                rising = unbroken & (total > 1e-6) & (late > 0.1 * total)
            stats[AttackStats.UNBROKEN_RISING_AT_END] = float(rising.sum())
            stats[AttackStats.UNBROKEN_AT_END] = float(unbroken.sum())
        return stats

    def perturb(self, model, inputs, target, threat, task, rng):
        budgets = ball_budgets(self.name, threat, inputs, target, rng, "gradient attacks need an eps-ball (use a "
                               "corruption such as gaussian_noise for unbounded threats)")
        out = dict(inputs)
        if not budgets:
            return out
        attacked, batch = list(budgets), int(target.shape[0])
        clean = {m: inputs[m].detach() for m in attacked}
        alpha = {m: self.step_size * budgets[m].eps for m in attacked}
        kept = (None, None, None)  # per sample: the worst point so far, its loss, whether it is misclassified
        nonfinite = torch.zeros((), dtype=torch.bool, device=target.device)
        for restart in range(self.restarts):
            adv = {m: self._start(clean[m], budgets[m], m, restart, rng) for m in attacked}
            # trace: the convergence evidence; the last restart's is reported
            adv, kept, trace = self._iterate(model, inputs, target, task, adv, budgets, clean, alpha, kept, nonfinite)
            kept = self._end_restart(model, inputs, target, task, adv, kept, nonfinite)

        if bool(nonfinite):
            raise NumericalError(
                f"{self.name}: the model's loss was NaN or inf on some inputs under threat {threat.name!r}; "
                "check the model for overflow (its logits must be finite inside the input bounds)"
            )
        for m in attacked:
            out[m] = kept[0][m]
        return AttackOutput(out, self._stats(batch, kept[2], trace))


def build_fgsm() -> GradientAttack:
    """Fast gradient (sign) method: one step of size eps from the clean input, no random start.

    linf steps along sign(grad); l2 along grad / |grad|_2. Takes no parameters.
    """
    return GradientAttack("fgsm", steps=1, step_size=1.0, restarts=1, random_start=False, keep_best=False)


def build_pgd(steps: int = 10, step_size: float | None = None, restarts: int = 1, random_start: bool = True) -> GradientAttack:
    """Projected gradient descent (Madry et al.) with per-sample worst case over iterates and restarts.

    steps: gradient steps per restart (>= 1).
    step_size: step as a fraction of each modality's eps (> 0); default 2.5 / steps.
    restarts: independent runs from different random starts (>= 1); each sample keeps its worst.
    random_start: start from a uniform random point of the ball (otherwise from the clean input).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"pgd: steps must be an integer >= 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise UserError(f"pgd: restarts must be an integer >= 1, got {restarts!r}")
    if step_size is None:
        step_size = 2.5 / steps
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0 or step_size == float("inf"):
        raise UserError(f"pgd: step_size must be a number > 0 (a fraction of eps), got {step_size!r}")
    if not isinstance(random_start, bool):
        raise UserError(f"pgd: random_start must be true or false, got {random_start!r}")
    return GradientAttack("pgd", steps=steps, step_size=float(step_size), restarts=restarts,
                          random_start=random_start, keep_best=True)


def register_attacks(register):
    register("fgsm", build_fgsm)
    register("pgd", build_pgd)
