"""ART (adversarial-robustness-toolbox) as an attack backend: ``art.pgd`` and ``art.apgd``.

ART takes one input tensor per sample, so the batch is packed (``packing.py``): ART's
``PyTorchClassifier`` wraps a ``PackedAdapter`` with ``input_shape=(D,)``, per-feature
``clip_values`` from each modality's bounds, and ``use_amp=False`` (always: it would import
NVIDIA apex). ART is used as an optimiser only (anchors §6.2): labels ``y`` are always passed (ART
never labels by argmax), ``num_random_init <= 1`` (ART would pick restarts by argmax success), and
restarts, success and the per-sample worst case are decided here with ``task.correct`` and
``task.loss``.

Losses (summed over the batch, so a sample's gradient does not depend on the batch size):
multiclass ``nn.CrossEntropyLoss(reduction="sum")``, fed one-hot labels (ART's
``check_and_transform_label_format`` one-hot encodes indices and its ``reduce_labels`` turns one-hot
back into the integer indices CE expects; raw 1-D indices would crash ``reduce_labels``);
multilabel ``MultiLabelBCE``, mean BCE over labels per sample like ``task.loss``, which is
deliberately not a ``BCEWithLogitsLoss`` subclass (ART would argmax-reduce the multi-hot labels) and
has the ``reduction`` attribute ART's APGD sets.

- ``art.pgd``: ART's ``ProjectedGradientDescentPyTorch``. Every input modality is packed; the
  ``mask`` is 1 on the features of the attacked modalities only. linf threats use per-feature
  ``eps``/``eps_step`` vectors, so a joint linf threat keeps each modality's own budget. l2 is
  supported for a single attacked modality only: ART's l2 step and projection are over the whole
  packed vector, so per-modality l2 budgets (a joint l2 threat) or mixed norms cannot be expressed
  and are refused with a UserError. Multiclass and multilabel.
- ``art.apgd``: ART's ``AutoProjectedGradientDescent`` with ``loss_type=None`` (the loss above).
  ART's APGD takes one scalar eps, so modalities are packed in scaled coordinates (z_m = x_m *
  eps_ref / eps_m) to give a joint linf threat per-modality budgets; the same norm rules as PGD.
  Its random start is not masked and it runs on subsets of the batch, so only attacked modalities
  are packed and the others are held fixed in the adapter, matched to rows through a row-key
  column. **Multiclass only:** ART's APGD attacks only samples with argmax(prediction) ==
  argmax(label) and keeps a sample's result only when argmax says it broke, a rule that is wrong
  for multi-hot labels; a multilabel task is refused at perturb time with a UserError.

C&W, DeepFool and Square are not offered: all three are multiclass-only in ART (argmax or margin
success), and ART's Square assumes image-shaped inputs.

After ART returns, every attacked modality is projected again with ``Budget.project`` (budget and
bounds, a safety net against float32 round-off in ART's numpy path); unattacked modalities and those
with eps = 0 are returned as the caller's own tensors; when every eps is 0, ART is not called.

Determinism: ART draws from the global numpy RNG (and torch's). Inside ``perturb`` both are seeded
from ``derive_seed(rng.seed, rng.key, *rng.ids, restart)`` and restored afterwards, so a batch is
reproducible; unlike native ``pgd``, a sample's random start depends on the whole batch (its ids
and order), not on its own id only.

``perturb`` returns ``AttackOutput`` with ``forward_samples`` (rows through the adapter, including
ART's own predictions) and ``backward_samples`` (rows of loss gradients).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avharness import AttackOutput, NumericalError, UserError, derive_seed, hookimpl

from .packing import PackedAdapter, Packing, attacked, bounds, eps_vector, mask_vector, step_vector


class MultiLabelBCE(nn.Module):
    """Mean BCE-with-logits over labels per sample, reduced over the batch by ``reduction``.

    Not a ``BCEWithLogitsLoss`` subclass on purpose: ART's ``PyTorchClassifier`` argmax-reduces the
    labels of BCE losses, collapsing multi-hot targets to one index.
    """

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none").mean(1)
        if self.reduction == "none":
            return per
        if self.reduction == "mean":
            return per.mean()
        return per.sum()


def _check_int(name, key, value, lo=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise UserError(f"{name}: {key} must be an integer >= {lo}, got {value!r}")


def _check_pos(name, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise UserError(f"{name}: {key} must be a number > 0, got {value!r}")


class _GlobalRNG:
    """Seeds numpy's and torch's global RNGs for the duration of a block, then restores them."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.np_state = np.random.get_state()
        self.torch_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        np.random.seed(self.seed % (1 << 32))
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        np.random.set_state(self.np_state)
        torch.set_rng_state(self.torch_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state_all(self.cuda_state)
        return False


class ARTAttack:
    """One ART evasion attack run through the packed adapter; subclasses build and call it."""

    name = "art"
    multilabel_ok = True

    def __init__(self, steps: int, restarts: int = 1):
        self.steps = steps
        self.restarts = restarts
        #: read by the validity checks: an iterative attack should beat a single-step one
        self.iterative = steps > 1

    # -- subclass hooks --
    def _packing(self, inputs, threat, att) -> tuple[Packing, dict]:
        raise NotImplementedError

    def _run(self, classifier, z, y, packing, threat, att, batch):
        raise NotImplementedError

    # -- shared --
    def _check_threat(self, threat, att):
        norms = {threat.budgets[m].norm for m in att}
        if len(norms) > 1:
            raise UserError(
                f"{self.name}: threat {threat.name!r} mixes norms {sorted(norms)} across {att}; ART attacks one "
                "packed vector under one norm: use one norm for all attacked modalities, or the native pgd"
            )
        if norms == {"l2"} and len(att) > 1:
            raise UserError(
                f"{self.name}: threat {threat.name!r} is a joint l2 threat on {att}; ART's l2 ball is over the whole "
                "packed input, so per-modality l2 budgets cannot be expressed: attack one modality, use linf, "
                "or use the native pgd"
            )
        return norms.pop()

    def perturb(self, model, inputs, target, threat, task, rng):
        missing = [m for m in threat.budgets if m not in inputs]
        if missing:
            raise UserError(
                f"{self.name}: threat {threat.name!r} attacks {missing} but the inputs hold only "
                f"{sorted(inputs)}; drop those modalities from the threat or feed them to the model"
            )
        att = attacked(threat)
        out = dict(inputs)
        if not att:
            return out
        if task.kind == "multilabel" and not self.multilabel_ok:
            raise UserError(
                f"{self.name}: refuses multilabel task: ART's {self.art_name} decides which samples to attack and "
                "which results to keep by argmax(prediction) == argmax(label), a multiclass rule; use art.pgd or pgd"
            )
        norm = self._check_threat(threat, att)
        batch = int(target.shape[0])
        if len(rng.ids) != batch:
            raise ValueError(f"{self.name}: SampleRNG has {len(rng.ids)} ids for a batch of {batch}")

        from art.estimators.classification import PyTorchClassifier

        device = inputs[att[0]].device
        clean = {m: x.detach() for m, x in inputs.items()}
        packing, fixed = self._packing(clean, threat, att)
        adapter = PackedAdapter(model, packing, fixed).to(device)
        counts = {"forward_samples": 0, "backward_samples": 0}
        hook = adapter.register_forward_hook(lambda mod, args, res: counts.__setitem__(
            "forward_samples", counts["forward_samples"] + int(args[0].shape[0])))
        loss = nn.CrossEntropyLoss(reduction="sum") if task.kind == "multiclass" else MultiLabelBCE("sum")
        lo, hi = bounds(packing, threat)
        if task.kind == "multiclass":
            y = F.one_hot(target.long(), task.num_classes).cpu().numpy().astype(np.float32)
        else:
            y = target.detach().cpu().numpy().astype(np.float32)
        z = packing.pack(clean).detach().cpu().numpy().astype(np.float32)

        params = list(model.parameters())
        req = [p.requires_grad for p in params]
        modes = [mod.training for mod in model.modules()]
        try:
            for p in params:  # gradients w.r.t. the input only: nothing accumulates in the model
                p.requires_grad_(False)
            classifier = PyTorchClassifier(
                model=adapter, loss=loss, input_shape=(packing.dim,), nb_classes=task.num_classes,
                clip_values=(lo.numpy(), hi.numpy()), use_amp=False,
                device_type="gpu" if device.type == "cuda" else "cpu",
            )
            grad = classifier.loss_gradient

            def counted(x, y, *a, **k):
                counts["backward_samples"] += int(x.shape[0])
                return grad(x, y, *a, **k)

            classifier.loss_gradient = counted

            best = best_loss = best_wrong = None
            for restart in range(self.restarts):
                with _GlobalRNG(derive_seed(rng.seed, rng.key, *rng.ids, restart)):
                    z_adv = self._run(classifier, z, y, packing, threat, att, batch, norm)
                adv_all = packing.unpack(torch.from_numpy(np.asarray(z_adv, dtype=np.float32)).to(device))
                adv = {m: threat.budgets[m].project(adv_all[m].to(clean[m].dtype), clean[m]) for m in att}
                if self.restarts == 1:
                    best = adv
                    break
                with torch.no_grad():
                    logits = model({**inputs, **adv})
                    counts["forward_samples"] += batch
                    l = task.loss(logits, target)
                    wrong = ~task.correct(logits, target)
                if not torch.isfinite(l).all():
                    raise NumericalError(
                        f"{self.name}: the model's loss was NaN or inf under threat {threat.name!r}; "
                        "check the model for overflow"
                    )
                if best is None:
                    best, best_loss, best_wrong = adv, l, wrong
                    continue
                better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (l >= best_loss))
                for m in att:
                    best[m] = torch.where(better.view(-1, *([1] * (adv[m].dim() - 1))), adv[m], best[m])
                best_loss = torch.where(better, l, best_loss)
                best_wrong = best_wrong | wrong
        finally:
            hook.remove()
            for p, r in zip(params, req):
                p.requires_grad_(r)
            for mod, t in zip(model.modules(), modes):
                mod.training = t
        for m in att:
            if not torch.isfinite(best[m]).all():
                raise NumericalError(f"{self.name}: ART returned NaN or inf for {m} under threat {threat.name!r}")
            out[m] = best[m]
        return AttackOutput(out, stats={k: float(v) for k, v in counts.items()})


class ARTPGD(ARTAttack):
    name, art_name = "art.pgd", "PGD"

    def __init__(self, steps: int, step_size: float, restarts: int, random_start: bool):
        super().__init__(steps, restarts)
        self.step_size = step_size
        self.random_start = random_start

    def __repr__(self):
        return (f"ARTPGD(steps={self.steps}, step_size={self.step_size:g}, restarts={self.restarts}, "
                f"random_start={self.random_start})")

    def _packing(self, inputs, threat, att):
        return Packing.of(inputs), {}

    def _run(self, classifier, z, y, packing, threat, att, batch, norm):
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        if norm == "linf":
            eps = eps_vector(packing, threat).numpy()
            # eps_step must be > 0 everywhere; masked features never move, whatever their step.
            eps_step = step_vector(packing, threat, self.step_size, fill=1.0).numpy()
            art_norm = np.inf
        else:  # one attacked modality (checked): the whole-vector l2 ball is that modality's ball
            eps = float(threat.budgets[att[0]].eps)
            eps_step = float(self.step_size * eps)
            art_norm = 2
        attack = ProjectedGradientDescentPyTorch(
            classifier, norm=art_norm, eps=eps, eps_step=eps_step, max_iter=self.steps, targeted=False,
            num_random_init=1 if self.random_start else 0, batch_size=batch, verbose=False,
        )
        return attack.generate(z, y=y, mask=mask_vector(packing, threat).numpy())


class ARTAPGD(ARTAttack):
    name, art_name = "art.apgd", "AutoProjectedGradientDescent"
    multilabel_ok = False

    def __repr__(self):
        return f"ARTAPGD(steps={self.steps}, restarts={self.restarts})"

    def _packing(self, inputs, threat, att):
        ref = max(threat.budgets[m].eps for m in att)
        # z_m = x_m / s_m with s_m = eps_m / ref: every attacked modality has eps = ref in z.
        scales = {m: threat.budgets[m].eps / ref for m in att}
        packing = Packing.of(inputs, att, scales=scales, row_key=1000.0 * ref)
        return packing, {m: x for m, x in inputs.items() if m not in att}

    def _run(self, classifier, z, y, packing, threat, att, batch, norm):
        from art.attacks.evasion import AutoProjectedGradientDescent

        ref = float(max(threat.budgets[m].eps for m in att))
        attack = AutoProjectedGradientDescent(
            classifier, norm=np.inf if norm == "linf" else 2, eps=ref, eps_step=2 * ref, max_iter=self.steps,
            targeted=False, nb_random_init=1, batch_size=batch, loss_type=None, verbose=False,
        )
        return attack.generate(z, y=y)


def build_art_pgd(steps: int = 10, step_size: float | None = None, restarts: int = 1, random_start: bool = True) -> ARTPGD:
    """ART's PGD on the packed adapter (per-feature linf eps; l2 on one modality only).

    steps: gradient steps per restart (>= 1).
    step_size: step as a fraction of each modality's eps (> 0); default 2.5 / steps.
    restarts: runs from different random starts (>= 1), each with ART's num_random_init <= 1;
        each sample keeps its worst point (task.correct, then task.loss), decided by avharness.
    random_start: start from a random point of the ball (otherwise from the clean input).
    """
    _check_int("art.pgd", "steps", steps)
    _check_int("art.pgd", "restarts", restarts)
    if step_size is None:
        step_size = 2.5 / steps
    _check_pos("art.pgd", "step_size", step_size)
    if not isinstance(random_start, bool):
        raise UserError(f"art.pgd: random_start must be true or false, got {random_start!r}")
    return ARTPGD(steps, float(step_size), restarts, random_start)


def build_art_apgd(steps: int = 20, restarts: int = 1) -> ARTAPGD:
    """ART's Auto-PGD (Croce & Hein) with the task loss; multiclass only (refuses multilabel).

    steps: iterations per restart (>= 1).
    restarts: runs from different random starts (>= 1); each sample keeps its worst point.
    """
    _check_int("art.apgd", "steps", steps)
    _check_int("art.apgd", "restarts", restarts)
    return ARTAPGD(steps, restarts)


@hookimpl
def register_attacks(register):
    register("art.pgd", build_art_pgd)
    register("art.apgd", build_art_apgd)
