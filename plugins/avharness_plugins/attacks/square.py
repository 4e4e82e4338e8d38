"""Square Attack (Andriushchenko et al., ECCV 2020), native: score-based and gradient-free, under
per-modality L-inf / L2 budgets.

Each query proposes a change inside a random window of every attacked modality and keeps it when the
loss to minimise (the margin of ``goals.py``: ``z_y - max_{j != y} z_j`` for multiclass) went down;
a sample stops once broken. The window covers a share ``p`` of the modality's last two axes (its
"image"; the axes before them are "channels", a 1-D modality is one row), ``p`` shrinking on the
paper's schedule from ``p_init`` (0.8) as queries pass (rescaled to ``n_queries`` as the reference
does for budgets other than 10,000).

- L-inf: start from vertical stripes (each channel and column at +-eps); a query moves the window
  of every channel to a random vertex (+-eps per channel) of the ball.
- L2: start from a grid of blocks, each a pseudo-Gaussian pair (two rectangles of opposite sign
  whose weight falls off as 1/(distance + 1)^2) with a random sign, scaled to the sphere; a query
  writes a new pseudo-Gaussian pair into one window, adds the perturbation that window held, takes
  the mass of a second window and rescales so the perturbation stays on the sphere (the paper's
  update), then projects (ball, then valid range).

A non-square "image" takes rectangular windows of the same area. Every random draw comes from the
sample's own stream (``SampleRNG``): positions and signs differ per sample, unlike the reference's
one window per batch, so a sample's result does not depend on its batch.
"""

from __future__ import annotations

import math

import torch

from avharness import AttackOutput, NumericalError, SampleRNG, UserError

from .goals import Goal, ball_budgets, check_finite, check_goal, check_int
from .pgd import _per_sample

BLOCK = 500  # queries whose random numbers are drawn at once per sample


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    it = int(it / n_queries * 10000)
    for limit, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= limit:
            return p_init / div
    return p_init / 512


def as_image(shape) -> tuple[int, int, int]:
    """(channels, height, width) of a sample shape: the last two axes are the image."""
    if len(shape) == 1:
        return 1, 1, int(shape[0])
    return math.prod(shape[:-2]), int(shape[-2]), int(shape[-1])


def window(area: float, h: int, w: int, least: int = 1) -> tuple[int, int]:
    s = max(int(round(math.sqrt(area))), least)
    if s <= min(h, w):
        return s, s
    if h <= w:
        return h, min(w, max(int(round(area / h)), least))
    return min(h, max(int(round(area / w)), least)), w


def pseudo_gaussian(h: int, w: int) -> torch.Tensor:
    """Concentric rectangles around the centre, each adding 1/(ring + 1)^2; unit L2 norm."""
    d = torch.zeros(h, w)
    ch, cw = h // 2, w // 2
    for k in range(max(ch, cw) + 1):
        d[max(ch - k, 0):min(ch + k + 1, h), max(cw - k, 0):min(cw + k + 1, w)] += 1.0 / (k + 1) ** 2
    return d / d.norm().clamp_min(1e-12)


def meta_pseudo_gaussian(h: int, w: int) -> torch.Tensor:
    """Two pseudo-Gaussians of opposite sign stacked along the longer axis; unit L2 norm."""
    d = torch.zeros(h, w)
    if h >= w:
        top = h // 2
        if top:
            d[:top] = pseudo_gaussian(top, w)
        d[top:] = -pseudo_gaussian(h - top, w)
    else:
        left = w // 2
        if left:
            d[:, :left] = pseudo_gaussian(h, left)
        d[:, left:] = -pseudo_gaussian(h, w - left)
    return d / d.norm().clamp_min(1e-12)


def _mask(pos_h, pos_w, sh, sw, h, w):
    """[n, 1, h, w] bool: the window at (pos_h, pos_w) of size (sh, sw) per sample."""
    ar_h, ar_w = torch.arange(h, device=pos_h.device), torch.arange(w, device=pos_w.device)
    mh = (ar_h >= pos_h[:, None]) & (ar_h < pos_h[:, None] + sh)
    mw = (ar_w >= pos_w[:, None]) & (ar_w < pos_w[:, None] + sw)
    return (mh[:, :, None] & mw[:, None, :])[:, None]


def _place(pattern, pos_h, pos_w, h, w):
    """The pattern [sh, sw] written at each sample's window of an [n, 1, h, w] zero image."""
    sh, sw = pattern.shape
    ih = (torch.arange(h, device=pos_h.device) - pos_h[:, None]).clamp(0, sh - 1)
    iw = (torch.arange(w, device=pos_w.device) - pos_w[:, None]).clamp(0, sw - 1)
    full = pattern.to(pos_h.device)[ih[:, :, None], iw[:, None, :]]
    return (full * _mask(pos_h, pos_w, sh, sw, h, w)[:, 0])[:, None]


def _pos(u, size, limit):
    """A window start in [0, limit - size] from a uniform number u in [-1, 1)."""
    span = limit - size + 1
    return ((u + 1) / 2 * span).long().clamp(0, span - 1)


class Square:
    """Score-based Square Attack; ``gradient_free`` so the validity checks compare it with gradient attacks."""

    gradient_free = True
    iterative = True

    def __init__(self, n_queries=5000, p_init=0.8, restarts=1, goal="auto", margin=0.1, name="square"):
        self.n_queries, self.p_init, self.restarts = n_queries, p_init, restarts
        self.goal, self.margin, self.name = goal, margin, name

    def __repr__(self) -> str:
        return f"Square(n_queries={self.n_queries}, p_init={self.p_init:g}, restarts={self.restarts}, goal={self.goal!r})"

    def perturb(self, model, inputs, target, threat, task, rng):
        budgets = ball_budgets(self.name, threat, inputs, target, rng, "Square needs an eps-ball")
        out = dict(inputs)
        if not budgets:
            return out
        attacked, batch = list(budgets), int(target.shape[0])
        with torch.no_grad():
            clean_logits = model(inputs)
            check_finite(self.name, clean_logits)
            goal = Goal(task, self.goal, self.margin, clean_logits, target)
            wrong = goal.broken(clean_logits)
            attackable = ~wrong
            best = {m: inputs[m].detach().clone() for m in attacked}
            best_loss = torch.full((batch,), float("inf"), device=target.device)
            queries = float(batch)
            for restart in range(self.restarts):
                idx = (attackable & ~wrong).nonzero().flatten()
                if not idx.numel():
                    break
                sub_rng = SampleRNG(rng.seed, rng.key, [rng.ids[j] for j in idx.tolist()])
                x_best, loss, broke, q = self._run(model, inputs, idx, budgets, goal.subset(idx), sub_rng, restart)
                queries += q
                take = broke | (loss < best_loss[idx])
                for m in attacked:
                    best[m][idx] = torch.where(_per_sample(take, x_best[m]), x_best[m], best[m][idx])
                best_loss[idx] = torch.where(take, loss, best_loss[idx])
                wrong[idx] |= broke
        for m in attacked:
            out[m] = best[m]
        # "unbroken" rather than "unbroken_at_end", which the loss_converged check pairs with a gradient loss trajectory
        return AttackOutput(out, {"forward_samples": queries, "backward_samples": 0.0,
                                  "unbroken": float((attackable & ~wrong).sum())})

    def _draws(self, rng, m, restart, block, k):
        return rng.uniform(f"{m}#square", (BLOCK, k), restart * 100003 + block)

    def _run(self, model, inputs, idx, budgets, goal, rng, restart):
        attacked = list(budgets)
        rest = {m: v[idx] for m, v in inputs.items() if m not in budgets}
        x = {m: inputs[m][idx].detach() for m in attacked}
        n = int(idx.numel())
        geo = {m: as_image(tuple(x[m].shape[1:])) for m in attacked}
        # the start
        adv = {}
        for m in attacked:
            c, h, w = geo[m]
            b, x4 = budgets[m], x[m].reshape(n, c, h, w)
            if b.norm == "linf":
                signs = rng.uniform(f"{m}#square-init", (c, 1, w), restart).to(x4.device).sign()
                delta = b.eps * torch.where(signs == 0, torch.ones_like(signs), signs).to(x4.dtype)
            else:
                s = max(min(h, w) // 5, 1)
                nh, nw = h // s, w // s
                oh, ow = (h - s * nh) // 2, (w - s * nw) // 2
                signs = rng.uniform(f"{m}#square-init", (c, nh, nw), restart).to(x4.device).sign()
                signs = torch.where(signs == 0, torch.ones_like(signs), signs).to(x4.dtype)
                block = meta_pseudo_gaussian(s, s).to(x4)
                delta = torch.zeros_like(x4)
                delta[:, :, oh:oh + s * nh, ow:ow + s * nw] = (
                    signs[:, :, :, None, :, None] * block[None, None, None, :, None, :]
                ).reshape(n, c, s * nh, s * nw)
                delta = delta * b.eps / _per_sample(delta.flatten(1).norm(dim=1).clamp_min(1e-12), delta)
            adv[m] = b.project((x4 + delta).reshape(x[m].shape), x[m])
        logits = model({**rest, **adv})
        loss = goal.margin(logits)
        broke = goal.broken(logits)
        self._finite(loss)
        queries = float(n)
        draws = {}
        for it in range(self.n_queries):
            todo = (~broke).nonzero().flatten()
            if not todo.numel():
                break
            p = p_selection(self.p_init, it, self.n_queries)
            block, row = divmod(it, BLOCK)
            new = {}
            for m in attacked:
                c, h, w = geo[m]
                k = c + 5
                if row == 0:
                    draws[m] = self._draws(rng, m, restart, block, k).to(loss.device)
                u = draws[m][todo, row]
                new[m] = self._propose(m, budgets[m], x[m][todo], adv[m][todo], geo[m], p, u)
            sub = {**{k2: v[todo] for k2, v in rest.items()}, **new}
            logits = model(sub)
            queries += float(todo.numel())
            g = goal.subset(todo)
            l_new = g.margin(logits)
            self._finite(l_new)
            b_new = g.broken(logits)
            take = (l_new < loss[todo]) | b_new
            for m in attacked:
                adv[m][todo] = torch.where(_per_sample(take, new[m]), new[m], adv[m][todo])
            loss[todo] = torch.where(take, l_new, loss[todo])
            broke[todo] = broke[todo] | b_new
        return adv, loss, broke, queries

    def _finite(self, loss):
        if not bool(torch.isfinite(loss).all()):
            raise NumericalError(f"{self.name}: the model's margin was NaN or inf on some inputs; check the model for "
                                 "overflow (its logits must be finite inside the input bounds)")

    def _propose(self, m, b, x, cur, geo, p, u):
        c, h, w = geo
        n = x.shape[0]
        x4, cur4 = x.reshape(n, c, h, w), cur.reshape(n, c, h, w)
        signs = u[:, 5:5 + c].sign()
        signs = torch.where(signs == 0, torch.ones_like(signs), signs).to(x.dtype)[:, :, None, None]
        if b.norm == "linf":
            sh, sw = window(p * h * w, h, w)
            mask = _mask(_pos(u[:, 0], sh, h), _pos(u[:, 1], sw, w), sh, sw, h, w)
            step = torch.where(mask, 2 * b.eps * signs, torch.zeros_like(cur4))
            return b.project((cur4 + step).reshape(x.shape), x)
        least = min(3, h, w)
        sh, sw = window(p * h * w, h, w, least)
        if sh == sw and sh % 2 == 0 and sh + 1 <= min(h, w):
            sh = sw = sh + 1
        ph, pw = _pos(u[:, 0], sh, h), _pos(u[:, 1], sw, w)
        ph2, pw2 = _pos(u[:, 2], sh, h), _pos(u[:, 3], sw, w)
        m1, m2 = _mask(ph, pw, sh, sw, h, w), _mask(ph2, pw2, sh, sw, h, w)
        delta = cur4 - x4
        norm_w1 = (delta * m1).pow(2).sum((2, 3), keepdim=True).sqrt()
        norm_img = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
        norm_ws = (delta * (m1 | m2)).pow(2).sum((2, 3), keepdim=True).sqrt()
        pattern = meta_pseudo_gaussian(sh, sw)
        flip = (u[:, 4] > 0) & (sh == sw)
        pg = torch.where(flip.view(n, 1, 1, 1), _place(pattern.T, ph, pw, h, w), _place(pattern, ph, pw, h, w))
        new = pg.to(x.dtype) * signs + delta * m1 / (norm_w1 + 1e-12)
        new_norm = new.pow(2).sum((2, 3), keepdim=True).sqrt()
        room = ((b.eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_ws ** 2).sqrt()
        new = new / (new_norm + 1e-12) * room
        delta = torch.where(m2, torch.zeros_like(delta), delta)
        delta = torch.where(m1, new, delta)
        delta = delta * b.eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        return b.project((x4 + delta).reshape(x.shape), x)


def build_square(n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1, goal: str = "auto",
                 margin: float = 0.1) -> Square:
    """Square Attack (Andriushchenko et al. 2020): random-search, gradient-free, margin loss.

    n_queries: model queries per sample and restart (>= 1); p_init: initial share of the window (0 < p <= 1).
    restarts: runs on the samples still unbroken. goal / margin: multi-label success rule (docs/attacks.md).
    """
    check_int("square", "n_queries", n_queries)
    check_int("square", "restarts", restarts)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
        raise UserError(f"square: p_init must be a number in (0, 1], got {p_init!r}")
    check_goal("square", goal, margin)
    return Square(n_queries, float(p_init), restarts, goal, float(margin))


def register_attacks(register):
    register("square", build_square)
