"""Robust training defenses: ``adversarial`` (PGD adversarial training, Madry et al.), ``mixup``
(input-space mix-up, Zhang et al.) and ``metric_mixup`` (metric-guided mix-up, ours), registered
through their own entry point.

Both follow the ``standard`` defense's conventions (and take its five training parameters, checked
by the same code): ``torch.manual_seed(ctx.seed)`` at the start of ``fit``, one shuffle generator
per epoch, ``avharness.generator(seed, "shuffle", epoch)`` (so for one seed the three defenses
visit the same batches in the same order), a ``NumericalError`` on a non-finite loss, one progress
tick per optimiser step, and the same facts returned, plus what the recipe costs.

The papers behind the seed code publish no code for either recipe (docs/seed_code.md §5): every setting
below is an avharness design choice, listed in docs/defenses.md.
"""

from __future__ import annotations

import contextlib
import math

import torch

from avharness import Budget, NumericalError, SampleRNG, Task, ThreatModel, UserError, generator
from avharness_plugins.attacks.pgd import build_pgd
from avharness_plugins.defenses.standard import Standard, _number, model_inputs
from avharness_plugins.metrics.latent import convexity, density, fit_linear_probe


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
        if norm not in ("linf", "l2"):  # training needs a bounded threat: not norm "none"
            raise UserError(f"{plugin}: {where}.norm must be one of linf, l2, got {norm!r}")
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
        # One defense entry serves every model of a suite: each is trained against the budgets of
        # the modalities it reads (a uni-modal audio model against the audio budget alone).
        used = {m: b for m, b in self.budgets.items() if m in reads}
        if not used:
            raise UserError(f"adversarial: budgets name {', '.join(self.budgets)} but model {type(model).__name__} "
                            f"reads only {', '.join(reads)}; add a budget for one of those")
        self.threat = ThreatModel("advtrain", {m: Budget(norm, eps, tuple(data.specs[m].bounds))
                                               for m, (norm, eps) in used.items()})
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


# ---------------------------------------------------------------- metric-guided mix-up (ours)

METRICS = ("convexity", "density")
SPACES = ("input", "latent")


class MetricMixup(_Recipe):
    """Metric-guided mix-up (an avharness design; no public code exists, docs/seed_code.md §5).

    Per class c, ``deficit_c = 1 − metric_c`` (convexity share, or k-NN purity) measured on the
    latent ``latent`` of the "val" split (the train split when there is no val split). Sample i is
    mixed with probability ``clip(prob · d_i / mean_c deficit_c, 0, 1)``, ``d_i`` its class's
    deficit (multilabel: the mean over its labels), and with probability ``d_i`` its partner is a
    random same-class sample of the batch (multilabel: sharing a label) when there is one, else the
    partner of ``mixup``'s seeded permutation. Epoch 1 is a warm-up of plain per-sample mix-up
    (probability ``prob``, permutation partners); the metric is measured before epoch 2 and again
    every ``every`` epochs. Draws per batch: ``draw_mix`` (lam, permutation) from
    ``avharness.generator(seed, "metric_mixup", epoch, step)``, then [B] uniforms (mixed?), [B]
    uniforms (same class?), [B] uniforms (which same-class partner).
    """

    name = "metric_mixup"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, metric: str = "convexity", latent: str | None = None,
                 every: int = 2, space: str = "input", pairs_per_class: int = 500, optimizer: str = "adam",
                 lr: float = 1e-3, epochs: int = 10, batch_size: int = 64, weight_decay: float = 0.0):
        super().__init__(optimizer, lr, epochs, batch_size, weight_decay)
        with _named(self.name):
            alpha = _number(alpha, "alpha")
            prob = _number(prob, "prob")
        if not alpha > 0:
            raise UserError(f"metric_mixup: alpha must be > 0 (lam ~ Beta(alpha, alpha)), got {alpha:g}")
        if not 0 <= prob <= 1:
            raise UserError(f"metric_mixup: prob must be in [0, 1] (mixing probability of an average class), "
                            f"got {prob:g}")
        if metric not in METRICS:
            raise UserError(f"metric_mixup: metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if latent is not None and (not isinstance(latent, str) or not latent):
            raise UserError(f"metric_mixup: latent must be a latent name (e.g. fused, audio) or null, got {latent!r}")
        for pname, value in (("every", every), ("pairs_per_class", pairs_per_class)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"metric_mixup: {pname} must be an integer >= 1, got {value!r}")
        if space not in SPACES:
            raise UserError(f"metric_mixup: space must be one of {', '.join(SPACES)}, got {space!r}")
        self.alpha, self.prob, self.metric, self.latent = alpha, prob, metric, latent
        self.every, self.space, self.pairs_per_class = every, space, pairs_per_class

    # --- setup and measurement
    def _prepare(self, model, data):
        self._latent = self.latent or model.head_latent
        if self.space == "latent" and self._latent != model.head_latent:
            raise UserError(f"metric_mixup: space latent mixes the latent the head reads ({model.head_latent!r}); "
                            f"latent {self._latent!r} is not it (use space: input, or latent: {model.head_latent})")
        self._data, self._split = data, ("val" if "val" in data.splits() and data.size("val") > 0 else "train")
        self._deficit: torch.Tensor | None = None  # [C] in [0, 1]; NaN for undefined classes
        self._measurements: list[dict] = []
        self._metric_forward = 0
        n_cls = data.task.num_classes
        self._mixed = self._same = 0
        self._mixed_per_class = [0] * n_cls
        self._seen_per_class = [0] * n_cls

    def _measure_due(self, epoch: int) -> bool:
        return epoch >= 1 and (epoch - 1) % self.every == 0

    @torch.no_grad()
    def _measure(self, model, ctx, epoch):
        data, task = self._data, self._data.task
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            lats, ys, ids = [], [], []
            for batch in data.batches(self._split, 256):
                latents = model.embed(model_inputs(model, batch.to(device).inputs))
                if self._latent not in latents:
                    raise UserError(f"metric_mixup: model {type(model).__name__} has no latent {self._latent!r}; "
                                    f"it has: {', '.join(latents)}")
                lats.append(latents[self._latent].detach().float().cpu())
                ys.append(batch.target.cpu())
                ids.extend(batch.ids)
            lat, y = torch.cat(lats), torch.cat(ys)
            self._metric_forward += len(y)
            k = task.num_classes
            if self.metric == "convexity":
                if self._latent == model.head_latent:
                    def scorer(z):
                        self._metric_forward += len(z)
                        return model.head(z.to(device)).float().cpu()
                else:
                    scorer = fit_linear_probe(lat, y, task.kind, seed=ctx.seed, num_classes=k)
                res = convexity(lat, y, scorer, task.kind, pairs_per_class=self.pairs_per_class, seed=ctx.seed,
                                ids=ids, num_classes=k)
                values = res["per_class"][res["rules"][0]]
                rule = f"convexity {res['rules'][0]}"
            else:
                res = density(lat, y, task.kind, k=max(1, min(10, len(y) - 1)), num_classes=k)
                values = res["per_class"]["knn_purity"]
                rule = "knn_purity"
        finally:
            model.train(was_training)
        deficit = torch.tensor([1.0 - float(values[c]) for c in range(k)], dtype=torch.float64).clamp(0, 1)
        self._deficit = deficit
        self._measurements.append({
            "before_epoch": epoch + 1, "split": self._split, "latent": self._latent, "metric": rule,
            "deficit": {task.classes[c]: (None if math.isnan(d) else round(d, 6)) for c, d in enumerate(deficit.tolist())},
        })

    # --- per batch
    def _sample_weights(self, member: torch.Tensor):
        """(mixing weight w_i normalised to mean 1 over classes, same-class preference s_i in [0, 1])."""
        size = member.shape[0]
        if self._deficit is None:  # warm-up: plain mix-up
            return torch.ones(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
        d = self._deficit
        defined = ~torch.isnan(d)
        mean = float(d[defined].mean()) if defined.any() else 0.0
        d = torch.where(defined, d, torch.full_like(d, mean))  # an unmeasured class counts as average
        m = member.double()
        has = m.sum(1)
        s = torch.where(has > 0, (m @ d) / has.clamp(min=1), torch.full((size,), mean, dtype=torch.float64))
        w = s / mean if mean > 0 else torch.ones(size, dtype=torch.float64)
        return w, s

    def _batch_loss(self, model, task, batch, ctx, epoch, step):
        if step == 0 and self._measure_due(epoch):
            self._measure(model, ctx, epoch)
        x = model_inputs(model, batch.inputs)
        size = len(batch)
        target = batch.target.cpu()
        if task.kind == "multiclass":
            member = torch.nn.functional.one_hot(target.long(), task.num_classes).bool()
        else:
            member = target >= 0.5
        g = generator(ctx.seed, "metric_mixup", epoch, step)
        lam, perm = draw_mix(g, size, self.alpha, 1.0)
        u_mix = torch.rand(size, generator=g, dtype=torch.float64)
        u_same = torch.rand(size, generator=g, dtype=torch.float64)
        u_pick = torch.rand(size, generator=g, dtype=torch.float64)
        w, s = self._sample_weights(member)
        mixed = u_mix < (self.prob * w).clamp(0, 1)
        # same-class partner: uniform among the other batch samples sharing a class with i
        share = (member.float() @ member.float().T) > 0
        share.fill_diagonal_(False)
        n_share = share.sum(1)
        want = mixed & (u_same < s) & (n_share > 0)
        pick = (u_pick * n_share).floor().long().clamp(max=(n_share - 1).clamp(min=0))
        same_partner = (share.long().cumsum(1) > pick[:, None]).long().argmax(1)
        perm = torch.where(want, same_partner, perm)
        lam = torch.where(mixed, lam, torch.ones_like(lam))
        perm = torch.where(mixed, perm, torch.arange(size))

        self._mixed += int(mixed.sum())
        self._same += int(want.sum())
        for c, (n_mixed, n_seen) in enumerate(zip((member & mixed[:, None]).sum(0).tolist(), member.sum(0).tolist())):
            self._mixed_per_class[c] += n_mixed
            self._seen_per_class[c] += n_seen
        if self.space == "latent":
            z = model.embed(x)[self._latent]
            logits = model.head(mix_inputs({"z": z}, lam, perm)["z"])
        else:
            logits = model(mix_inputs(x, lam, perm))
        return mixed_loss(task, logits, batch.target, lam, perm).mean(), size

    def _facts(self):
        classes = self._data.task.classes
        return {
            "mixed_samples": self._mixed, "same_class_partners": self._same,
            "mixed_per_class": {classes[c]: n for c, n in enumerate(self._mixed_per_class)},
            "mixed_share_per_class": {classes[c]: (n / seen if seen else None)
                                      for c, (n, seen) in enumerate(zip(self._mixed_per_class, self._seen_per_class))},
            "deficits": self._measurements, "metric": self.metric, "metric_split": self._split,
            "latent": self._latent, "space": self.space, "every": self.every, "alpha": self.alpha, "prob": self.prob,
            "metric_forward_samples": self._metric_forward,
        }

    def fit(self, model, data, ctx):
        facts = super().fit(model, data, ctx)
        facts["forward_samples"] += self._metric_forward  # the measurement passes are part of the cost
        self._data = None
        return facts


def build_metric_mixup(alpha: float = 1.0, prob: float = 1.0, metric: str = "convexity", latent: str | None = None,
                       every: int = 2, space: str = "input", pairs_per_class: int = 500, optimizer: str = "adam",
                       lr: float = 1e-3, epochs: int = 10, batch_size: int = 64,
                       weight_decay: float = 0.0) -> MetricMixup:
    """Metric-guided mix-up (ours): mix more, and within the class, where a class's latent region is
    least convex (or least pure), measured on the val split.

    alpha: lam ~ Beta(alpha, alpha). prob: mixing probability of a class with average deficit.
    metric: convexity | density (k-NN purity). latent: the latent measured (default: the head's).
    every: re-measure every this many epochs (first after a warm-up epoch). space: input (all
    modalities, one lam) | latent (manifold mix-up of the head latent). pairs_per_class: convexity
    pairs per class. optimizer, lr, epochs, batch_size, weight_decay: as for ``standard``.
    """
    return MetricMixup(alpha=alpha, prob=prob, metric=metric, latent=latent, every=every, space=space,
                       pairs_per_class=pairs_per_class, optimizer=optimizer, lr=lr, epochs=epochs,
                       batch_size=batch_size, weight_decay=weight_decay)


def register_defenses(register):
    register("adversarial", build_adversarial)
    register("mixup", build_mixup)
    register("metric_mixup", build_metric_mixup)
