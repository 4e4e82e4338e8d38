"""Tagging metrics: mAP, mean ROC AUC and d′ (AudioSet style), and thresholded label flips.

Two metric plugins (definitions, and how the two modes compare, in ``docs/tagging_metrics.md``):

- ``tagging`` (parameter ``mode``: ``"sklearn"``, the default, or ``"gas_eval"``): per class c, the
  average precision and ROC AUC of ranking the N samples by their class-c score against the
  truth "sample has c"; averaged over classes into ``clean_map``/``robust_map`` and
  ``clean_mauc``/``robust_mauc``; d′ = √2·Φ⁻¹(mAUC). "robust" is the same on the adversarial
  logits of every sample (not only the attackable ones: mAP is a property of the whole ranking).
  ``details`` holds the per-class values.
- ``label_flips``: how many thresholded label decisions (logit > ``task.threshold``) an attack
  changed, and exact-match accuracy clean and under attack (multi-label only).

Scores. Multi-label: the logits themselves, in float64. AP and AUC depend only on the order of
the scores within a class, and the sigmoid is increasing, so logits give the same values as
probabilities in exact arithmetic, but the sigmoid saturates in floating point: large logits
map to the same probability (1.0 in float32 above ~17, in fp16 much sooner) and become ties. The
seed's AST evaluation under fp16 suffered exactly that (``docs/seed_code.md`` §6.3
footnote). Multiclass (e.g. Kinetics-Sounds, whose macro-mAP §2.4 asks for): the truth is the
one-hot target and the score of class c is log softmax_c(logits), which orders samples as the
softmax probability does (what sklearn's ``average_precision_score(y == c, proba[:, c])`` uses)
without its saturation. The raw logit is not used for multiclass: a softmax model's logits are
only defined up to a per-sample constant, so ranking samples by one raw logit column is
arbitrary.

Truth. A multi-label sample "has" class c when its target entry is non-zero (the seed's
gas_eval casts the truth to bool; soft targets such as 0.5 count as positive).

Modes. ``"gas_eval"`` is the seed's ``util_out.gas_eval`` (docs/seed_code.md §4.1), vectorised: per class,
samples sorted by score, descending; ties grouped (a cut-off only where the score strictly
decreases); AP = Σ_k precision_k·ΔTP_k / TP_total over the groups; AUC by the trapezoid rule on
the grouped ROC, normalised by 2·TP_total·FP_total; averaged over the classes with at least one
positive. ``"sklearn"`` calls ``sklearn.metrics.average_precision_score`` and ``roc_auc_score``
per class and averages over the classes with at least one positive AND one negative. Both
group ties the same way, so their per-class values agree (to rounding) wherever both are
defined; the modes differ only in which classes enter the mean: a class whose every sample is
positive enters gas_eval's mean (its AP is 1; its AUC is 0/0 = NaN, which makes gas_eval's mAUC
and d′ NaN, as in the seed) and is left out by sklearn's.

d′. √2·Φ⁻¹(mAUC) with the mAUC first clipped into [1e-6, 1 − 1e-6] (``AUC_CLIP``), so a perfect
(or perfectly inverted) ranker gets d′ = ±6.7224 instead of ±inf, which JSON cannot hold. A NaN
mAUC gives a NaN d′.

Empty sets: with no class to average (no sample, or no class with a positive), mAP, mAUC and d′
are NaN (the store writes null) and ``classes_scored`` is 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm

from avharness import Evidence, NumericalError, UserError

MODES = ("sklearn", "gas_eval")
#: mAUC is clipped into [AUC_CLIP, 1 - AUC_CLIP] before d′ = √2·Φ⁻¹(mAUC): |d′| <= 6.7224
AUC_CLIP = 1e-6
#: classes per block in the vectorised gas_eval (bounds memory at N x CHUNK per array)
CHUNK = 64


class MultiLabelOnly(UserError, ValueError):
    """A multi-label metric asked to score a multiclass task (a UserError: the CLI prints one line)."""


# --------------------------------------------------------------------------------------------
# per-class AP and AUC


def gas_eval_per_class(scores: np.ndarray, truth: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ``(ap, auc)`` of the seed's gas_eval for ``scores`` [N, C] and ``truth`` [N, C] (bool).

    Per class: sort the samples by score, descending; cut only where the score strictly decreases
    (a group of tied scores is one ROC point); TP_k, FP_k = cumulative counts at the k-th cut.
    AP = Σ_k (TP_k / (TP_k + FP_k)) · (TP_k − TP_{k−1}) / TP_total;
    AUC = Σ_k (TP_k + TP_{k−1}) · (FP_k − FP_{k−1}) / (2 · TP_total · FP_total).
    Computed per sample instead of per group: a positive contributes the precision at the end of
    its group (so AP is the mean of that over the positives), a negative contributes
    TP(end of its group) + TP(before its group), counted exactly in integers.
    AP is NaN for a class with no positive; AUC is NaN with no positive or no negative (0/0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    n, c = scores.shape
    ap = np.full(c, np.nan)
    auc = np.full(c, np.nan)
    if n == 0:
        return ap, auc
    rows = np.arange(n)[:, None]
    for c0 in range(0, c, chunk):
        s_in, y_in = scores[:, c0:c0 + chunk], truth[:, c0:c0 + chunk]
        order = np.argsort(-s_in, axis=0, kind="stable")
        s = np.take_along_axis(s_in, order, 0)
        y = np.take_along_axis(y_in, order, 0)
        tp = np.cumsum(y, axis=0, dtype=np.int64)
        end = np.ones_like(y)
        end[:-1] = s[:-1] != s[1:]  # sorted descending: != is "strictly decreases next"
        start = np.ones_like(y)
        start[1:] = end[:-1]
        group_end = np.minimum.accumulate(np.where(end, rows, n)[::-1], axis=0)[::-1]
        group_start = np.maximum.accumulate(np.where(start, rows, 0), axis=0)
        tp_end = np.take_along_axis(tp, group_end, 0)
        tp_before = np.take_along_axis(tp - y, group_start, 0)  # positives strictly above the group
        positives = tp[-1]
        negatives = n - positives
        precision_end = tp_end / (group_end + 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap_c = np.where(y, precision_end, 0.0).sum(0) / positives
            auc_num = np.where(y, 0, tp_end + tp_before).sum(0, dtype=np.int64)
            auc_c = auc_num / (2.0 * positives * negatives)
        ap[c0:c0 + chunk] = np.where(positives > 0, ap_c, np.nan)
        auc[c0:c0 + chunk] = np.where((positives > 0) & (negatives > 0), auc_c, np.nan)
    return ap, auc


class _SortedScores:
    """``gas_eval_per_class`` for many reweightings of the same samples, sorting only once.

    A bootstrap resample that draws sample i k times is the sample set with integer weight k on i:
    duplicates have equal scores, so they fall in one tie group, exactly as ``gas_eval_per_class``
    of the resampled rows would group them. Per class, positives contribute w·TP_end/W_end (W:
    cumulative weight) and negatives w·(TP_end + TP_before), as there.
    """

    def __init__(self, scores: np.ndarray, truth: np.ndarray):
        n = scores.shape[0]
        rows = np.arange(n)[:, None]
        self.order = np.argsort(-scores, axis=0, kind="stable")
        s = np.take_along_axis(scores, self.order, 0)
        # float32: weights are small integers (exact), and intervals need no more digits than that
        self.y = np.take_along_axis(truth, self.order, 0).astype(np.float32)
        end = np.ones(s.shape, dtype=bool)
        end[:-1] = s[:-1] != s[1:]
        start = np.ones(s.shape, dtype=bool)
        start[1:] = end[:-1]
        self.group_end = np.minimum.accumulate(np.where(end, rows, n)[::-1], axis=0)[::-1]
        self.group_start = np.maximum.accumulate(np.where(start, rows, 0), axis=0)
        self.ties = not end.all()  # float scores rarely tie: then every group is one sample

    def weighted(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-class ``(ap, auc)`` [R, C] for sample weights [R, N]; NaN as in gas_eval_per_class."""
        ws = weights[:, self.order]  # [R, N, C], in each class's score order
        wy = ws * self.y
        tp = np.cumsum(wy, axis=1)
        cnt = np.cumsum(ws, axis=1)
        r = len(weights)
        if self.ties:
            end = np.broadcast_to(self.group_end, (r, *self.group_end.shape))
            tp_end, cnt_end = np.take_along_axis(tp, end, 1), np.take_along_axis(cnt, end, 1)
            tp_before = np.take_along_axis(tp - wy, np.broadcast_to(self.group_start, end.shape), 1)
        else:
            tp_end, cnt_end, tp_before = tp, cnt, tp - wy
        positives = tp[:, -1, :]
        negatives = cnt[:, -1, :] - positives
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.where(wy > 0, wy * tp_end / cnt_end, 0.0).sum(1) / positives
            auc = ((ws - wy) * (tp_end + tp_before)).sum(1) / (2.0 * positives * negatives)
        ap = np.where(positives > 0, ap, np.nan)
        auc = np.where((positives > 0) & (negatives > 0), auc, np.nan)
        return ap, auc


def sklearn_per_class(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ``(ap, auc)`` from ``sklearn.metrics``: AP where the class has a positive, AUC
    where it has a positive and a negative, NaN elsewhere (sklearn refuses or warns there)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asfortranarray(scores, dtype=np.float64)
    truth = np.asfortranarray(truth, dtype=bool)
    n, c = scores.shape
    ap = np.full(c, np.nan)
    auc = np.full(c, np.nan)
    positives = truth.sum(0)
    for k in range(c):
        if positives[k] > 0:
            ap[k] = average_precision_score(truth[:, k], scores[:, k])
            if positives[k] < n:
                auc[k] = roc_auc_score(truth[:, k], scores[:, k])
    return ap, auc


def dprime(auc: float) -> float:
    """√2·Φ⁻¹(auc), with auc clipped into [AUC_CLIP, 1 − AUC_CLIP]; NaN stays NaN."""
    if math.isnan(auc):
        return math.nan
    return float(math.sqrt(2.0) * norm.ppf(min(max(auc, AUC_CLIP), 1.0 - AUC_CLIP)))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


# --------------------------------------------------------------------------------------------
# evidence -> scores and truth


def _summarise(clean_ap, robust_ap, clean_auc, robust_auc, scored) -> dict[str, float]:
    """mAP, mAUC, d′ (clean, robust) and their drops from per-class values, over the scored classes."""
    out = {
        "clean_map": _mean(clean_ap[scored]), "robust_map": _mean(robust_ap[scored]),
        "clean_mauc": _mean(clean_auc[scored]), "robust_mauc": _mean(robust_auc[scored]),
    }
    out["clean_dprime"], out["robust_dprime"] = dprime(out["clean_mauc"]), dprime(out["robust_mauc"])
    for v in ("map", "mauc", "dprime"):
        out[f"{v}_drop"] = out[f"clean_{v}"] - out[f"robust_{v}"]
    return out


def _scores_and_truth(ev: Evidence) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``(clean_scores, adv_scores, truth, score_name)`` as float64 / bool numpy arrays [N, C]."""
    task, c = ev.task, ev.task.num_classes
    clean, adv = ev.clean_logits.detach().double().cpu(), ev.adv_logits.detach().double().cpu()
    n = len(ev.target)
    for name, t in (("clean_logits", clean), ("adv_logits", adv)):
        if tuple(t.shape) != (n, c):
            raise ValueError(f"tagging: {name} has shape {tuple(t.shape)}, expected [{n}, {c}]")
        if not torch.isfinite(t).all():
            raise NumericalError(f"tagging: {name} contain NaN or inf")
    if task.kind == "multiclass":
        target = ev.target.detach().long().cpu()
        if target.dim() != 1:
            raise ValueError(f"tagging: a multiclass target is one class index per sample, got shape {tuple(target.shape)}")
        truth = torch.nn.functional.one_hot(target, c).bool() if n else torch.zeros(0, c, dtype=torch.bool)
        clean, adv = torch.log_softmax(clean, 1), torch.log_softmax(adv, 1)
        score_name = "log_softmax"
    else:
        target = ev.target.detach().cpu()
        if tuple(target.shape) != (n, c):
            raise ValueError(f"tagging: a multi-label target is [N, C] multi-hot, got shape {tuple(target.shape)}")
        truth = target != 0
        score_name = "logits"
    return clean.numpy(), adv.numpy(), truth.numpy(), score_name


def _class_keys(classes) -> list[str]:
    """Class names as JSON keys; "index:name" for all of them if two names collide."""
    names = [str(x) for x in classes]
    return names if len(set(names)) == len(names) else [f"{i}:{x}" for i, x in enumerate(names)]


# --------------------------------------------------------------------------------------------
# plugins


class Tagging:
    """mAP, mAUC and d′, clean and under attack, and their drops (see the module docstring).

    Values: ``clean_map``, ``robust_map``, ``clean_mauc``, ``robust_mauc``, ``clean_dprime``,
    ``robust_dprime`` (higher is better); ``map_drop``, ``mauc_drop``, ``dprime_drop`` = clean −
    robust (lower is better); ``classes_scored`` = the number of classes the means run over (the
    same for clean and robust: it depends on the truth only).

    Scores are float64 logits (multi-label) or log-softmax (multiclass), never probabilities:
    the ranking is what AP and AUC measure, and a saturated sigmoid would turn distinct logits
    into ties (docs/seed_code.md §6.3).

    Intervals: ``bootstrap`` recomputes every value on the core's resamples of the samples (clips),
    so the report gives each a percentile-bootstrap interval and compares cells with a paired
    bootstrap. With few positives per class, resampling duplicates positives and the bootstrap
    distribution of mAP sits above the estimate (AP rewards a duplicated well-ranked positive):
    an interval may then not contain the value; paired differences, sharing the resamples, are
    far less affected.
    """

    higher_is_better = {
        "clean_map": True, "robust_map": True, "map_drop": False,
        "clean_mauc": True, "robust_mauc": True, "mauc_drop": False,
        "clean_dprime": True, "robust_dprime": True, "dprime_drop": False,
        "classes_scored": True,
    }
    #: the value a report's findings compare models by, per task kind (read by the core; exact match
    #: of every tag, the core's robust accuracy, is near zero for any multi-label model)
    headline = {"multilabel": {"value": "robust_map", "label": "robust mAP"}}

    def __init__(self, mode: str = "sklearn"):
        if mode not in MODES:
            raise ValueError(f"tagging: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self._cache = None

    def _per_class(self, ev: Evidence) -> dict:
        key = (ev, ev.clean_logits, ev.adv_logits, ev.target, ev.task)
        if self._cache is not None and all(a is b for a, b in zip(self._cache[0], key)):
            return self._cache[1]
        clean, adv, truth, score_name = _scores_and_truth(ev)
        per_class = gas_eval_per_class if self.mode == "gas_eval" else sklearn_per_class
        clean_ap, clean_auc = per_class(clean, truth)
        robust_ap, robust_auc = per_class(adv, truth)
        positives = truth.sum(0).astype(np.int64)
        negatives = truth.shape[0] - positives
        scored = positives > 0 if self.mode == "gas_eval" else (positives > 0) & (negatives > 0)
        out = {"clean_ap": clean_ap, "robust_ap": robust_ap, "clean_auc": clean_auc, "robust_auc": robust_auc,
               "positives": positives, "scored": scored, "score": score_name}
        self._cache = (key, out)
        return out

    def compute(self, ev: Evidence) -> dict[str, float]:
        pc = self._per_class(ev)
        out = _summarise(pc["clean_ap"], pc["robust_ap"], pc["clean_auc"], pc["robust_auc"], pc["scored"])
        out["classes_scored"] = float(pc["scored"].sum())
        return out

    def bootstrap(self, ev: Evidence, indices: np.ndarray) -> dict[str, list[float]]:
        """Every value but ``classes_scored`` on each resample of the samples (rows of ``indices``).

        Per class on each resample: the vectorised AP / AUC (``gas_eval_per_class``; sklearn's
        per-class values are the same where both are defined, see the module docstring), then the
        mode's own rule for which classes enter the means, re-applied to the resample's truth. A
        resample duplicates samples, whose equal scores are ties: both definitions group ties.
        """
        clean, adv, truth, _ = _scores_and_truth(ev)
        n = truth.shape[0]
        names = [k for k in self.higher_is_better if k != "classes_scored"]
        out: dict[str, list[float]] = {k: [] for k in names}
        if n == 0:
            return {k: [math.nan] * len(indices) for k in names}
        # a resample is the samples weighted by how often it drew each: sort once, weigh per resample
        clean_sorted, adv_sorted = _SortedScores(clean, truth), _SortedScores(adv, truth)
        counts = np.stack([np.bincount(rows, minlength=n) for rows in indices]).astype(np.float32)
        positives_all = counts @ truth.astype(np.float64)  # [R, C]
        step = max(1, int(2_000_000 // max(1, truth.size)))  # bounds memory at ~16 MB per array
        for r0 in range(0, len(counts), step):
            w = counts[r0:r0 + step]
            clean_ap, clean_auc = clean_sorted.weighted(w)
            robust_ap, robust_auc = adv_sorted.weighted(w)
            for j in range(len(w)):
                positives = positives_all[r0 + j]
                scored = positives > 0 if self.mode == "gas_eval" else (positives > 0) & (positives < n)
                values = _summarise(clean_ap[j], robust_ap[j], clean_auc[j], robust_auc[j], scored)
                for k in names:
                    out[k].append(values[k])
        return out

    def details(self, ev: Evidence) -> dict:
        """``{"mode", "score", "classes_scored", "auc_clip", "per_class": {class: {...}}}``.

        Per class: ``clean_ap``, ``robust_ap``, ``ap_delta`` = clean_ap − robust_ap (the class's
        AP drop: over the scored classes its mean is ``map_drop``), ``clean_auc``, ``robust_auc``,
        ``positives`` (samples that have the class) and ``scored`` (whether it entered the means).
        AP is NaN for a class with no positive, AUC with no positive or no negative.
        """
        pc = self._per_class(ev)
        self._cache = None  # the runner asks compute() then details(): no need to hold the cell's tensors after
        per_class = {}
        for i, name in enumerate(_class_keys(ev.task.classes)):
            ca, ra = float(pc["clean_ap"][i]), float(pc["robust_ap"][i])
            per_class[name] = {
                "clean_ap": ca, "robust_ap": ra, "ap_delta": ca - ra,
                "clean_auc": float(pc["clean_auc"][i]), "robust_auc": float(pc["robust_auc"][i]),
                "positives": int(pc["positives"][i]), "scored": bool(pc["scored"][i]),
            }
        return {"mode": self.mode, "score": pc["score"], "classes_scored": int(pc["scored"].sum()),
                "auc_clip": AUC_CLIP, "per_class": per_class}


class LabelFlips:
    """Thresholded label decisions changed by the attack (multi-label tasks only).

    A label is predicted present when its logit is above ``task.threshold`` (``Task.predict``).

    - ``label_flip_rate``: mean over samples of the share of the C labels whose decision differs
      between the clean and the adversarial input (lower is better);
    - ``samples_flipped``: share of samples with at least one flipped label (lower is better; the
      attack success rate under the ``any_flip`` rule);
    - ``clean_exact_match``: share of samples whose thresholded labels equal the target exactly
      (``Evidence.clean_correct``); ``robust_exact_match``: exact when clean AND under attack
      (``Evidence.robust_correct``) (higher is better).

    Fractions over no sample are 0.0, as in the built-in metrics. A multiclass task is refused
    with ``MultiLabelOnly`` (a UserError and a ValueError): use ``accuracy`` there.
    """

    higher_is_better = {"label_flip_rate": False, "samples_flipped": False,
                        "clean_exact_match": True, "robust_exact_match": True}

    @staticmethod
    def _flips(ev: Evidence) -> torch.Tensor:
        if ev.task.kind != "multilabel":
            raise MultiLabelOnly(
                f"label_flips is a multi-label metric (thresholded tags); this task is {ev.task.kind}: "
                "use the accuracy metric (and tagging for macro-mAP) instead")
        return ev.task.predict(ev.clean_logits) != ev.task.predict(ev.adv_logits)

    def compute(self, ev: Evidence) -> dict[str, float]:
        flips = self._flips(ev)
        if not flips.numel():
            return {k: 0.0 for k in self.higher_is_better}
        return {
            "label_flip_rate": float(flips.double().mean()),
            "samples_flipped": float(flips.any(1).double().mean()),
            "clean_exact_match": float(ev.clean_correct.double().mean()),
            "robust_exact_match": float(ev.robust_correct.double().mean()),
        }

    def proportions(self, ev: Evidence) -> dict[str, tuple[int, int]]:
        """The shares of samples among the values (for their Wilson intervals); not label_flip_rate,
        a mean over samples of a per-sample share."""
        flips = self._flips(ev)
        n = int(flips.shape[0])
        return {"samples_flipped": (int(flips.any(1).sum()) if n else 0, n),
                "clean_exact_match": (int(ev.clean_correct.sum()), n),
                "robust_exact_match": (int(ev.robust_correct.sum()), n)}

    def details(self, ev: Evidence) -> dict:
        """``{"threshold", "per_class": {class: {"flips", "on_to_off", "off_to_on", "positives"}}}``:
        per class, the samples whose decision flipped, split by direction (clean on -> adversarial
        off, and the reverse), and the samples that have the class."""
        flips = self._flips(ev)
        clean_on = ev.task.predict(ev.clean_logits).bool()
        adv_on = ev.task.predict(ev.adv_logits).bool()
        on_off = (clean_on & ~adv_on).sum(0)
        off_on = (~clean_on & adv_on).sum(0)
        pos = (ev.target != 0).sum(0)
        per_class = {name: {"flips": int(flips[:, i].sum()), "on_to_off": int(on_off[i]), "off_to_on": int(off_on[i]),
                            "positives": int(pos[i])}
                     for i, name in enumerate(_class_keys(ev.task.classes))}
        return {"threshold": float(ev.task.threshold), "per_class": per_class}


def build_tagging(mode: str = "sklearn") -> Tagging:
    return Tagging(mode)


def build_label_flips() -> LabelFlips:
    return LabelFlips()


def register_metrics(register):
    register("tagging", build_tagging)
    register("label_flips", build_label_flips)
