"""foolbox 3.3.4 as an attack backend: ``foolbox.linf_pgd``, ``foolbox.l2_pgd``, ``foolbox.fgsm``,
``foolbox.deepfool`` and ``foolbox.cw``.

foolbox attacks one tensor with one scalar ``[lo, hi]`` and decides success by argmax (docs/backends.md §3).
avharness adapts it as follows:

- **One modality per threat.** Each batch gets a closure (``_Closure``), a small ``nn.Module`` that
  takes the attacked modality's tensor and calls the avharness model with every other modality
  fixed to the batch's clean tensors; ``foolbox.PyTorchModel(closure, bounds=<that modality's
  Budget.bounds>)`` wraps it. A threat that attacks two modalities (eps > 0 on both) is refused
  with a ``UserError`` pointing to the native ``pgd`` or ``art.pgd``.
- **Success is avharness's rule.** foolbox is handed a ``Misclassification`` subclass whose test is
  ``not task.correct(logits, target)`` (multilabel: any label flipped at the task's threshold).
  foolbox's own success flag is discarded: the runner recomputes correctness.
- **Multilabel.** The gradient attacks (PGDs, FGSM) are subclassed with a BCE-with-logits (sum)
  loss. DeepFool and C&W hard-code argmax/one-hot labels and refuse multilabel tasks.
- **Budgets.** Fixed-eps attacks get ``epsilons=eps``; the minimum-norm attacks (DeepFool, C&W)
  are unbounded and are called with ``epsilons=[eps]``, whose *clipped* output foolbox 3.3.4 scales
  back onto the eps-ball (``distance.clip_perturbation``). The clipped output is used and then
  re-projected with ``threat.project`` anyway, as a safety net.
- **Norms.** ``foolbox.linf_pgd`` needs a linf budget, ``foolbox.l2_pgd`` and ``foolbox.cw`` an l2
  one; ``foolbox.fgsm`` (FGSM / FGM) and ``foolbox.deepfool`` pick the foolbox class by the norm.
- **Seeding.** foolbox's random start draws from torch's global RNG. Inside ``perturb`` the global
  torch and numpy RNGs are seeded from ``derive_seed(rng.seed, rng.key, *rng.ids)`` and restored
  afterwards, so a batch gives the same output for the same seed (but, unlike native ``pgd``, a
  sample's random start depends on the whole batch's ids).
- **No side effects.** eps = 0 everywhere returns the inputs without calling foolbox; unattacked
  modalities come back as the caller's own tensors; the model's parameters are set to
  ``requires_grad=False`` for the call (eagerpy calls ``loss.backward()``, which would otherwise
  leave ``.grad`` on them) and restored afterwards.

``perturb`` returns ``AttackOutput`` with ``forward_samples`` / ``backward_samples`` counted on the
closure (they include foolbox's own success checks).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avharness import AttackOutput, NumericalError, UserError, derive_seed

_JOINT_HINT = "use the native `pgd` or `art.pgd` for joint threats"


# --- foolbox pieces (imported lazily: foolbox is an optional backend) --------------------------


def _fb():
    try:
        import eagerpy as ep
        import foolbox as fb
    except ImportError as exc:  # pragma: no cover - foolbox is a declared dependency
        raise UserError(f"foolbox attacks need foolbox and eagerpy installed ({exc})") from exc
    return fb, ep


def _bce_loss_fn(self, model, labels):
    """Replacement ``get_loss_fn`` for multilabel tasks: BCE with logits, summed over the batch."""
    _, ep = _fb()

    def loss_fn(inputs):
        logits = model(inputs)
        return ep.astensor(F.binary_cross_entropy_with_logits(logits.raw, labels.raw.to(logits.raw.dtype), reduction="sum"))

    return loss_fn


_MULTILABEL_CLASSES: dict = {}


def _multilabel(cls):
    """A subclass of a foolbox gradient attack that ascends the BCE loss (cached per class)."""
    if cls not in _MULTILABEL_CLASSES:
        _MULTILABEL_CLASSES[cls] = type(f"MultiLabel{cls.__name__}", (cls,), {"get_loss_fn": _bce_loss_fn})
    return _MULTILABEL_CLASSES[cls]


def _criterion(target: torch.Tensor, task):
    """A ``foolbox.criteria.Misclassification`` deciding success by ``not task.correct``."""
    fb, ep = _fb()

    class TaskMisclassification(fb.criteria.Misclassification):
        def __call__(self, perturbed, outputs):
            outputs_, restore_type = ep.astensor_(outputs)
            del perturbed, outputs
            return restore_type(ep.astensor(~task.correct(outputs_.raw, self.labels.raw)))

    return TaskMisclassification(target)


class _Closure(nn.Module):
    """The avharness model as a one-tensor classifier: ``forward(x)`` attacks ``modality`` only."""

    def __init__(self, model, inputs: dict, modality: str):
        super().__init__()
        self.model = model
        self.fixed = {m: x.detach() for m, x in inputs.items() if m != modality}
        self.modality = modality
        self.training = False  # the model itself is in eval mode (the Attack contract); don't recurse
        self.forward_samples = 0
        self.backward_samples = 0

    def _count_backward(self, grad):
        self.backward_samples += int(grad.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_samples += int(x.shape[0])
        if x.requires_grad:
            x.register_hook(self._count_backward)
        return self.model({**self.fixed, self.modality: x})


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's and numpy's global RNGs; restore both afterwards."""
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(seed)
            np.random.seed(seed % (1 << 32))
            yield
    finally:
        np.random.set_state(np_state)


@contextmanager
def _frozen_params(model: nn.Module):
    """Turn off ``requires_grad`` on the model's parameters for the call; restore the flags after."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# --- the attack ---------------------------------------------------------------------------------


class FoolboxAttack:
    """One foolbox attack run per batch on the single attacked modality, re-projected afterwards.

    ``make(norm, multilabel)`` builds the foolbox attack; ``norms`` are the budgets it accepts;
    ``minimum_norm`` attacks are called with ``epsilons=[eps]`` (and refuse multilabel tasks).
    """

    def __init__(self, name: str, make, norms: tuple[str, ...], minimum_norm: bool, iterative: bool, params: dict):
        self.name = name
        self.make = make
        self.norms = norms
        self.minimum_norm = minimum_norm
        #: read by the validity checks: an iterative attack should beat a single-step one
        self.iterative = iterative
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name!r}{', ' if args else ''}{args})"

    def _check(self, threat, task, attacked):
        if len(attacked) > 1:
            raise UserError(
                f"{self.name}: threat {threat.name!r} attacks {len(attacked)} modalities ({', '.join(attacked)}) "
                f"but foolbox takes one tensor with scalar bounds; {_JOINT_HINT}"
            )
        (m,) = attacked
        norm = threat.budgets[m].norm
        if norm not in self.norms:
            raise UserError(
                f"{self.name}: threat {threat.name!r} gives {m} a {norm} budget but this attack needs "
                f"{' or '.join(self.norms)}; pick a matching foolbox attack or threat"
            )
        if self.minimum_norm and task.kind != "multiclass":
            raise UserError(
                f"{self.name}: foolbox's minimum-norm attacks decide success by argmax and cannot attack a "
                f"{task.kind} task; use foolbox.linf_pgd, foolbox.l2_pgd, foolbox.fgsm or the native pgd"
            )

    def perturb(self, model, inputs, target, threat, task, rng):
        attacked = threat.attacked(inputs, self.name)
        out = dict(inputs)
        if not attacked:
            return AttackOutput(out, stats={"forward_samples": 0, "backward_samples": 0})
        self._check(threat, task, attacked)
        batch = int(target.shape[0])
        if len(rng.ids) != batch:
            raise ValueError(f"{self.name}: SampleRNG has {len(rng.ids)} ids for a batch of {batch}")

        (m,) = attacked
        budget = threat.budgets[m]
        x = inputs[m].detach()
        lo, hi = budget.bounds
        if x.min().item() < lo or x.max().item() > hi:
            raise UserError(
                f"{self.name}: clean {m} lies outside its bounds [{lo:g}, {hi:g}] (min {x.min().item():.4g}, "
                f"max {x.max().item():.4g}); fix the dataset or the threat's bounds"
            )

        fb, _ = _fb()
        closure = _Closure(model, inputs, m)
        fmodel = fb.PyTorchModel(closure, bounds=(float(lo), float(hi)), device=x.device)
        attack = self.make(budget.norm, task.kind == "multilabel")
        labels = target.detach()
        if task.kind == "multiclass":
            labels = labels.long()
        criterion = _criterion(labels, task)
        seed = derive_seed(rng.seed, rng.key, *rng.ids)
        with _seeded(seed, x.device), _frozen_params(model):
            if self.minimum_norm:
                _, clipped, _ = attack(fmodel, x, criterion, epsilons=[budget.eps])
                clipped = clipped[0]
            else:
                _, clipped, _ = attack(fmodel, x, criterion, epsilons=budget.eps)
        adv = clipped.detach().to(x.dtype)
        if not torch.isfinite(adv).all():
            raise NumericalError(
                f"{self.name}: foolbox returned NaN or inf for {m} under threat {threat.name!r}; "
                "check the model for overflow (its logits must be finite inside the input bounds)"
            )
        out[m] = budget.project(adv, x)  # safety net: foolbox clips, avharness guarantees
        return AttackOutput(out, stats={"forward_samples": float(closure.forward_samples),
                                        "backward_samples": float(closure.backward_samples)})


# --- factories ----------------------------------------------------------------------------------


def _check_int(name: str, key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}: {key} must be an integer >= {minimum}, got {value!r}")


def _check_rel_stepsize(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"{name}: rel_stepsize must be a number > 0 (a fraction of eps), got {value!r}")


def _check_bool(name: str, key: str, value) -> None:
    if not isinstance(value, bool):
        raise UserError(f"{name}: {key} must be true or false, got {value!r}")


def _pgd(name: str, norm: str, steps: int, rel_stepsize: float, random_start: bool) -> FoolboxAttack:
    _check_int(name, "steps", steps)
    _check_rel_stepsize(name, rel_stepsize)
    _check_bool(name, "random_start", random_start)

    def make(budget_norm, multilabel):
        fb, _ = _fb()
        cls = fb.attacks.LinfPGD if budget_norm == "linf" else fb.attacks.L2PGD
        cls = _multilabel(cls) if multilabel else cls
        return cls(rel_stepsize=float(rel_stepsize), steps=steps, random_start=random_start)

    return FoolboxAttack(name, make, (norm,), minimum_norm=False, iterative=steps > 1,
                         params={"steps": steps, "rel_stepsize": float(rel_stepsize), "random_start": random_start})


def build_linf_pgd(steps: int = 10, rel_stepsize: float = 0.25, random_start: bool = True) -> FoolboxAttack:
    """foolbox ``LinfPGD`` on one modality (linf budgets only).

    steps: gradient steps (>= 1). rel_stepsize: step as a fraction of eps (> 0).
    random_start: start from a uniform random point of the ball (seeded per batch).
    """
    return _pgd("foolbox.linf_pgd", "linf", steps, rel_stepsize, random_start)


def build_l2_pgd(steps: int = 10, rel_stepsize: float = 0.25, random_start: bool = True) -> FoolboxAttack:
    """foolbox ``L2PGD`` on one modality (l2 budgets only); parameters as ``foolbox.linf_pgd``."""
    return _pgd("foolbox.l2_pgd", "l2", steps, rel_stepsize, random_start)


def build_fgsm() -> FoolboxAttack:
    """foolbox ``LinfFastGradientAttack`` (FGSM) for linf budgets, ``L2FastGradientAttack`` (FGM) for l2."""

    def make(norm, multilabel):
        fb, _ = _fb()
        cls = fb.attacks.LinfFastGradientAttack if norm == "linf" else fb.attacks.L2FastGradientAttack
        cls = _multilabel(cls) if multilabel else cls
        return cls(random_start=False)

    return FoolboxAttack("foolbox.fgsm", make, ("linf", "l2"), minimum_norm=False, iterative=False, params={})


def build_deepfool(steps: int = 50) -> FoolboxAttack:
    """foolbox ``LinfDeepFoolAttack`` / ``L2DeepFoolAttack`` (by the budget's norm), clipped to eps.

    steps: DeepFool iterations (>= 1). Multiclass tasks only.
    """
    _check_int("foolbox.deepfool", "steps", steps)

    def make(norm, multilabel):
        fb, _ = _fb()
        cls = fb.attacks.LinfDeepFoolAttack if norm == "linf" else fb.attacks.L2DeepFoolAttack
        return cls(steps=steps)

    return FoolboxAttack("foolbox.deepfool", make, ("linf", "l2"), minimum_norm=True, iterative=True,
                         params={"steps": steps})


def build_cw(steps: int = 100, binary_search_steps: int = 5) -> FoolboxAttack:
    """foolbox ``L2CarliniWagnerAttack``, clipped to eps (l2 budgets, multiclass tasks only).

    steps: optimisation steps per binary-search step (>= 1).
    binary_search_steps: searches over the trade-off constant (>= 1).
    """
    _check_int("foolbox.cw", "steps", steps)
    _check_int("foolbox.cw", "binary_search_steps", binary_search_steps)

    def make(norm, multilabel):
        fb, _ = _fb()
        return fb.attacks.L2CarliniWagnerAttack(binary_search_steps=binary_search_steps, steps=steps)

    return FoolboxAttack("foolbox.cw", make, ("l2",), minimum_norm=True, iterative=True,
                         params={"steps": steps, "binary_search_steps": binary_search_steps})


def register_attacks(register):
    register("foolbox.linf_pgd", build_linf_pgd)
    register("foolbox.l2_pgd", build_l2_pgd)
    register("foolbox.fgsm", build_fgsm)
    register("foolbox.deepfool", build_deepfool)
    register("foolbox.cw", build_cw)
