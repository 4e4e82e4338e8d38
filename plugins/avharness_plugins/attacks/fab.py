"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), native, L-inf and L2.

FAB looks for the smallest perturbation that crosses the decision boundary towards a target class.
Each iteration linearises ``f = z_y - z_t`` (``goals.Goal.target_margin``: for multi-label goals the
k-th closest label's margin to its threshold, or the clean top label against a runner-up) at the
current point ``u``, projects both ``u`` and the clean point ``u0`` onto the hyperplane ``f = 0``
inside the valid box (the minimal-norm move ``d``), and steps to the convex combination

    u <- clip((u + eta d_u)(1 - alpha) + (u0 + eta d_0) alpha),   alpha = min(|d_0| / (|d_u| + |d_0|), alpha_max)

(eta = 1.05 overshoots the boundary, alpha_max = 0.1 biases towards the clean point). A point that
breaks the sample is kept if it is the closest so far, and the iterate steps back towards ``u0``
(``u0 + beta (u - u0)``, beta = 0.9). Restart 0 starts at the clean point, later restarts at a
random point of half the best norm found so far (or half the budget). Each of the ``targets``
runner-up classes gets ``restarts`` runs on the samples not yet broken within the budget.

Per-modality budgets: FAB measures the perturbation in the space where every modality is divided by
its eps, so the budget is the unit ball there: on an L-inf threat ``max_m |d_m|_inf / eps_m`` (exact
per-modality budgets), on an L2 threat ``sqrt(sum_m |d_m|_2^2 / eps_m^2)`` (a point inside it is inside
every modality's ball). A threat mixing L-inf and L2 modalities is refused. The projection onto
hyperplane and box is solved exactly by bisection on its one Lagrange multiplier (L2:
``d = clip(lambda w, box)``; L-inf: ``d = sign(w) min(t, room)``).

The result is each sample's closest breaking point, projected onto the threat's budget (per
modality, then clipped to the valid range): a minimum-norm attack evaluated at a fixed eps. Samples
never broken come back at their clean input.
"""

from __future__ import annotations

import torch

from avharness import AttackOutput, NumericalError, SampleRNG, UserError

from .goals import Goal, ball_budgets, check_finite, check_goal, check_int

BISECT = 40


def _phi(w, lam, lo, hi, norm):
    """w . d(lam) for the candidate move d(lam) (nondecreasing in lam >= 0 for L2 and L-inf)."""
    if norm == "l2":
        return (w * torch.minimum(torch.maximum(lam[:, None] * w, lo), hi)).sum(1)
    room = torch.where(w > 0, hi, -lo)  # how far each coordinate may move in w's direction
    return (w.abs() * torch.minimum(lam[:, None].expand_as(w), room)).sum(1)


def _move(w, lam, lo, hi, norm):
    if norm == "l2":
        return torch.minimum(torch.maximum(lam[:, None] * w, lo), hi)
    room = torch.where(w > 0, hi, -lo)
    return w.sign() * torch.minimum(lam[:, None].expand_as(w), room)


def project_plane(z, w, c, lo, hi, norm):
    """Smallest move d (in ``norm``) with ``w . d = c`` and ``lo <= z + d <= hi`` (as close as the box allows)."""
    # for c < 0 solve for d' = -d (w . d' = |c|), whose box is the mirror image of d's
    flip = (c < 0).to(w.dtype) * -2 + 1
    c = c.abs()
    lo_d, hi_d = lo - z, hi - z
    lo_f = torch.where(flip[:, None] > 0, lo_d, -hi_d)
    hi_f = torch.where(flip[:, None] > 0, hi_d, -lo_d)
    scale = (w.pow(2).sum(1) if norm == "l2" else w.abs().sum(1)).clamp_min(1e-30)
    top = c / scale
    for _ in range(60):  # grow until reachable (or the box is exhausted)
        short = _phi(w, top, lo_f, hi_f, norm) < c
        if not bool(short.any()):
            break
        top = torch.where(short, top * 2, top)
    low = torch.zeros_like(top)
    for _ in range(BISECT):
        mid = (low + top) / 2
        short = _phi(w, mid, lo_f, hi_f, norm) < c
        low, top = torch.where(short, mid, low), torch.where(short, top, mid)
    return _move(w, top, lo_f, hi_f, norm) * flip[:, None]


def _size(d, norm):
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


class FAB:
    iterative = True

    def __init__(self, steps=100, targets=9, restarts=1, alpha_max=0.1, eta=1.05, beta=0.9, goal="auto", margin=0.1,
                 name="fab"):
        self.steps, self.targets, self.restarts = steps, targets, restarts
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta
        self.goal, self.margin, self.name = goal, margin, name

    def __repr__(self) -> str:
        return f"FAB(steps={self.steps}, targets={self.targets}, restarts={self.restarts}, goal={self.goal!r})"

    def supports(self, threat, attacked) -> bool:
        return len({threat.budgets[m].norm for m in attacked}) <= 1 and self.goal != "ap_drop"

    def perturb(self, model, inputs, target, threat, task, rng):
        budgets = ball_budgets(self.name, threat, inputs, target, rng, "FAB needs an eps-ball")
        norms = {b.norm for b in budgets.values()}
        if len(norms) > 1:
            raise UserError(f"{self.name}: threat {threat.name!r} mixes linf and l2 modalities; FAB minimises one norm "
                            "(use apgd or square for mixed threats)")
        out = dict(inputs)
        if not budgets:
            return out
        attacked, batch, norm = list(budgets), int(target.shape[0]), norms.pop()
        with torch.no_grad():
            clean_logits = model(inputs)
            check_finite(self.name, clean_logits)
        goal = Goal(task, self.goal, self.margin, clean_logits, target)
        goal.refuse_targets(self.name)
        dev = target.device
        # the scaled space: every modality divided by its eps, flattened and concatenated
        sizes = [inputs[m][0].numel() for m in attacked]
        u0 = torch.cat([inputs[m].detach().flatten(1) / budgets[m].eps for m in attacked], 1)
        lo, hi = (torch.cat([torch.full((s,), budgets[m].bounds[i] / budgets[m].eps, dtype=u0.dtype)
                             for m, s in zip(attacked, sizes)]).to(dev) for i in (0, 1))
        best = u0.clone()
        best_size = torch.full((batch,), float("inf"), device=dev)
        wrong = goal.broken(clean_logits)
        attackable = ~wrong
        passes = {"forward_samples": float(batch), "backward_samples": 0.0}
        run = 0
        for k in range(1, min(self.targets, goal.max_targets) + 1):
            for restart in range(self.restarts):
                idx = (attackable & ~(best_size <= 1.0)).nonzero().flatten()
                if not idx.numel():
                    break
                sub_rng = SampleRNG(rng.seed, rng.key, [rng.ids[j] for j in idx.tolist()])
                g = goal.subset(idx)
                adv, size = self._run(model, inputs, attacked, sizes, budgets, idx, u0[idx], lo, hi, norm, g,
                                      g.targets(k), best_size[idx], sub_rng, run, restart > 0)
                passes["forward_samples"] += 2.0 * self.steps * idx.numel()
                passes["backward_samples"] += float(self.steps * idx.numel())
                better = size < best_size[idx]
                best[idx] = torch.where(better[:, None], adv, best[idx])
                best_size[idx] = torch.where(better, size, best_size[idx])
                run += 1
        found = best_size < float("inf")
        for m, piece in zip(attacked, best.split(sizes, 1)):
            x = inputs[m].detach()
            cand = budgets[m].project((piece * budgets[m].eps).view_as(x), x)
            out[m] = torch.where(found.view(-1, *[1] * (x.dim() - 1)), cand, x.clone())
        # no "unbroken_at_end": the loss_converged check reads it with a loss trajectory, which FAB has not
        passes["unbroken_within_budget"] = float((attackable & ~(best_size <= 1.0)).sum())
        return AttackOutput(out, passes)

    def _run(self, model, inputs, attacked, sizes, budgets, idx, u0, lo, hi, norm, goal, t, best_size, rng, run,
             random_start):
        rest = {m: v[idx] for m, v in inputs.items() if m not in budgets}
        shapes = {m: inputs[m].shape[1:] for m in attacked}

        def to_inputs(u):
            return {m: (piece * budgets[m].eps).reshape(-1, *shapes[m]) for m, piece in zip(attacked, u.split(sizes, 1))}

        u = u0.clone()
        if random_start:
            radius = best_size.clamp(max=1.0) * 0.5
            if norm == "linf":
                r = torch.cat([rng.uniform(f"{m}#fab", tuple(shapes[m]), run, device=u0.device).flatten(1) for m in attacked], 1)
                r = r / r.abs().amax(1, keepdim=True).clamp_min(1e-12)
            else:
                r = torch.cat([rng.normal(f"{m}#fab", tuple(shapes[m]), run, device=u0.device).flatten(1) for m in attacked], 1)
                r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
            u = torch.minimum(torch.maximum(u0 + radius[:, None] * r.to(u0.dtype), lo), hi)
        n = u0.shape[0]
        adv = u0.clone()
        size = torch.full((n,), float("inf"), device=u0.device)
        for _ in range(self.steps):
            with torch.enable_grad():  # also when the caller is under no_grad
                leaves = {m: v.requires_grad_(True) for m, v in to_inputs(u).items()}
                logits = model({**rest, **leaves})
                f = goal.target_margin(logits, t)
                grads = torch.autograd.grad(f.sum(), list(leaves.values()), allow_unused=True)
            with torch.no_grad():
                if not bool(torch.isfinite(f).all()):
                    raise NumericalError(f"{self.name}: the model's logits were NaN or inf; check the model for overflow")
                w = torch.cat([(gm if gm is not None else torch.zeros_like(leaves[m])).flatten(1) * budgets[m].eps
                               for m, gm in zip(attacked, grads)], 1)
                f = f.detach()
                both = project_plane(torch.cat([u, u0]), torch.cat([w, w]),
                                     torch.cat([-f, -f + (w * (u - u0)).sum(1)]), lo, hi, norm)
                d_u, d_0 = both[:n], both[n:]
                a_u, a_0 = _size(d_u, norm).clamp_min(1e-8), _size(d_0, norm).clamp_min(1e-8)
                alpha = (a_0 / (a_u + a_0)).clamp(0.0, self.alpha_max)[:, None]
                u = (u + self.eta * d_u) * (1 - alpha) + (u0 + self.eta * d_0) * alpha
                u = torch.minimum(torch.maximum(u, lo), hi)
                broke = goal.broken(model({**rest, **to_inputs(u)}))
                dist = _size(u - u0, norm)
                better = broke & (dist < size)
                adv = torch.where(better[:, None], u, adv)
                size = torch.where(better, dist, size)
                u = torch.where(broke[:, None], u0 + (u - u0) * self.beta, u)
        return adv, size


def build_fab(steps: int = 100, targets: int = 9, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
              beta: float = 0.9, goal: str = "auto", margin: float = 0.1) -> FAB:
    """FAB-T (Croce & Hein 2020): targeted minimum-norm boundary attack, result projected onto the budget.

    steps: iterations per run; targets: runner-up classes tried in turn; restarts: runs per target
    (the first from the clean point, the others random). alpha_max, eta, beta: the paper's step
    parameters. goal / margin: multi-label success rule (ap_drop is refused).
    """
    check_int("fab", "steps", steps)
    check_int("fab", "targets", targets)
    check_int("fab", "restarts", restarts)
    for name, v, low, high in (("alpha_max", alpha_max, 0, 1), ("eta", eta, 1, 2), ("beta", beta, 0, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise UserError(f"fab: {name} must be a number in [{low}, {high}], got {v!r}")
    check_goal("fab", goal, margin)
    if goal == "ap_drop":
        raise UserError("fab: the ap_drop goal has no single decision boundary to find; use apgd for it")
    return FAB(steps, targets, restarts, float(alpha_max), float(eta), float(beta), goal, float(margin))


def register_attacks(register):
    register("fab", build_fab)
