"""``universal``: one perturbation per modality shared by every sample (the seed code's "PGD").

Unlike the seed code it is fitted on a split other than the one evaluated (``fit_split``, default
"val"; fitting on the evaluated samples would be transductive) and projected onto each modality's
eps-ball after every update (the seed never projected it). Fitting: sign-gradient (linf) or
normalised-gradient (l2) ascent on the summed task loss over ``epochs`` passes of the fit split,
from zero; evaluation adds the fitted perturbation to each sample and clips to the valid range.
"""

from __future__ import annotations

import torch

from avharness import UserError


class Universal:
    iterative = True

    def __init__(self, epochs: int = 5, step_size: float = 0.1, fit_split: str = "val", batch_size: int = 128):
        for name, v in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"universal: {name} must be an integer >= 1, got {v!r}")
        if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
            raise UserError(f"universal: step_size must be a number > 0 (a fraction of eps), got {step_size!r}")
        self.epochs, self.step_size, self.fit_split, self.batch_size = epochs, float(step_size), fit_split, batch_size
        self.delta = None  # set by prepare(): {modality: tensor of one sample's shape}

    def prepare(self, model, data, threat, task, eval_split: str) -> Universal:
        """A copy of this attack holding a perturbation fitted on ``fit_split`` for this model and threat."""
        if self.fit_split == eval_split:
            raise UserError(f"universal: fit_split {self.fit_split!r} is the evaluated split; fit on another one "
                            "(fitting on the evaluated samples is transductive)")
        if self.fit_split not in data.splits():
            raise UserError(f"universal: the dataset has no split {self.fit_split!r}; it has {', '.join(data.splits())}")
        device = next(model.parameters()).device
        attacked = [m for m in threat.modalities if threat.budgets[m].eps > 0]
        delta = {m: torch.zeros(data.specs[m].shape, device=device) for m in attacked}
        for _epoch in range(self.epochs if attacked else 0):
            for batch in data.batches(self.fit_split, self.batch_size):
                batch = batch.to(device)
                leaves = {m: d.clone().requires_grad_(True) for m, d in delta.items()}
                adv = {m: (x + leaves[m]).clamp(*threat.budgets[m].bounds) if m in leaves else x
                       for m, x in batch.inputs.items()}
                loss = task.loss(model(adv), batch.target).sum()
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                with torch.no_grad():
                    for (m, d), g in zip(delta.items(), grads):
                        if g is None:
                            continue
                        b = threat.budgets[m]
                        step = g.sign() if b.norm == "linf" else g / g.norm().clamp_min(1e-12)
                        d = d + self.step_size * b.eps * step
                        # project the shared perturbation itself onto the ball after every update
                        delta[m] = d.clamp(-b.eps, b.eps) if b.norm == "linf" else d * (b.eps / d.norm().clamp_min(b.eps))
        fitted = Universal(self.epochs, self.step_size, self.fit_split, self.batch_size)
        fitted.delta = {m: d.detach() for m, d in delta.items()}
        return fitted

    def perturb(self, model, inputs, target, threat, task, rng):
        if self.delta is None:
            raise RuntimeError("universal: perturb() before prepare(); the runner prepares it per model and threat")
        out = dict(inputs)
        for m, d in self.delta.items():
            out[m] = threat.budgets[m].project(inputs[m] + d.to(inputs[m].device), inputs[m])
        return out


def register_attacks(register):
    register("universal", Universal)
