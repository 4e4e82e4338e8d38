"""Attack cost proportional to what is still robust (``eval.reuse_sweep``, on by default).

Two savings, the AutoAttack idea applied to a suite's eps sweeps:

1. A sample the success rule does not apply to (multiclass: wrong when clean; multi-label
   ``ap_drop``: no true tag) is not attacked. It is non-robust already; its "adversarial" input is
   the clean input (adversarial logits = clean logits, perturbation 0), which lies in every ball.
2. Within one attack's sweep of one threat whose budget balls are nested (same modalities and
   norms, every modality's eps non-decreasing from the previous step, no unbounded norm), a sample
   broken at the previous step (the success rule succeeded) is counted broken at this one with the
   adversarial example found there, which lies inside this step's larger ball; only the samples
   still robust are attacked. Attacks that are fitted per threat (``prepare``: universal
   perturbations) are exempt from this carry: one perturbation for all samples is their meaning.

Robust accuracy with reuse is therefore never above the independent per-budget attack's: a carried
sample is broken by a valid example of the larger ball, and every other sample is attacked exactly
as before (same per-sample random stream, ``SampleRNG`` keys by sample id). Multi-label caveat:
score-based metrics (mAP, AUC, d') of a carried sample use its scores at the smaller budget where it
broke; turn the saving off (``eval.reuse_sweep: false``) for the exact per-budget scores.

What is kept between steps is not the adversarial inputs but what the metrics read of them: per
broken sample its adversarial logits and its perturbation sizes (``Evidence`` holds no inputs). It
is small (broken samples × (classes + 3 per attacked modality) numbers: 20,371 AudioSet clips ×
(527 + 6) ≈ 43 MB at most per cell) and is written beside the cell in the store
(``store/sweeps/<cell key>.pt``, before the cell itself), so a resumed run or another executor
continues a sweep with exactly the state a continuous run had. A missing state (a store from
another version, a deleted file) is rebuilt by recomputing the previous step.

A cell computed with reuse differs from one computed without (the perturbation sizes of skipped
and carried samples, and the samples attacked), so its store key says so: ``reuse`` (the budgets
of the nested steps before it) enters the key when the saving is on; with ``reuse_sweep: false`` a
cell's key is the one it always had, so stores written before this option existed stay valid there.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import Batch, InputSpec
from .store import Store, atomic_write_bytes
from .success import outcome
from .threat import ThreatModel

if TYPE_CHECKING:
    from .contracts import Evidence
    from .plan import Plan, PlannedCell
    from .suite import Suite, ThreatSpec
    from .task import Task

#: the per-sample statistics a cell keeps of each attacked modality's perturbation
STAT_KEYS = ("linf", "l2", "signal_l2")


def nested(prev: ThreatModel, cur: ThreatModel) -> bool:
    """Whether ``prev``'s budget ball lies inside ``cur``'s: same modalities and norms, eps not smaller."""
    if set(prev.budgets) != set(cur.budgets):
        return False
    for m, b in cur.budgets.items():
        a = prev.budgets[m]
        if a.norm != b.norm or b.norm == "none" or b.eps < a.eps or tuple(a.bounds) != tuple(b.bounds):
            return False
    return True


def carries(attack: object) -> bool:
    """Attacks fitted once per threat (universal perturbations) do not carry samples between steps."""
    return not hasattr(attack, "prepare")


def chain(tspec: ThreatSpec, step: int, specs: dict[str, InputSpec], attack: object) -> list[ThreatModel]:
    """The earlier steps of this sweep whose results reach ``step`` (each nested in the next), oldest first."""
    out: list[ThreatModel] = []
    if not carries(attack):
        return out
    cur = tspec.at(step, specs)
    for s in range(step - 1, -1, -1):
        prev = tspec.at(s, specs)
        if not nested(prev, cur):
            break
        out.insert(0, prev)
        cur = prev
    return out


def reuse_identity(suite: Suite, tspec: ThreatSpec, step: int, specs: dict[str, InputSpec], attack: object) -> dict | None:
    """What the saving adds to a cell's store key (None when it is off)."""
    if not suite.reuse_sweep:
        return None
    return {"after": [t.canonical() for t in chain(tspec, step, specs, attack)]}


def previous(plan: Plan, pc: PlannedCell) -> PlannedCell | None:
    """The planned cell of the step before ``pc`` whose broken samples ``pc`` carries, or None."""
    if not plan.suite.reuse_sweep or pc.step == 0 or not carries(pc.attack_impl):
        return None
    prev = next((c for c in plan.cells if c.unit is pc.unit and c.attack.name == pc.attack.name
                 and c.threat_spec.name == pc.threat_spec.name and c.step == pc.step - 1), None)
    return prev if prev is not None and nested(prev.threat, pc.threat) else None


# --- the state carried from one step to the next ---------------------------------------------

@dataclass
class SweepState:
    """The broken samples of one step: their ids, adversarial logits and perturbation sizes."""

    ids: list[str] = field(default_factory=list)
    adv_logits: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)  # modality -> stat name -> [n] float64

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"ids": list(self.ids), "adv_logits": self.adv_logits, "stats": self.stats}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SweepState:
        d = torch.load(io.BytesIO(data), weights_only=True)
        return cls(d["ids"], d["adv_logits"], d["stats"])


def state_path(store: Store, key: str) -> Path:
    return store.root / "sweeps" / f"{key}.pt"


def save_state(store: Store, key: str, data: bytes) -> None:
    atomic_write_bytes(state_path(store, key), data)


def load_state(store: Store, key: str) -> SweepState | None:
    path = state_path(store, key)
    if not path.exists():
        return None
    try:
        return SweepState.from_bytes(path.read_bytes())
    except Exception:  # unreadable: the previous step is recomputed, nothing is lost
        return None


# --- attacking only what is still robust -----------------------------------------------------

class _StillRobust:
    """A view of the dataset's eval samples that yields only those to attack, repacked into full batches.

    It walks the whole evaluated split once (recording every sample's id, target and clean signal
    size) and hands the attack batches of ``batch_size`` samples drawn from the samples that are
    attackable and not carried, in the dataset's order.
    """

    def __init__(self, dataset, split: str, limit: int, select, modalities):
        self._ds, self._split, self._limit, self._select, self._modalities = dataset, split, limit, select, modalities
        self.ids: list[str] = []
        self.targets: list[torch.Tensor] = []
        self.signal: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
        self.chosen: list[torch.Tensor] = []  # global indices of the samples attacked, in order

    def __getattr__(self, name):  # task, specs, manifest, ...: the dataset's own
        return getattr(self._ds, name)

    def size(self, split):
        return self._ds.size(split)

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        pending: list[Batch] = []
        buffered = 0
        for batch in self._ds.batches(self._split, batch_size, limit=self._limit):
            start = len(self.ids)
            self.ids.extend(batch.ids)
            self.targets.append(batch.target.cpu())
            for m in self._modalities:
                self.signal[m].append(batch.inputs[m].flatten(1).double().norm(dim=1).cpu())
            mask = self._select(start, batch)
            if bool(mask.any()):
                idx = mask.nonzero().flatten()
                self.chosen.append(idx + start)
                pending.append(Batch({k: v[idx] for k, v in batch.inputs.items()}, batch.target[idx],
                                     [batch.ids[int(i)] for i in idx]))
                buffered += len(idx)
            while buffered >= batch_size:
                out, pending = _take(pending, batch_size)
                buffered -= batch_size
                yield out
        if buffered:
            yield _take(pending, buffered)[0]


def _take(pending: list[Batch], n: int) -> tuple[Batch, list[Batch]]:
    """The first ``n`` samples of the pending batches as one batch, and what is left."""
    inputs = {k: torch.cat([b.inputs[k] for b in pending]) for k in pending[0].inputs}
    target = torch.cat([b.target for b in pending])
    ids = [i for b in pending for i in b.ids]
    head = Batch({k: v[:n] for k, v in inputs.items()}, target[:n], ids[:n])
    rest = [Batch({k: v[n:] for k, v in inputs.items()}, target[n:], ids[n:])] if len(ids) > n else []
    return head, rest


class SweepReuse:
    """One cell's share of the saving: what to skip, what to carry, and the state it leaves behind."""

    def __init__(self, plan: Plan, pc: PlannedCell, task: Task, prior: SweepState | None):
        self.plan, self.pc, self.task, self.prior = plan, pc, task, prior
        self.state: SweepState | None = None
        self._carried = {sid: i for i, sid in enumerate(prior.ids)} if prior is not None else {}

    def wrap(self, attack_batches: Callable[..., tuple]) -> Callable[..., tuple]:
        """``attack_batches`` (the executor's batch loop) run on the still-robust samples, results merged."""

        def run(plan, tr, pc, attack, task, reporter):
            suite, clean = plan.suite, tr.clean_logits
            skipped = torch.zeros(len(clean), dtype=torch.bool)
            carried = torch.zeros(len(clean), dtype=torch.bool)

            def select(start: int, batch: Batch) -> torch.Tensor:
                n = len(batch)
                cl = clean[start:start + n]
                attackable = outcome(task, suite.success, suite.success_margin, cl, cl, batch.target.cpu())[0]
                skipped[start:start + n] = ~attackable
                carry = torch.tensor([sid in self._carried for sid in batch.ids], dtype=torch.bool)
                carried[start:start + n] = carry & attackable
                return attackable & ~carry

            view = _StillRobust(plan.dataset, suite.eval_split, plan.eval_n, select, pc.threat.modalities)
            sub = replace(plan, dataset=view)
            ids, _, adv_logits, stats, attack_stats = attack_batches(sub, tr, pc, attack, task, reporter)
            n = len(view.ids)
            chosen = torch.cat(view.chosen) if view.chosen else torch.zeros(0, dtype=torch.long)
            assert len(chosen) == len(ids), "the attack loop returned a different number of samples than it was given"
            adv = clean.clone()
            out_stats = {m: {"linf": torch.zeros(n, dtype=torch.float64), "l2": torch.zeros(n, dtype=torch.float64),
                             "signal_l2": torch.cat(view.signal[m]) if n else torch.zeros(0, dtype=torch.float64)}
                         for m in pc.threat.modalities}
            if len(chosen):
                adv[chosen] = torch.cat(adv_logits)
                for m, s in stats.items():
                    for k in STAT_KEYS:
                        out_stats[m][k][chosen] = torch.cat(s[k])
            rows = carried.nonzero().flatten()
            if len(rows):
                src = torch.tensor([self._carried[view.ids[int(g)]] for g in rows])
                adv[rows] = self.prior.adv_logits[src]
                for m in out_stats:
                    for k in STAT_KEYS:
                        out_stats[m][k][rows] = self.prior.stats[m][k][src]
            attack_stats = dict(attack_stats)
            attack_stats["attacked_samples"] = float(len(chosen))
            attack_stats["carried_samples"] = float(len(rows))
            attack_stats["skipped_samples"] = float(int(skipped.sum()))
            targets = [torch.cat(view.targets)] if view.targets else []
            return list(view.ids), targets, [adv], {m: {k: [v] for k, v in s.items()} for m, s in out_stats.items()}, \
                attack_stats

        return run

    def keep(self, ev: Evidence) -> None:
        """Remember this step's broken samples for the next step of the sweep."""
        broken = ev.success.nonzero().flatten()
        self.state = SweepState(
            [ev.ids[int(i)] for i in broken],
            ev.adv_logits[broken].clone(),
            {m: {k: s[k][broken].clone() for k in STAT_KEYS} for m, s in ev.perturbation.items()},
        )
