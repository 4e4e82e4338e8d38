"""Robust training defenses: ``adversarial`` (PGD adversarial training, Madry et al.) and ``mixup``
(input-space mix-up, Zhang et al.), registered through their own entry point.

Both follow the ``standard`` defense's conventions (and take its five training parameters, checked
by the same code): ``torch.manual_seed(ctx.seed)`` at the start of ``fit``, one shuffle generator
per epoch, ``avharness.generator(seed, "shuffle", epoch)`` (so for one seed the three defenses
visit the same batches in the same order), a ``NumericalError`` on a non-finite loss, one progress
tick per optimiser step, and the same facts returned, plus what the recipe costs.

The papers behind the seed code publish no code for either recipe (seeds.md §5): every setting
below is an avharness design choice, listed in docs/defenses.md.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from avharness import (AVModel, Budget, Dataset, FitContext, NumericalError, SampleRNG, Task, ThreatModel,
                       UserError, generator, hookimpl)
from avharness.threat import NORMS
from avharness_plugins.attacks import build_pgd
from avharness_plugins.defenses import Standard, _make_optimizer, _number, model_inputs, split_accuracy


@contextlib.contextmanager
def _named(plugin: str):
    """Re-raise the ``standard`` helpers' validation errors under this plugin's name."""
    try:
        yield
    except UserError as exc:
        msg = str(exc)
        if msg.startswith("standard:"):
            msg = f"{plugin}:{msg[len('standard:'):]}"
        raise UserError(msg) from None


class _Recipe(Standard):
    """The ``standard`` training loop with a recipe-specific loss per batch.

    Subclasses set ``name`` and implement ``_batch_loss``; ``_prepare`` checks what needs the model
    and the data, and ``_facts`` adds recipe-specific facts to the returned dict.
    """

    name = "recipe"

    def __init__(self, optimizer: str, lr, epochs: int, batch_size: int, weight_decay):
        with _named(self.name):
            super().__init__(optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size,
                             weight_decay=weight_decay)

    # --- hooks
    def _prepare(self, model: AVModel, data: Dataset) -> None:
        pass

    def _batch_loss(self, model: AVModel, task: Task, batch, ctx: FitContext, epoch: int, step: int):
        """(scalar loss to minimise, rows that went through the training forward pass)."""
        raise NotImplementedError

    def _facts(self) -> dict:
        return {}

    # --- the loop
    def fit(self, model: AVModel, data: Dataset, ctx: FitContext) -> dict:
        torch.manual_seed(ctx.seed)
        device = torch.device(ctx.device)
        model.to(device)
        self._prepare(model, data)
        opt = _make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        n = data.size("train")
        if n == 0:
            raise UserError(f"{self.name}: the dataset's train split is empty")
        steps_per_epoch = math.ceil(n / self.batch_size)
        advance = ctx.progress(f"{self.name} {type(model).__name__}", self.epochs * steps_per_epoch)

        start = time.perf_counter()
        steps = forward = backward = 0
        epoch_losses: list[float] = []
        for epoch in range(self.epochs):
            model.train()
            loss_sum, seen = 0.0, 0
            shuffle = generator(ctx.seed, "shuffle", epoch)
            for index, batch in enumerate(data.batches("train", self.batch_size, shuffle=shuffle)):
                batch = batch.to(device)
                loss, rows = self._batch_loss(model, data.task, batch, ctx, epoch, index)
                if not torch.isfinite(loss):
                    raise NumericalError(
                        f"{self.name}: training loss became {loss.item()} at epoch {epoch + 1}, step {steps + 1} "
                        f"(optimizer {self.optimizer}, lr {self.lr:g}); lower lr or check the inputs for NaN/inf"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                forward += rows
                backward += rows
                loss_sum += float(loss.detach()) * len(batch)
                seen += len(batch)
                advance()
            epoch_losses.append(loss_sum / max(seen, 1))

        val_accuracy, val_n = (split_accuracy(model, data, "val", device)
                               if "val" in data.splits() else (None, 0))
        model.eval()
        return {
            "epochs": self.epochs,
            "steps": steps,
            "wall_s": round(time.perf_counter() - start, 3),
            "forward_samples": forward + val_n,
            "backward_samples": backward,
            "final_train_loss": epoch_losses[-1] if epoch_losses else None,
            "epoch_train_loss": epoch_losses,
            "val_accuracy": val_accuracy,
            **self._facts(),
        }


# ---------------------------------------------------------------- adversarial training

def parse_budgets(budgets, plugin: str = "adversarial") -> dict[str, tuple[str, float]]:
    """``{audio: {norm: linf, eps: 0.1}, ...}`` (the syntax of a suite's threats, one eps each) →
    ``{"audio": ("linf", 0.1)}``; anything else is a UserError that says what to write."""
    example = "{audio: {norm: linf, eps: 0.1}}"
    if not isinstance(budgets, dict) or not budgets:
        raise UserError(f"{plugin}: budgets must be a mapping of modality to budget like {example}, got {budgets!r}")
    out = {}
    for modality, budget in budgets.items():
        where = f"budgets.{modality}"
        if not isinstance(modality, str) or not modality:
            raise UserError(f"{plugin}: budgets keys must be modality names (e.g. audio, video), got {modality!r}")
        if not isinstance(budget, dict):
            raise UserError(f"{plugin}: {where} must be a mapping {{norm: linf|l2, eps: number}}, got {budget!r}")
        unknown = sorted(map(str, set(budget) - {"norm", "eps"}))
        if unknown:
            raise UserError(f"{plugin}: {where}: unknown key {unknown[0]!r}; allowed: norm, eps")
        norm = budget.get("norm")
        if norm not in NORMS:
            raise UserError(f"{plugin}: {where}.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if "eps" not in budget:
            raise UserError(f"{plugin}: {where}: missing eps (one number > 0: the budget trained against)")
        if isinstance(budget["eps"], list):
            raise UserError(f"{plugin}: {where}.eps must be one number (training uses a single budget), "
                            f"got the list {budget['eps']!r}")
        with _named(plugin):
            eps = _number(budget["eps"], f"{where}.eps")
        if not eps > 0:
            raise UserError(f"{plugin}: {where}.eps must be > 0, got {eps:g} "
                            "(leave a modality out of budgets to train without attacking it)")
        out[modality] = (norm, eps)
    return out


class Adversarial(_Recipe):
    """PGD adversarial training: each step trains on PGD examples found against the current weights.

    Per batch: the model is put in eval mode and ``pgd(steps, step_size)`` (the built-in attack,
    one restart, random start, keep-worst-iterate) perturbs the modalities named in ``budgets``
    inside their balls and the data's bounds, with per-sample draws from
    ``SampleRNG(seed, "advtrain/<epoch>", ids)``; then, in train mode, one optimiser step on
    ``(1 - adv_weight) * clean_loss + adv_weight * adv_loss`` (batch means of the task's loss).
    With ``adv_weight < 1`` clean and adversarial rows go through one forward pass together (one
    BatchNorm update over both); with ``adv_weight = 1`` the clean rows are not run at all.
    """

    name = "adversarial"

    def __init__(self, budgets: dict, steps: int = 5, step_size: float | None = None, adv_weight: float = 1.0,
                 optimizer: str = "adam", lr: float = 1e-3, epochs: int = 10, batch_size: int = 64,
                 weight_decay: float = 0.0):
        super().__init__(optimizer, lr, epochs, batch_size, weight_decay)
        self.budgets = parse_budgets(budgets, self.name)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"adversarial: steps (inner PGD steps) must be an integer >= 1, got {steps!r}")
        if step_size is not None:
            with _named(self.name):
                step_size = _number(step_size, "step_size")
            if not step_size > 0:
                raise UserError(f"adversarial: step_size must be > 0 (a fraction of eps per step), got {step_size:g}")
        with _named(self.name):
            adv_weight = _number(adv_weight, "adv_weight")
        if not 0 < adv_weight <= 1:
            raise UserError(f"adversarial: adv_weight must be in (0, 1] (share of the adversarial loss; "
                            f"0 would be plain training: use the standard defense), got {adv_weight:g}")
        self.steps, self.adv_weight = steps, adv_weight
        self.attack = build_pgd(steps=steps, step_size=step_size, restarts=1, random_start=True)
        self.threat: ThreatModel | None = None

    def _prepare(self, model, data):
        missing = [m for m in self.budgets if m not in data.specs]
        if missing:
            raise UserError(f"adversarial: budgets name {missing[0]!r} but the dataset has no such modality; "
                            f"it has: {', '.join(sorted(data.specs))}")
        reads = getattr(model, "modalities", ()) or tuple(data.specs)
        unread = [m for m in self.budgets if m not in reads]
        if unread:
            raise UserError(f"adversarial: budgets name {unread[0]!r} but model {type(model).__name__} reads only "
                            f"{', '.join(reads)}; train it against budgets for those")
        self.threat = ThreatModel("advtrain", {m: Budget(norm, eps, tuple(data.specs[m].bounds))
                                               for m, (norm, eps) in self.budgets.items()})
        self._attack_rows = 0
        self._epochs: list[list[float]] = []  # per epoch: [clean loss sum, adversarial loss sum, samples]

    def _batch_loss(self, model, task, batch, ctx, epoch, step):
        if len(self._epochs) <= epoch:
            self._epochs.append([0.0, 0.0, 0])
        x = model_inputs(model, batch.inputs)
        size = len(batch)
        model.eval()  # BatchNorm statistics and dropout stay fixed during the attack
        try:
            adv = self.attack.perturb(model, x, batch.target, self.threat, task,
                                      SampleRNG(ctx.seed, f"advtrain/{epoch}", batch.ids))
        except NumericalError as exc:
            raise NumericalError(f"adversarial: inner attack at epoch {epoch + 1}, batch {step + 1}: {exc}") from None
        finally:
            model.train()
        self._attack_rows += size
        adv = {m: v.detach() for m, v in adv.items()}
        sums = self._epochs[epoch]
        if self.adv_weight < 1:
            both = {m: torch.cat([x[m], adv[m]]) for m in x}
            per = task.loss(model(both), torch.cat([batch.target, batch.target]))
            clean_loss, adv_loss = per[:size].mean(), per[size:].mean()
            loss = (1 - self.adv_weight) * clean_loss + self.adv_weight * adv_loss
            rows = 2 * size
            sums[0] += float(clean_loss.detach()) * size
        else:
            adv_loss = loss = task.loss(model(adv), batch.target).mean()
            rows = size
        sums[1] += float(adv_loss.detach()) * size
        sums[2] += size
        return loss, rows

    def _facts(self):
        last = self._epochs[-1] if self._epochs else None
        return {
            "attack_forward_samples": self.steps * self._attack_rows,
            "attack_backward_samples": self.steps * self._attack_rows,
            "threat": self.threat.to_dict(),
            "attack": {"plugin": "pgd", "steps": self.steps, "step_size": self.attack.step_size, "restarts": 1,
                       "random_start": True},
            "adv_weight": self.adv_weight,
            "final_adv_loss": last[1] / max(last[2], 1) if last else None,
            "final_clean_loss": last[0] / max(last[2], 1) if last and self.adv_weight < 1 else None,
        }


def build_adversarial(budgets: dict, steps: int = 5, step_size: float | None = None, adv_weight: float = 1.0,
                      optimizer: str = "adam", lr: float = 1e-3, epochs: int = 10, batch_size: int = 64,
                      weight_decay: float = 0.0) -> Adversarial:
    """PGD adversarial training (Madry et al.).

    budgets: per-modality budget trained against, as in a suite's threats but one eps each, e.g.
        ``{audio: {norm: linf, eps: 0.1}, video: {norm: l2, eps: 0.5}}``; bounds come from the data.
    steps: inner PGD steps per batch (>= 1). step_size: PGD step as a fraction of eps (default
        2.5 / steps). adv_weight: w in ``(1 - w) * clean_loss + w * adv_loss`` (0 < w <= 1).
    optimizer, lr, epochs, batch_size, weight_decay: as for ``standard``.
    """
    return Adversarial(budgets, steps=steps, step_size=step_size, adv_weight=adv_weight, optimizer=optimizer,
                       lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay)


# ---------------------------------------------------------------- mix-up

def draw_mix(g: torch.Generator, size: int, alpha: float, prob: float = 1.0):
    """(lam [size] float32, partner permutation [size]) for one batch, or None when it stays clean.

    Draw order from ``g``: one uniform (is the batch mixed?), the permutation, then one
    lam ~ Beta(alpha, alpha) per sample (Beta as a 2-component Dirichlet, as torch.distributions
    does, but from ``g``).
    """
    mixed = bool(torch.rand((), generator=g) < prob)
    if not mixed:
        return None
    perm = torch.randperm(size, generator=g)
    conc = torch.full((size, 2), float(alpha), dtype=torch.float64)
    lam = torch._sample_dirichlet(conc, generator=g)[:, 0].float()
    return lam, perm


def mix_inputs(inputs: dict[str, torch.Tensor], lam: torch.Tensor, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """x_i ← lam_i · x_i + (1 − lam_i) · x_perm(i), with the same lam_i for every modality."""
    out = {}
    for m, x in inputs.items():
        w = lam.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
        out[m] = w * x + (1 - w) * x[perm.to(x.device)]
    return out


def mix_multilabel_targets(target: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The seed's additive rule: each label of x_i adds lam, each of x_perm(i) adds 1 − lam, so a
    label both carry reaches 1 (clipped to [0, 1], which only matters for soft input labels)."""
    t = target.float()
    w = lam.to(t.device).view(-1, 1)
    return (w * t + (1 - w) * t[perm.to(t.device)]).clamp(0, 1)


def mixed_loss(task: Task, logits: torch.Tensor, target: torch.Tensor, lam: torch.Tensor,
               perm: torch.Tensor) -> torch.Tensor:
    """Per-sample loss on mixed inputs: multiclass lam·CE(y_i) + (1−lam)·CE(y_perm(i));
    multilabel BCE against the additive soft targets."""
    perm = perm.to(target.device)
    lam = lam.to(logits.device)
    if task.kind == "multiclass":
        return lam * task.loss(logits, target) + (1 - lam) * task.loss(logits, target[perm])
    return task.loss(logits, mix_multilabel_targets(target, lam, perm))


class Mixup(_Recipe):
    """Input-space mix-up: with probability ``prob`` a batch is replaced by convex combinations of
    its samples with a seeded permutation of itself, one lam ~ Beta(alpha, alpha) per sample shared
    by all modalities, trained on the matching soft targets. Draws come from
    ``avharness.generator(seed, "mixup", epoch, batch index)``."""

    name = "mixup"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, optimizer: str = "adam", lr: float = 1e-3,
                 epochs: int = 10, batch_size: int = 64, weight_decay: float = 0.0):
        super().__init__(optimizer, lr, epochs, batch_size, weight_decay)
        with _named(self.name):
            alpha = _number(alpha, "alpha")
            prob = _number(prob, "prob")
        if not alpha > 0:
            raise UserError(f"mixup: alpha must be > 0 (lam ~ Beta(alpha, alpha)), got {alpha:g}")
        if not 0 <= prob <= 1:
            raise UserError(f"mixup: prob must be in [0, 1] (probability a batch is mixed), got {prob:g}")
        self.alpha, self.prob = alpha, prob

    def _prepare(self, model, data):
        self._mixed_batches = self._mixed_samples = 0

    def _batch_loss(self, model, task, batch, ctx, epoch, step):
        x = model_inputs(model, batch.inputs)
        draw = draw_mix(generator(ctx.seed, "mixup", epoch, step), len(batch), self.alpha, self.prob)
        if draw is None:
            return task.loss(model(x), batch.target).mean(), len(batch)
        lam, perm = draw
        self._mixed_batches += 1
        self._mixed_samples += len(batch)
        return mixed_loss(task, model(mix_inputs(x, lam, perm)), batch.target, lam, perm).mean(), len(batch)

    def _facts(self):
        return {"mixed_batches": self._mixed_batches, "mixed_samples": self._mixed_samples,
                "alpha": self.alpha, "prob": self.prob}


def build_mixup(alpha: float = 1.0, prob: float = 1.0, optimizer: str = "adam", lr: float = 1e-3, epochs: int = 10,
                batch_size: int = 64, weight_decay: float = 0.0) -> Mixup:
    """Input-space mix-up (Zhang et al.) with one lam per sample pair shared across modalities.

    alpha: lam ~ Beta(alpha, alpha) (> 0; large alpha → lam near 0.5). prob: probability a batch
    is mixed (else trained clean). optimizer, lr, epochs, batch_size, weight_decay: as for ``standard``.
    """
    return Mixup(alpha=alpha, prob=prob, optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size,
                 weight_decay=weight_decay)


@hookimpl
def register_defenses(register):
    register("adversarial", build_adversarial)
    register("mixup", build_mixup)
