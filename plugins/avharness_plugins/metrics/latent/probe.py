"""Linear probes: a seeded, standardised linear classifier fitted on a latent, used to score non-head latents."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from avharness_plugins.metrics.latent.common import (
    as_tensor,
    check_finite,
    check_kind,
    membership,
)


class LinearProbe(nn.Module):
    """logits = flatten(x) @ weight.T + bias; standardisation is folded into weight and bias.

    Classes never seen in training (multiclass) get a zero weight row and bias -inf, so they are
    never the argmax. ``info`` holds the fit's details (solver, train accuracy, convergence).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, info: dict):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).to(self.weight)
        return torch.addmm(self.bias, x, self.weight.t())


def _standardise(x: np.ndarray, standardize: bool):
    if not standardize:
        return x, np.zeros(x.shape[1]), np.ones(x.shape[1])
    mu = x.mean(0)
    sd = x.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return (x - mu) / sd, mu, sd


def _fit_multiclass(xs: np.ndarray, member: torch.Tensor, seed: int, C: float, max_iter: int):
    """scikit-learn multinomial logistic regression: (weight [C, D], bias [C], train accuracy, info)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n_cls = member.shape[1]
    y = member.float().argmax(1).numpy()
    seen = np.unique(y)
    if seen.size < 2:
        raise ValueError("a multiclass probe needs at least two classes in its training latents")
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xs, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    w = np.zeros((n_cls, xs.shape[1]))
    b = np.full(n_cls, -np.inf)
    if clf.coef_.shape[0] == 1:  # binary: logit of classes_[1] against classes_[0]
        w[clf.classes_[1]] = clf.coef_[0]
        b[clf.classes_[1]] = clf.intercept_[0]
        b[clf.classes_[0]] = 0.0
    else:
        w[clf.classes_] = clf.coef_
        b[clf.classes_] = clf.intercept_
    train_acc = float((clf.predict(xs) == y).mean())
    info = {"solver": "sklearn LogisticRegression(lbfgs)", "classes_seen": seen.tolist(),
            "n_iter": int(np.max(clf.n_iter_)), "converged": converged}
    return w, b, train_acc, info


def _fit_multilabel(xs: np.ndarray, member: torch.Tensor, C: float, max_iter: int):
    """Per-class logistic regressions by full-batch torch L-BFGS: (weight [C, D], bias [C], train accuracy, info)."""
    n, n_cls = member.shape
    xt = torch.from_numpy(xs).float()
    yt = member.float()
    prior = yt.mean(0).clamp(1e-4, 1 - 1e-4)
    wt = torch.zeros(n_cls, xt.shape[1], requires_grad=True)
    bt = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
    l2 = 1.0 / (2.0 * C * n)
    opt = torch.optim.LBFGS([wt, bt], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit = torch.addmm(bt, xt, wt.t())
        loss = nn.functional.binary_cross_entropy_with_logits(logit, yt, reduction="sum") / n
        loss = loss + l2 * (wt * wt).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    w = wt.detach().double().numpy()
    b = bt.detach().double().numpy()
    with torch.no_grad():
        pred = (torch.addmm(bt, xt, wt.t()) >= 0)
    train_acc = float((pred == member).all(1).float().mean())
    info = {"solver": "torch L-BFGS, per-class logistic", "n_iter": n_iter,
            "converged": n_iter < max_iter}
    return w, b, train_acc, info


def _fold_standardisation(w: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray):
    """Weight and bias on raw features: w.(x - mu)/sd + b = (w/sd).x + (b - (w/sd).mu); -inf biases stay -inf."""
    wf = w / sd
    with np.errstate(invalid="ignore"):
        bf = b - wf @ mu
    bf = np.where(np.isneginf(b), -np.inf, bf)
    return wf, bf


def fit_linear_probe(
    latents,
    labels,
    task_kind: str,
    seed: int = 0,
    num_classes: int | None = None,
    C: float = 1.0,
    max_iter: int = 500,
    standardize: bool = True,
) -> LinearProbe:
    """A linear classifier on (flattened) train-split latents, returned as a logits scorer.

    Multiclass: scikit-learn ``LogisticRegression`` (lbfgs, multinomial, L2 with inverse strength
    ``C``). Multilabel: one logistic regression per class, fitted jointly as a torch linear layer
    by full-batch L-BFGS on the summed per-class BCE plus the same L2 penalty
    (||W||^2 / (2 C N)), from zero weights and prior-logit biases. Both problems are convex and
    both solvers deterministic; ``seed`` is passed to scikit-learn for completeness. Features are
    standardised with the training mean and standard deviation (folded into the returned
    weights). Pass train-split latents; apply the scorer to evaluation latents.
    """
    check_kind(task_kind)
    lat = as_tensor(latents)
    n = lat.shape[0]
    check_finite(lat, "latents")
    member = membership(labels, task_kind, n, num_classes)
    x = lat.reshape(n, -1).cpu().double().numpy()
    xs, mu, sd = _standardise(x, standardize)
    if task_kind == "multiclass":
        w, b, train_acc, info = _fit_multiclass(xs, member, seed, C, max_iter)
    else:
        w, b, train_acc, info = _fit_multilabel(xs, member, C, max_iter)
    wf, bf = _fold_standardisation(w, b, mu, sd)
    info.update({"task_kind": task_kind, "n_train": n, "n_features": xs.shape[1],
                 "C": C, "standardize": standardize, "train_accuracy": train_acc})
    return LinearProbe(torch.from_numpy(wf).float(), torch.from_numpy(bf).float(), info)


# --------------------------------------------------------------------------------------------
# density
