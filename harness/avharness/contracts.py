"""What attack, defense and metric plugins return from their factories.

Factories are plain callables registered under a name; their keyword arguments are the plugin's
parameters in a suite (the suite loader checks names and simple types against the signature).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .data import Dataset
from .model import AVModel
from .seeding import SampleRNG
from .task import Task
from .threat import ThreatModel


class AttackStats:
    """The statistic names an attack may report in ``AttackOutput.stats`` that the core reads.

    Each is a per-batch count the executor sums over a cell's batches into ``cell["attack_stats"]``.
    The validity checks and the report read these names, and only these: an attack is free to add
    others (they are stored and shown, not interpreted).
    """

    #: samples passed forward / backward through the model (cost, in samples)
    FORWARD = "forward_samples"
    BACKWARD = "backward_samples"
    #: of the samples the attack did not break, how many; and how many of those had a loss still
    #: rising at the end (the ``loss_converged`` check: too few steps overstate robustness)
    UNBROKEN_AT_END = "unbroken_at_end"
    UNBROKEN_RISING_AT_END = "unbroken_loss_rising_at_end"
    #: samples a cascade's gradient-free stage broke after every gradient stage had failed on them
    #: (the ``gradient_free_stage_breaks`` check: a sign of gradient masking)
    GRADIENT_FREE_BROKE = "gradient_free_broke"
    #: suffix of a cascade stage's count of samples still robust after it: ``<stage>/robust_after``
    STAGE_ROBUST_SUFFIX = "/robust_after"

    @classmethod
    def stage_robust(cls, stage: str) -> str:
        return f"{stage}{cls.STAGE_ROBUST_SUFFIX}"


class AttackOutput(dict):
    """What ``perturb`` may return instead of a bare dict, to report what the attack spent or saw.

    It is the dict of adversarial inputs itself (so callers that index it keep working), plus
    ``stats``: per-batch counts (names the core reads are in ``AttackStats``; others are kept as
    they are) that the executor sums over the batches of a cell into ``cell["attack_stats"]``.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], stats: dict[str, float] | None = None):
        super().__init__(inputs)
        self.stats = dict(stats or {})

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return dict(self)


@runtime_checkable
class Attack(Protocol):
    def perturb(
        self,
        model: AVModel,
        inputs: dict[str, torch.Tensor],
        target: torch.Tensor,
        threat: ThreatModel,
        task: Task,
        rng: SampleRNG,
    ) -> dict[str, torch.Tensor] | AttackOutput:
        """Adversarial inputs for every modality (unattacked ones returned unchanged).

        Must keep each attacked modality inside its budget and bounds, must not modify ``inputs``,
        and must return ``inputs`` unchanged for eps = 0. The model is in eval mode.

        An attack that must be fitted first (a universal perturbation) also defines
        ``prepare(model, data, threat, task, eval_split) -> Attack``; the runner calls it once per
        (model, threat) before the cell's batches and attacks with what it returns.
        """
        ...


@dataclass
class FitContext:
    """What the runner hands a defense: where to train, its seed and a progress reporter."""

    device: torch.device
    seed: int
    #: progress(description, total) -> advance(n=1) callable
    progress: Callable[[str, int], Callable[..., None]] = lambda desc, total: (lambda n=1: None)
    log: Callable[[str], None] = lambda msg: None


@runtime_checkable
class Defense(Protocol):
    def fit(self, model: AVModel, data: Dataset, ctx: FitContext) -> dict:
        """Train ``model`` in place; return training facts (epochs, wall time, passes, losses)."""
        ...


@dataclass
class Evidence:
    """What a metric sees of one cell: per-sample tensors on the CPU, in the dataset's order.

    ``perturbation[modality]`` holds per-sample ``linf``, ``l2`` (of the achieved perturbation) and
    ``signal_l2`` (of the clean input), for the attacked modalities only.
    """

    task: Task
    ids: list[str]
    target: torch.Tensor
    clean_logits: torch.Tensor
    adv_logits: torch.Tensor
    threat: ThreatModel
    perturbation: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: when the attack succeeded on a sample (see ``avharness.success``): "default" is the task's
    #: rule (multiclass: correct when clean, wrong under attack; multi-label: any label flipped)
    success_rule: str = "default"
    #: the AP drop that counts as a success under the ``ap_drop`` rule
    success_margin: float = 0.1

    @property
    def attackable(self) -> torch.Tensor:
        """Per-sample bool: the samples the success rule applies to."""
        return self._outcome()[0]

    @property
    def success(self) -> torch.Tensor:
        """Per-sample bool: the attack succeeded (always False where not attackable)."""
        return self._outcome()[1]

    def _outcome(self):
        if getattr(self, "_cached_outcome", None) is None:
            from .success import outcome

            self._cached_outcome = outcome(self.task, self.success_rule, self.success_margin,
                                           self.clean_logits, self.adv_logits, self.target)
        return self._cached_outcome

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.task.correct(self.clean_logits, self.target)

    @property
    def robust_correct(self) -> torch.Tensor:
        # The clean input lies in every eps-ball, so a sample wrong when clean is not robust.
        return self.clean_correct & self.task.correct(self.adv_logits, self.target)


@runtime_checkable
class Metric(Protocol):
    #: metric value name -> True when higher is better
    higher_is_better: dict[str, bool]
    #: optional: per task kind, the value the findings compare models by instead of robust
    #: accuracy, e.g. ``{"multilabel": {"value": "robust_map", "label": "robust mAP"}}``
    # headline: dict[str, dict[str, str]]

    def compute(self, ev: Evidence) -> dict[str, float]:
        """Scalar values, named as in ``higher_is_better``.

        A metric may also define ``details(ev) -> dict`` (JSON-able): a breakdown too big for
        scalars, e.g. per-class values, stored in the cell under ``details[<metric name>]``.

        Directions (``higher_is_better``) are read from the evaluated model's side: a regression
        gate (``avharness check``) fails a value that moved the worse way, so e.g. an attack's
        success rate is lower-is-better.

        Intervals (``avharness.stats``; the report shows a 95 % interval beside each value that
        has one). Two optional methods:

        - ``proportions(ev) -> {name: (k, n)}`` for values that are a share k / n of samples: the
          core puts a Wilson score interval on them;
        - ``bootstrap(ev, indices) -> {name: [value on resample i for each row i of indices]}``:
          ``indices`` is an int array [resamples, N] of sample positions drawn with replacement by
          the core (seeded by the suite seed and the sample ids, the same for every cell on the
          same samples). The core takes percentile intervals of the replicates and keeps them for
          paired comparisons between cells (a paired bootstrap of a difference). NaN is allowed.
        """
        ...


@dataclass
class ModelEvidence:
    """What a model-scope metric sees: one trained model and its latents on any split.

    ``latents(split)`` returns ``(latents, targets, ids)``: every named latent of ``model.embed``
    stacked over the split (the eval split limited as the suite says), on the CPU, computed once.
    """

    task: Task
    model: AVModel
    seed: int
    eval_split: str
    latents: Callable[[str], tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]]


@runtime_checkable
class ModelMetric(Protocol):
    """A metric of a trained model rather than of an attack cell (e.g. latent convexity, density).

    ``compute_model`` returns a JSON-able dict. Its optional ``per_class`` entry,
    ``{series name: {class index: value}}``, is what the report correlates (Spearman) with each
    class's robust-accuracy drop, to say whether the metric predicts robustness.
    """

    scope: str  # "model"
    higher_is_better: dict[str, bool]

    def compute_model(self, ev: ModelEvidence) -> dict: ...
