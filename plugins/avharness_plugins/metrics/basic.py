"""Built-in metrics: accuracy, attack success rate and perturbation statistics.

Each reads only the ``Evidence`` of one cell. Correctness is the task's rule (``Task.correct``:
argmax for multiclass, exact match of the thresholded labels for multilabel), and robustness is
``Evidence.robust_correct``: correct on the clean input AND on the adversarial one, so robust
accuracy never exceeds clean accuracy, sample by sample.

Empty sets: a fraction over no samples (an empty cell, or no clean-correct sample for the attack
success rate) is reported as 0.0, never NaN, so every value is a finite number that JSON and
comparisons handle. The one exception is the SNR, which is undefined when no sample was perturbed;
it is then NaN (see ``Perturbation``).
"""

from __future__ import annotations

import math

import torch

from avharness import Evidence


def _fraction(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else 0.0


class Accuracy:
    """clean_accuracy and robust_accuracy: the share of samples correct (and robust)."""

    higher_is_better = {"clean_accuracy": True, "robust_accuracy": True}

    def compute(self, ev: Evidence) -> dict[str, float]:
        return {"clean_accuracy": _fraction(ev.clean_correct), "robust_accuracy": _fraction(ev.robust_correct)}

    def proportions(self, ev: Evidence) -> dict[str, tuple[int, int]]:
        n = int(ev.clean_correct.numel())
        return {"clean_accuracy": (int(ev.clean_correct.sum()), n), "robust_accuracy": (int(ev.robust_correct.sum()), n)}


class AttackSuccessRate:
    """attack_success_rate: among the samples the success rule applies to, the share it broke.

    The rule is the suite's ``eval.success`` (``Evidence.success``): for multiclass, samples
    correct when clean that the attack made wrong (samples already wrong are left out: there is
    nothing to attack); for multi-label, a label flip, a changed top-1 label or an AP drop. With no
    attackable sample the rate is 0.0 (read it beside clean_accuracy). Lower is better: directions
    are the evaluated model's view (a regression gate fails a model that lets more attacks through).
    """

    higher_is_better = {"attack_success_rate": False}

    def compute(self, ev: Evidence) -> dict[str, float]:
        return {"attack_success_rate": _fraction(ev.success[ev.attackable])}

    def proportions(self, ev: Evidence) -> dict[str, tuple[int, int]]:
        return {"attack_success_rate": (int(ev.success[ev.attackable].sum()), int(ev.attackable.sum()))}


# Directions are the evaluated model's view, as every metric's (what a regression gate reads): a
# model that forces larger, more perceptible perturbations (lower SNR) is the more robust one, as in
# minimum-norm attack papers. At a fixed budget these are diagnostics of what the attack used,
# not robustness scores: a robustness verdict comes from the accuracy metrics.
_SUFFIX_DIRECTION = {
    "_linf_mean": True, "_linf_max": True, "_l2_mean": True, "_l2_max": True, "_snr_db_mean": False,
}


class _Directions(dict):
    """``higher_is_better`` for keys named after modalities known only at compute time.

    Holds the keys for "audio" and "video" from the start and gains every key ``compute`` emits
    (so a plain ``dict.update`` after ``compute`` copies them all); any other
    ``<modality><suffix>`` key is answered by its suffix (item access, ``get`` and ``in``).
    """

    @staticmethod
    def _by_suffix(key):
        if isinstance(key, str):
            for suffix, direction in _SUFFIX_DIRECTION.items():
                if key.endswith(suffix) and len(key) > len(suffix):
                    return direction
        return None

    def __missing__(self, key):
        direction = self._by_suffix(key)
        if direction is None:
            raise KeyError(key)
        return direction

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key):
        return dict.__contains__(self, key) or self._by_suffix(key) is not None


class Perturbation:
    """Size of the achieved perturbation, per attacked modality, in the model's input domain.

    For each modality m in ``ev.perturbation`` (the attacked ones):

    - ``m_linf_mean``, ``m_linf_max``: mean and max over samples of max |delta|;
    - ``m_l2_mean``, ``m_l2_max``: mean and max over samples of the l2 norm of delta;
    - ``m_snr_db_mean``: mean over samples of 10*log10(|x|_2^2 / |delta|_2^2), the
      signal-to-perturbation ratio of the input the model sees. Samples with a zero perturbation
      (infinite ratio) or a zero signal are left out; NaN if no sample remains.

    These live in the model's input domain: for the built-in audio features (normalised log-mel)
    the "SNR" is a ratio of feature energies, not an acoustic SNR of a waveform, and it depends
    on the normalisation (a zero-mean feature has little "signal").
    """

    def __init__(self):
        self.higher_is_better = _Directions(
            {f"{m}{suffix}": d for m in ("audio", "video") for suffix, d in _SUFFIX_DIRECTION.items()}
        )

    def compute(self, ev: Evidence) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in sorted(ev.perturbation):
            p = ev.perturbation[m]
            linf, l2, signal = (p[k].double() for k in ("linf", "l2", "signal_l2"))
            out[f"{m}_linf_mean"] = float(linf.mean()) if linf.numel() else 0.0
            out[f"{m}_linf_max"] = float(linf.max()) if linf.numel() else 0.0
            out[f"{m}_l2_mean"] = float(l2.mean()) if l2.numel() else 0.0
            out[f"{m}_l2_max"] = float(l2.max()) if l2.numel() else 0.0
            keep = (l2 > 0) & (signal > 0)
            snr = 20 * torch.log10(signal[keep] / l2[keep])  # 10*log10 of the squared ratio
            out[f"{m}_snr_db_mean"] = float(snr.mean()) if snr.numel() else math.nan
        for key in out:
            self.higher_is_better[key] = self.higher_is_better[key]
        return out


def build_accuracy() -> Accuracy:
    return Accuracy()


def build_attack_success_rate() -> AttackSuccessRate:
    return AttackSuccessRate()


def build_perturbation() -> Perturbation:
    return Perturbation()


def register_metrics(register):
    register("accuracy", build_accuracy)
    register("attack_success_rate", build_attack_success_rate)
    register("perturbation", build_perturbation)
