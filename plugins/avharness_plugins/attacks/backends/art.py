"""ART (adversarial-robustness-toolbox) as an attack backend: ``art.pgd`` and ``art.apgd``.

ART takes one input tensor per sample, so the batch is packed (``packing.py``): ART's
``PyTorchClassifier`` wraps a ``PackedAdapter`` with ``input_shape=(D,)``, per-feature
``clip_values`` from each modality's bounds, and ``use_amp=False`` (always: it would import
NVIDIA apex). ART is used as an optimiser only (docs/backends.md §2): labels ``y`` are always passed (ART
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

- ``art.cw``, ``art.deepfool``, ``art.square`` (multiclass only; multilabel refused with a UserError):
  attacked modalities packed in scaled coordinates as for APGD, the others held fixed via the row
  key (clipped to a finite box). C&W (CarliniLInfMethod; linf only: ART's C&W L2 scales its gradient
  by the clip range and moves the row-key column) and DeepFool are minimum-norm attacks: their output
  is projected onto each modality's eps-ball afterwards, i.e. "C&W then project" / "DeepFool then
  project". DeepFool ignores y (attacks the predicted class), so samples ``task.correct`` says are
  already wrong are returned clean. Square (gradient-free, ``gradient_free = True``; linf only: ART's
  l2 Square gives NaN on this packing) takes images only: z is zero-padded to (N, 1, S, S).

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

import contextlib
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avharness import AttackOutput, NumericalError, UserError, derive_seed
from avharness_plugins.attacks.backends.packing import PackedAdapter, Packing, bounds, eps_vector, mask_vector, step_vector


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
        self.py_state = random.getstate()
        self.torch_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        np.random.seed(self.seed % (1 << 32))
        random.seed(self.seed)
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        np.random.set_state(self.np_state)
        random.setstate(self.py_state)
        torch.set_rng_state(self.torch_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state_all(self.cuda_state)
        return False


def _art_labels(target: torch.Tensor, task) -> np.ndarray:
    """Labels as ART takes them: float32 one-hot (multiclass) or the multi-hot matrix (multilabel)."""
    if task.kind == "multiclass":
        return F.one_hot(target.long(), task.num_classes).cpu().numpy().astype(np.float32)
    return target.detach().cpu().numpy().astype(np.float32)


def _count_gradients(classifier, counts: dict, num_classes: int) -> None:
    """Wrap the classifier's loss_gradient and class_gradient so that each adds its backward rows to counts."""
    grad = classifier.loss_gradient

    def counted(x, y, *a, **k):
        counts["backward_samples"] += int(x.shape[0])
        return grad(x, y, *a, **k)

    classifier.loss_gradient = counted
    class_grad = classifier.class_gradient

    def counted_class(x, label=None, *a, **k):  # one backward pass per row and class
        counts["backward_samples"] += int(x.shape[0]) * (num_classes if label is None else 1)
        return class_grad(x, label, *a, **k)

    classifier.class_gradient = counted_class


@contextlib.contextmanager
def _input_gradients_only(model):
    """Freeze the model's parameters for the block (nothing accumulates in them); restore them and train/eval modes after."""
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    modes = [mod.training for mod in model.modules()]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, r in zip(params, req):
            p.requires_grad_(r)
        for mod, t in zip(model.modules(), modes):
            mod.training = t


def _keep_worse(best, best_loss, best_wrong, adv, loss, wrong, att):
    """Per sample, the worse of the kept point and adv: misclassified beats correct, then the higher loss (ties: adv)."""
    if best is None:
        return adv, loss, wrong
    better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss >= best_loss))
    for m in att:
        best[m] = torch.where(better.view(-1, *([1] * (adv[m].dim() - 1))), adv[m], best[m])
    return best, torch.where(better, loss, best_loss), best_wrong | wrong


class ARTAttack:
    """One ART evasion attack run through the packed adapter; subclasses build and call it."""

    name = "art"
    multilabel_ok = True
    keep_clean_if_wrong = False

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

    def _clip(self, packing, threat, batch):
        """Per-feature (lo, hi) clip values for ART, in z coordinates."""
        return bounds(packing, threat)

    def _estimator(self, adapter, packing):
        """The module ART wraps and its per-sample input shape."""
        return adapter, (packing.dim,)

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

    def _check_call(self, threat, att, task, target, rng) -> tuple[str, int]:
        """Refuse an unbounded threat, a multilabel task this attack cannot serve, a bad threat or rng; (norm, batch)."""
        if any(threat.budgets[m].norm == "none" for m in att):
            raise UserError(f"{self.name}: threat {threat.name!r} is unbounded (norm none); ART's attacks need an eps-ball")
        if task.kind == "multilabel" and not self.multilabel_ok:
            raise UserError(
                f"{self.name}: refuses multilabel task: ART's {self.art_name} decides which samples to attack and "
                "which results to keep by argmax(prediction) == argmax(label), a multiclass rule; use art.pgd or pgd"
            )
        norm = self._check_threat(threat, att)
        batch = int(target.shape[0])
        if len(rng.ids) != batch:
            raise ValueError(f"{self.name}: SampleRNG has {len(rng.ids)} ids for a batch of {batch}")
        return norm, batch

    def _classifier(self, classifier_cls, adapter, packing, threat, task, batch, device, counts):
        """ART's PyTorchClassifier around the adapter, with its gradient calls counted into ``counts``."""
        loss = nn.CrossEntropyLoss(reduction="sum") if task.kind == "multiclass" else MultiLabelBCE("sum")
        lo, hi = self._clip(packing, threat, batch)
        module, shape = self._estimator(adapter, packing)
        classifier = classifier_cls(
            model=module, loss=loss, input_shape=shape, nb_classes=task.num_classes,
            clip_values=(lo.numpy(), hi.numpy()), use_amp=False,
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        _count_gradients(classifier, counts, task.num_classes)
        return classifier

    def _restart(self, classifier, z, y, packing, threat, att, batch, norm, rng, restart, clean):
        """One ART run under restart's seed, unpacked and projected: {attacked modality: adversarial input}."""
        with _GlobalRNG(derive_seed(rng.seed, rng.key, *rng.ids, restart)):
            z_adv = self._run(classifier, z, y, packing, threat, att, batch, norm)
        device = clean[att[0]].device
        adv_all = packing.unpack(torch.from_numpy(np.asarray(z_adv, dtype=np.float32)).to(device))
        return {m: threat.budgets[m].project(adv_all[m].to(clean[m].dtype), clean[m]) for m in att}

    def _score(self, model, inputs, adv, target, threat, task, counts):
        """Per-sample loss and misclassification of adv (one counted forward pass); NumericalError if a loss is not finite."""
        with torch.no_grad():
            logits = model({**inputs, **adv})
            counts["forward_samples"] += int(target.shape[0])
            l = task.loss(logits, target)
            wrong = ~task.correct(logits, target)
        if not torch.isfinite(l).all():
            raise NumericalError(
                f"{self.name}: the model's loss was NaN or inf under threat {threat.name!r}; "
                "check the model for overflow"
            )
        return l, wrong

    def perturb(self, model, inputs, target, threat, task, rng):
        att = threat.attacked(inputs, self.name)
        out = dict(inputs)
        if not att:
            return out
        norm, batch = self._check_call(threat, att, task, target, rng)

        from art.estimators.classification import PyTorchClassifier

        device = inputs[att[0]].device
        clean = {m: x.detach() for m, x in inputs.items()}
        packing, fixed = self._packing(clean, threat, att)
        adapter = PackedAdapter(model, packing, fixed).to(device)
        counts = {"forward_samples": 0, "backward_samples": 0}
        hook = adapter.register_forward_hook(lambda mod, args, res: counts.__setitem__(
            "forward_samples", counts["forward_samples"] + int(args[0].shape[0])))
        y = _art_labels(target, task)
        z = packing.pack(clean).detach().cpu().numpy().astype(np.float32)
        try:
            with _input_gradients_only(model):
                classifier = self._classifier(PyTorchClassifier, adapter, packing, threat, task, batch, device, counts)
                best = best_loss = best_wrong = None
                for restart in range(self.restarts):
                    adv = self._restart(classifier, z, y, packing, threat, att, batch, norm, rng, restart, clean)
                    if self.restarts == 1:
                        best = adv
                        break
                    l, wrong = self._score(model, inputs, adv, target, threat, task, counts)
                    best, best_loss, best_wrong = _keep_worse(best, best_loss, best_wrong, adv, l, wrong, att)
        finally:
            hook.remove()
        if self.keep_clean_if_wrong:  # avharness, not ART, decides which samples are already broken
            with torch.no_grad():
                wrong = ~task.correct(model(inputs), target)
                counts["forward_samples"] += batch
            for m in att:
                best[m] = torch.where(wrong.view(-1, *([1] * (best[m].dim() - 1))), clean[m], best[m])
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


class _ScaledSubset:
    """Packs only the attacked modalities, in scaled coordinates (z_m = x_m * eps_ref / eps_m), with a
    row-key column so that ART's per-sample and subset calls see the right held-fixed modalities; the
    row-key column is clipped to [-0.5, N - 0.5] * key (a finite box: C&W's tanh map and DeepFool's
    range-scaled steps need finite clip values)."""

    multilabel_ok = False
    finite_bounds = True
    norms = ("linf", "l2")

    def _packing(self, inputs, threat, att):
        ref = max(threat.budgets[m].eps for m in att)
        scales = {m: threat.budgets[m].eps / ref for m in att}
        packing = Packing.of(inputs, att, scales=scales, row_key=1000.0 * ref)
        return packing, {m: x for m, x in inputs.items() if m not in att}

    def _clip(self, packing, threat, batch):
        lo, hi = bounds(packing, threat)
        lo[-1], hi[-1] = -0.5 * packing.row_key, (batch - 0.5) * packing.row_key
        return lo, hi

    def _check_threat(self, threat, att):
        norm = ARTAttack._check_threat(self, threat, att)
        if norm not in self.norms:
            raise UserError(
                f"{self.name}: threat {threat.name!r} uses norm {norm!r}; this ART attack supports only "
                f"{' and '.join(self.norms)} here: use art.pgd or the native pgd"
            )
        if self.finite_bounds:
            bad = [m for m in att if not all(math.isfinite(b) for b in threat.budgets[m].bounds)]
            if bad:
                raise UserError(
                    f"{self.name}: threat {threat.name!r} gives {bad} infinite bounds; ART's {self.art_name} needs "
                    "finite bounds (clip values): set bounds for those modalities"
                )
        return norm

    @staticmethod
    def _ref(threat, att):
        return float(max(threat.budgets[m].eps for m in att))


class ARTCW(_ScaledSubset, ARTAttack):
    """C&W then project: ART's minimum-norm C&W (L2 for l2 threats, LInf for linf threats), whose
    result is then projected onto each modality's eps-ball with ``Budget.project``."""

    name = "art.cw"
    #: l2 refused: ART's C&W L2 scales its gradient by the clip range, which moves the row-key column
    norms = ("linf",)

    def __init__(self, steps: int, confidence: float, learning_rate: float, binary_search_steps: int):
        super().__init__(steps)
        self.confidence = confidence
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps

    @property
    def art_name(self):
        return "Carlini & Wagner"

    def __repr__(self):
        return (f"ARTCW(steps={self.steps}, confidence={self.confidence:g}, learning_rate={self.learning_rate:g}, "
                f"binary_search_steps={self.binary_search_steps})")

    def _run(self, classifier, z, y, packing, threat, att, batch, norm):
        from art.attacks.evasion import CarliniL2Method, CarliniLInfMethod

        if norm == "l2":
            attack = CarliniL2Method(
                classifier, confidence=self.confidence, targeted=False, learning_rate=self.learning_rate,
                binary_search_steps=self.binary_search_steps, max_iter=self.steps, batch_size=batch, verbose=False,
            )
        else:  # C&W LInf has no binary search: it searches its constant by doubling and shrinks tau
            attack = CarliniLInfMethod(
                classifier, confidence=self.confidence, targeted=False, learning_rate=self.learning_rate,
                max_iter=self.steps, batch_size=batch, verbose=False,
            )
        return attack.generate(z, y=y)


class ARTDeepFool(_ScaledSubset, ARTAttack):
    """DeepFool then project. ART's DeepFool ignores y and attacks the predicted class, so samples the
    model already gets wrong (``task.correct``) are returned clean."""

    name, art_name = "art.deepfool", "DeepFool"
    keep_clean_if_wrong = True

    def __init__(self, steps: int, overshoot: float):
        super().__init__(steps)
        self.overshoot = overshoot

    def __repr__(self):
        return f"ARTDeepFool(steps={self.steps}, overshoot={self.overshoot:g})"

    def _run(self, classifier, z, y, packing, threat, att, batch, norm):
        from art.attacks.evasion import DeepFool

        attack = DeepFool(classifier, max_iter=self.steps, epsilon=self.overshoot, batch_size=batch, verbose=False)
        return attack.generate(z, y=y)


class ARTSquare(_ScaledSubset, ARTAttack):
    """ART's Square attack (score-based, gradient-free). ART's Square only takes images, so the packed
    vector (attacked modalities + row key) is zero-padded to a square (N, 1, S, S) "image"; the padding
    is ignored by the model (the adapter reads the first D features)."""

    name, art_name = "art.square", "SquareAttack"
    finite_bounds = False
    #: l2 refused: ART's l2 Square divides by zero (NaN) on the padded (N, 1, S, S) packing
    norms = ("linf",)

    def __init__(self, queries: int, p_init: float):
        super().__init__(queries)
        self.queries = queries
        self.p_init = p_init
        #: read by the validity checks (gradient_free_not_stronger)
        self.gradient_free = True
        self.iterative = True

    def __repr__(self):
        return f"ARTSquare(queries={self.queries}, p_init={self.p_init:g})"

    def _side(self, dim):
        side = max(10, math.isqrt(dim - 1) + 1)
        # ART draws randint(0, side - tile): the first tile must be smaller than the side
        while int(round(math.sqrt(self.p_init * side * side))) >= side:
            side += 1
        return side

    def _clip(self, packing, threat, batch):
        lo, hi = super()._clip(packing, threat, batch)
        lo[torch.isinf(lo)], hi[torch.isinf(hi)] = -1e30, 1e30
        pad = self._side(packing.dim) ** 2 - packing.dim
        lo = torch.cat([lo, torch.full((pad,), -1.0)]).reshape(1, *([self._side(packing.dim)] * 2))
        hi = torch.cat([hi, torch.full((pad,), 1.0)]).reshape(1, *([self._side(packing.dim)] * 2))
        return lo, hi

    def _estimator(self, adapter, packing):
        side = self._side(packing.dim)
        return _Unpad(adapter, packing.dim), (1, side, side)

    def _run(self, classifier, z, y, packing, threat, att, batch, norm):
        from art.attacks.evasion import SquareAttack

        side = self._side(packing.dim)
        img = np.zeros((batch, side * side), dtype=np.float32)
        img[:, : packing.dim] = z
        attack = SquareAttack(
            classifier, norm=np.inf if norm == "linf" else 2, max_iter=self.queries, eps=self._ref(threat, att),
            p_init=self.p_init, nb_restarts=1, batch_size=batch, verbose=False,
        )
        out = attack.generate(img.reshape(batch, 1, side, side), y=y)
        return out.reshape(batch, -1)[:, : packing.dim]


class _Unpad(nn.Module):
    """(N, 1, S, S) -> the first ``dim`` features -> the packed adapter."""

    def __init__(self, adapter: nn.Module, dim: int):
        super().__init__()
        self.adapter = adapter
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(x.flatten(1)[:, : self.dim])


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


def _check_nonneg(name, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise UserError(f"{name}: {key} must be a finite number >= 0, got {value!r}")


def build_art_cw(steps: int = 20, confidence: float = 0.0, learning_rate: float = 0.01,
                 binary_search_steps: int = 5) -> ARTCW:
    """C&W then project: ART's Carlini & Wagner (L2 for an l2 threat on one modality, LInf for linf
    threats), a minimum-norm attack whose result is projected onto each modality's eps-ball and bounds
    afterwards; multiclass only (refuses multilabel).

    steps: optimiser iterations per constant (>= 1).
    confidence: margin C&W asks for (>= 0).
    learning_rate: initial learning rate (> 0).
    binary_search_steps: binary-search steps on the constant (>= 1; L2 only, C&W LInf doubles its constant).
    """
    _check_int("art.cw", "steps", steps)
    _check_nonneg("art.cw", "confidence", confidence)
    _check_pos("art.cw", "learning_rate", learning_rate)
    _check_int("art.cw", "binary_search_steps", binary_search_steps)
    return ARTCW(steps, float(confidence), float(learning_rate), binary_search_steps)


def build_art_deepfool(steps: int = 50, overshoot: float = 0.02) -> ARTDeepFool:
    """DeepFool then project: ART's DeepFool, projected onto each modality's eps-ball and bounds
    afterwards; samples the model already gets wrong are returned clean; multiclass only.

    steps: maximum DeepFool iterations (>= 1).
    overshoot: DeepFool's overshoot (>= 0).
    """
    _check_int("art.deepfool", "steps", steps)
    _check_nonneg("art.deepfool", "overshoot", overshoot)
    return ARTDeepFool(steps, float(overshoot))


def build_art_square(queries: int = 1000, p_init: float = 0.8) -> ARTSquare:
    """ART's Square attack (gradient-free, score-based, linf or l2); multiclass only.

    queries: iterations, one model query per still-robust sample each (>= 1).
    p_init: initial fraction of features changed per square, in (0, 1).
    """
    _check_int("art.square", "queries", queries)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init < 1:
        raise UserError(f"art.square: p_init must be a number in (0, 1), got {p_init!r}")
    return ARTSquare(queries, float(p_init))


def register_attacks(register):
    register("art.pgd", build_art_pgd)
    register("art.apgd", build_art_apgd)
    register("art.cw", build_art_cw)
    register("art.deepfool", build_art_deepfool)
    register("art.square", build_art_square)
