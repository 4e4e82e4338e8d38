"""Executing a plan (``plan.py``) on this machine: train or load each unit, then run its cells.

Finished checkpoints and cells go to the run's store as soon as they exist, under the keys the
plan computed, so a second run reuses them and an interrupted run resumes. ``LocalExecutor`` walks
the plan in order in this process; another executor (e.g. a distributed one) may run the same plan's
units and cells elsewhere, as long as it writes the same store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import stats, sweep
from .components import build_component
from .contracts import AttackOutput, Evidence, FitContext, ModelEvidence
from .enforce import fit_facts, metric_values
from .enforce import probe_model as probe_contract
from .errors import UserError
from .model import AVModel, load_model, model_spec, save_model
from .numerics import training_threads
from .plan import STORE_FORMAT, Plan, PlannedCell, Unit, check_batch, compile_plan
from .plugins import Entry, Registry, guard
from .precision import with_precision
from .progress import Reporter
from .report.checks import BUDGET_SLACK, probe_model
from .report.records import CellRecord, make_cell
from .seeding import SampleRNG, seed_everything
from .store import Store, atomic_write_json, ensure_writable
from .success import resolve_rule
from .suite import PluginSpec, Suite, _Where, sha256_json
from .weights import checkpoint_path, load_weights

if TYPE_CHECKING:
    from .task import Task


@dataclass
class Trained:
    unit: Unit
    model: AVModel
    fit: dict
    reused: bool
    folder: Path
    clean_logits: torch.Tensor | None = None
    probe: dict = field(default_factory=dict)
    #: model-scope metric name -> its result
    metrics: dict = field(default_factory=dict)

    @property
    def spec(self) -> PluginSpec:
        return self.unit.model

    @property
    def defense(self) -> PluginSpec:
        return self.unit.defense

    @property
    def key(self) -> str:
        return self.unit.key


@dataclass
class RunResult:
    plan: Plan
    trained: list[Trained] = field(default_factory=list)
    cells: list[CellRecord] = field(default_factory=list)
    stages: dict = field(default_factory=dict)

    # what the report reads of the plan, under the names it has always used
    suite = property(lambda self: self.plan.suite)
    registry = property(lambda self: self.plan.registry)
    dataset = property(lambda self: self.plan.dataset)
    device = property(lambda self: self.plan.device)
    eval_n = property(lambda self: self.plan.eval_n)
    eval_n_original = property(lambda self: self.plan.eval_n_original)
    manifests = property(lambda self: self.plan.manifests)
    skipped = property(lambda self: self.plan.skipped)
    iterative = property(lambda self: self.plan.iterative)
    gradient_free = property(lambda self: self.plan.gradient_free)


class Stages:
    """Wall time per stage (seconds), summed over repeated entries."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def run_suite(suite: Suite, out_dir: str | Path, device: str | None = None, limit: int | None = None,
              reporter: Reporter | None = None, registry: Registry | None = None, *, executor: str | None = None,
              address: str | None = None, num_cpus: int | None = None) -> RunResult:
    """Compile the suite into a plan and run it here (``local``) or as Ray tasks (``ray``, ``ray_executor.py``)."""
    t = time.perf_counter()
    reporter = reporter or Reporter(enabled=False)
    plan = compile_for(suite, registry, device, limit, executor, address, reporter.log)
    return execute_plan(plan, out_dir, reporter, plan_s=time.perf_counter() - t, executor=executor, address=address,
                        num_cpus=num_cpus, device=device, limit=limit)


def compile_for(suite: Suite, registry: Registry | None, device: str | None, limit: int | None,
                executor: str | None, address: str | None, log: Callable[[str], None] = lambda msg: None) -> Plan:
    """The plan for the chosen executor: a Ray driver without CUDA probes models on its CPU."""
    if (executor or suite.executor) == "ray":
        from .ray_executor import driver_device, import_ray

        import_ray()  # a missing Ray is a one-line error before anything is built
        device = driver_device(device or suite.device)
    elif address is not None:
        raise UserError("--address joins a Ray cluster; it needs --executor ray (or executor: ray in the suite)")
    return compile_plan(suite, registry, device, limit, log=log)


def execute_plan(plan: Plan, out_dir: str | Path, reporter: Reporter | None = None, plan_s: float = 0.0, *,
                 executor: str | None = None, address: str | None = None, num_cpus: int | None = None,
                 device: str | None = None, limit: int | None = None) -> RunResult:
    """Run a compiled plan, storing results under ``out_dir/store``: locally, or as Ray tasks whose workers
    rebuild the same plan from the suite (``device``, ``limit``: as the plan was compiled with)."""
    reporter = reporter or Reporter(enabled=False)
    stages = Stages()
    stages.times["plan"] = plan_s
    out_dir = ensure_writable(out_dir)
    store = Store(out_dir / "store", log=reporter.log)
    set_threads()
    started = time.perf_counter() - plan_s
    if (executor or plan.suite.executor) == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(store, reporter, stages, address=address, num_cpus=num_cpus, device=device,
                           limit=limit).run(plan, started)
    return LocalExecutor(store, reporter, stages).run(plan, started)


def set_threads() -> None:
    """``AVHARNESS_THREADS=N``: torch's CPU threads here and in every Ray task (numbers depend on it, in the last bits)."""
    value = os.environ.get("AVHARNESS_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"AVHARNESS_THREADS must be a whole number >= 1, got {value!r}")
        torch.set_num_threads(int(value))


class LocalExecutor:
    """Runs a plan's units and cells one after the other in this process."""

    def __init__(self, store: Store, reporter: Reporter | None = None, stages: Stages | None = None):
        self.store = store
        self.reporter = reporter or Reporter(enabled=False)
        self.stages = stages or Stages()
        #: cell key -> the broken samples its sweep's next step carries (``eval.reuse_sweep``)
        self._states: dict = {}

    def run(self, plan: Plan, started: float | None = None) -> RunResult:
        started = time.perf_counter() if started is None else started
        stages, result = self.stages, RunResult(plan)
        for unit in plan.units:
            with stages("train"):
                tr = train_or_load(plan, unit, self.store, self.reporter)
            result.trained.append(tr)
            with stages("checks"):
                suite = plan.suite
                first = next(iter(plan.dataset.batches(suite.eval_split, min(suite.batch_size, plan.eval_n),
                                                       limit=plan.eval_n))).to(plan.device)
                mentry = plan.registry.entry("model", unit.model.plugin)
                where = f"unit {unit.label}, {'as loaded from the store' if tr.reused else 'after training'}"
                probe_contract(mentry, tr.model, plan.dataset.task, dict(first.inputs), where)
                with guard(mentry, where, "forward/backward"):
                    tr.probe = probe_model(tr.model, plan.dataset.task, first)
            if plan.model_metrics:
                with stages("model_metrics"):
                    _model_metrics(plan, tr, self.store, self.reporter)
            for pc in plan.cells_of(unit):
                stored = self.cell(plan, tr, pc)
                result.cells.append(make_cell(stored, model=unit.model.name, defense=unit.defense.name,
                                              attack=pc.attack.name, threat=pc.threat_spec.name))
        stages.times["total"] = time.perf_counter() - started
        result.stages = {f"{k}_s": round(v, 3) for k, v in stages.times.items()}
        return result

    def cell(self, plan: Plan, tr: Trained, pc: PlannedCell) -> dict:
        """One cell from the store, or computed and stored."""
        cell = self.store.load_cell(pc.key)
        if cell is not None:
            cell["reused"] = True
            return cell
        cell = self.compute_and_store(plan, tr, pc)
        cell["reused"] = False
        return cell

    def compute_and_store(self, plan: Plan, tr: Trained, pc: PlannedCell) -> dict:
        """Compute a cell (even if stored) and store it: its sweep state first, the cell last."""
        cell, state = self.compute(plan, tr, pc, self.prior_state(plan, tr, pc))
        if state is not None:
            sweep.save_state(self.store, pc.key, state)
            self._states[pc.key] = sweep.SweepState.from_bytes(state)
        self.store.save_cell(pc.key, cell)
        return cell

    def prior_state(self, plan: Plan, tr: Trained, pc: PlannedCell) -> sweep.SweepState | None:
        """The broken samples of the sweep's previous step, recomputing that step if its state is gone."""
        prev = sweep.previous(plan, pc)
        if prev is None:
            return None
        state = self._states.get(prev.key) or sweep.load_state(self.store, prev.key)
        if state is None:
            self.reporter.log(f"cell {prev.label}: recomputing it for the broken samples the next step carries")
            self.compute_and_store(plan, tr, prev)
            state = self._states[prev.key]
        self._states = {prev.key: state}  # one step back is all a sweep needs
        return state

    def compute(self, plan: Plan, tr: Trained, pc: PlannedCell,
                prior: sweep.SweepState | None = None) -> tuple[dict, bytes | None]:
        """A cell's result and (with ``eval.reuse_sweep``) the sweep state its next step carries."""
        ev_tr = self._eval_model(plan, tr)
        if tr.clean_logits is None:
            with self.stages("clean"):
                tr.clean_logits = _clean_pass(plan, ev_tr)
        ev_tr.clean_logits = tr.clean_logits
        with self.stages("attack"):
            attack = pc.attack_impl
            if hasattr(attack, "prepare"):  # attacks fitted before use (e.g. universal perturbations)
                with guard(plan.registry.entry("attack", pc.attack.plugin), f"cell {pc.label}", "prepare()"):
                    attack = attack.prepare(ev_tr.model, plan.dataset, pc.threat, plan.dataset.task,
                                            plan.suite.eval_split)
            reuse = sweep.SweepReuse(plan, pc, eval_task(plan.suite, plan.dataset.task), prior) \
                if plan.suite.reuse_sweep else None
            cell = _attack_cell(plan, ev_tr, pc, attack, self.reporter, reuse=reuse)
        cell["key"] = pc.key
        return cell, (reuse.state.to_bytes() if reuse is not None else None)

    def _eval_model(self, plan: Plan, tr: Trained) -> Trained:
        """``tr`` with its model in the suite's precision (autocast) for attacks and evaluation."""
        if plan.suite.precision == "fp32":
            return tr
        if getattr(tr, "_eval", None) is None:
            tr._eval = dataclasses.replace(tr, model=with_precision(tr.model, plan.suite.precision, plan.device))
        return tr._eval


def eval_task(suite: Suite, task: Task) -> Task:
    """The dataset's task with the suite's label threshold (a probability) as a logit."""
    if suite.threshold is None:
        return task
    return dataclasses.replace(task, threshold=math.log(suite.threshold / (1 - suite.threshold)))


def train_or_load(plan: Plan, unit: Unit, store: Store, reporter: Reporter) -> Trained:
    suite, dataset, dev = plan.suite, plan.dataset, plan.device
    w = _Where(suite.path)
    mspec, dspec = unit.model, unit.defense
    folder = store.model_dir(unit.key)
    if store.has_model(unit.key):
        try:
            model = load_model(folder).to(dev).eval()
            fit = json.loads((folder / "fit.json").read_text())
            reporter.log(f"model {unit.label}: reusing checkpoint {folder}")
            return Trained(unit, model, fit, True, folder)
        except Exception as exc:  # a damaged checkpoint is retrained, not fatal: nothing is lost
            reporter.log(f"model {unit.label}: checkpoint {folder} is unreadable ({type(exc).__name__}: {exc}); retraining")

    seed_everything(unit.fit_seed)
    model = build_component(w, mspec, plan.registry, task=dataset.task, specs=dataset.specs)
    loaded = None
    if unit.init:
        try:
            loaded = load_weights(model, checkpoint_path(w, mspec), key_map=mspec.load.get("key_map"))
        except UserError as exc:
            raise w.error(f"{mspec.where}.checkpoint", mspec.lines.get("checkpoint", mspec.lines[""]), str(exc)) from None
        reporter.log(f"model {unit.label}: weights from {loaded['path']} (sha256 {loaded['sha256'][:12]})")
    model.to(dev).train()
    ctx = FitContext(device=dev, seed=unit.fit_seed, progress=reporter.task, log=reporter.log)
    t = time.perf_counter()
    dentry = plan.registry.entry("defense", dspec.plugin)
    with guard(dentry, f"unit {unit.label}", "fit()"), training_threads():  # thread count: numerics.py
        facts = unit.defense_impl.fit(model, dataset, ctx)
    fit = fit_facts(dentry, facts, f"unit {unit.label}")
    fit.setdefault("wall_s", round(time.perf_counter() - t, 3))
    fit["defense"] = dspec.identity()
    if loaded:
        fit["init"] = loaded  # the weights it started from: path, sha256, key map, keys left out
    model.eval()
    save_model(model, model_spec(mspec.plugin, mspec.params, dataset.task, dataset.specs), folder)
    atomic_write_json(folder / "fit.json", fit)  # written last: marks the checkpoint complete
    trains = getattr(unit.defense_impl, "trains", True)
    reporter.log(f"model {unit.label}: " + (f"trained in {fit['wall_s']:.1f}s" if trains else "evaluated as loaded"))
    return Trained(unit, model, fit, False, folder)


def _model_metrics(plan: Plan, tr: Trained, store: Store, reporter: Reporter) -> None:
    suite, dataset, dev = plan.suite, plan.dataset, plan.device
    cache: dict[str, tuple] = {}

    @torch.no_grad()
    def latents(split: str):
        if split not in cache:
            limit = plan.eval_n if split == suite.eval_split else None
            parts, targets, ids = {}, [], []
            for batch in dataset.batches(split, suite.batch_size, limit=limit):
                for name, z in tr.model.embed(batch.to(dev).inputs).items():
                    parts.setdefault(name, []).append(z.float().cpu())
                targets.append(batch.target.cpu())
                ids.extend(batch.ids)
            cache[split] = ({k: torch.cat(v) for k, v in parts.items()}, torch.cat(targets), ids)
        return cache[split]

    ev = ModelEvidence(task=dataset.task, model=tr.model, seed=suite.seed, eval_split=suite.eval_split, latents=latents)
    for mspec, metric in plan.model_metrics:
        key = sha256_json(
            {"format": STORE_FORMAT, "train": tr.key, "metric": mspec.identity(), "eval": plan.eval_id, "seed": suite.seed}
        )[:20]
        path = store.root / "model_metrics" / f"{key}.json"
        stored = store.load_model_metric(path)
        if stored is not None:
            tr.metrics[mspec.name] = stored
            continue
        reporter.log(f"model {tr.spec.name}: {mspec.name}")
        t = time.perf_counter()
        entry = plan.registry.entry("metric", mspec.plugin)
        with guard(entry, f"unit {tr.unit.label}", "compute_model()"):
            result = metric.compute_model(ev)
        if not isinstance(result, dict):
            raise entry.error(f"expected compute_model() to return a mapping, got {type(result).__name__}",
                              f"unit {tr.unit.label}")
        result = dict(result)
        result["wall_s"] = round(time.perf_counter() - t, 3)
        result["higher_is_better"] = dict(metric.higher_is_better)
        atomic_write_json(path, result)
        tr.metrics[mspec.name] = json.loads(path.read_text())  # as stored: NaN -> null, int keys -> str


def _finite(t: torch.Tensor, what: str, entry: Entry, where: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise entry.error(f"expected finite {what}, got NaN or inf (check the model's inputs, weights and training loss)",
                          where)
    return t


@torch.no_grad()
def _clean_pass(plan: Plan, tr: Trained) -> torch.Tensor:
    suite, out = plan.suite, []
    mentry = plan.registry.entry("model", tr.spec.plugin)
    dentry = plan.registry.entry("dataset", suite.data.plugin)
    where = f"unit {tr.unit.label}, clean pass"
    for batch in plan.dataset.batches(suite.eval_split, suite.batch_size, limit=plan.eval_n):
        check_batch(batch, plan.dataset, suite.data.plugin, dentry)
        with guard(mentry, where, "forward"):
            out.append(tr.model(batch.to(plan.device).inputs).float().cpu())
    return _finite(torch.cat(out), "clean logits", mentry, where)


def _attack_cell(plan: Plan, tr: Trained, pc: PlannedCell, attack, reporter: Reporter, reuse=None) -> dict:
    """Attack every evaluated sample, then score the cell: metrics, per-sample outcomes, budgets used.

    With ``reuse`` (``sweep.SweepReuse``) only the samples still robust are attacked; the others
    are merged in (clean when the success rule does not apply, carried from the previous step).
    """
    suite, threat = plan.suite, pc.threat
    task = eval_task(suite, plan.dataset.task)
    t0 = time.perf_counter()
    attack_batches = _attack_batches if reuse is None else reuse.wrap(_attack_batches)
    ids, targets, adv_logits, stats, attack_stats = attack_batches(plan, tr, pc, attack, task, reporter)
    attack_stats.setdefault("attacked_samples", float(len(ids)))
    label = f"{pc.attack.name} {pc.threat_spec.name} eps#{pc.step} on {tr.spec.name}"
    adv_logits = _finite(torch.cat(adv_logits), f"adversarial logits under {label}",
                         plan.registry.entry("model", tr.spec.plugin), f"cell {pc.label}")
    ev = Evidence(
        task=task,
        ids=ids,
        target=torch.cat(targets),
        clean_logits=tr.clean_logits,
        adv_logits=adv_logits,
        threat=threat,
        perturbation={m: {k: torch.cat(v) for k, v in s.items()} for m, s in stats.items()},
        success_rule=suite.success,
        success_margin=suite.success_margin,
    )
    if reuse is not None:
        reuse.keep(ev)
    values, directions, details = _metric_values(plan, ev, f"cell {pc.label}")
    intervals, replicates = _metric_intervals(plan, ev, f"cell {pc.label}")
    return {
        "step": pc.step,
        "eps": {m: b.eps for m, b in threat.budgets.items()},
        "norm": {m: b.norm for m, b in threat.budgets.items()},
        "canonical": threat.canonical(),
        "n": len(ids),
        "success_rule": resolve_rule(task, suite.success),
        # the largest achieved perturbation per modality in its own norm (the budget check's evidence)
        "achieved": {
            m: float(ev.perturbation[m]["linf" if b.norm == "linf" else "l2"].max()) if ids else 0.0
            for m, b in threat.budgets.items()
            if b.norm != "none"
        },
        "metrics": values,
        "higher_is_better": directions,
        "intervals": intervals,
        # bootstrap replicates per value, on resamples shared by every cell of these samples: the
        # report's paired comparisons read them (kept in the store, not written to report.json)
        **({"bootstrap": replicates} if replicates else {}),
        **({"details": details} if details else {}),
        "attack_stats": attack_stats,
        "wall_s": round(time.perf_counter() - t0, 3),
        "samples": _samples(task, ev),
    }


def _attack_batches(plan: Plan, tr: Trained, pc: PlannedCell, attack, task, reporter: Reporter):
    """Perturb the evaluated samples batch by batch, refusing any result that breaks the threat model."""
    suite, threat, dev = plan.suite, pc.threat, plan.device
    ids, targets, adv_logits = [], [], []
    stats = {m: {"linf": [], "l2": [], "signal_l2": []} for m in threat.modalities}
    attack_stats: dict[str, float] = {}
    rng_key = f"{sha256_json(pc.attack.identity())[:12]}|{threat.canonical()}"
    label = f"{pc.attack.name} {pc.threat_spec.name} eps#{pc.step} on {tr.spec.name}"
    aentry = plan.registry.entry("attack", pc.attack.plugin)
    mentry = plan.registry.entry("model", tr.spec.plugin)
    dentry = plan.registry.entry("dataset", suite.data.plugin)
    where = f"cell {pc.label}"
    advance = reporter.task(label, (plan.eval_n + suite.batch_size - 1) // suite.batch_size)
    for batch in plan.dataset.batches(suite.eval_split, suite.batch_size, limit=plan.eval_n):
        check_batch(batch, plan.dataset, suite.data.plugin, dentry)
        batch = batch.to(dev)
        clean = {k: v for k, v in batch.inputs.items()}
        snapshot = {k: v.clone() for k, v in clean.items()}
        with guard(aentry, where, "perturb()"):
            adv = attack.perturb(tr.model, clean, batch.target, threat, task, SampleRNG(suite.seed, rng_key, batch.ids))
        if isinstance(adv, AttackOutput):
            for k, v in adv.stats.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise aentry.error(f"expected AttackOutput.stats[{k!r}] to be a finite number, got {v!r:.60}", where)
                attack_stats[k] = attack_stats.get(k, 0) + float(v)
            adv = adv.inputs
        if not isinstance(adv, dict):
            raise aentry.error(f"expected perturb() to return a dict of inputs (or an AttackOutput), got "
                               f"{type(adv).__name__}", where)
        _verify(aentry, where, threat, snapshot, clean, adv, tr.model.modalities)
        with torch.no_grad(), guard(mentry, where, "forward on adversarial inputs"):
            adv_logits.append(tr.model(adv).float().cpu())
        ids.extend(batch.ids)
        targets.append(batch.target.cpu())
        for m in threat.modalities:
            delta = (adv[m] - snapshot[m]).flatten(1).double()
            stats[m]["linf"].append(delta.abs().amax(1).cpu())
            stats[m]["l2"].append(delta.norm(dim=1).cpu())
            stats[m]["signal_l2"].append(snapshot[m].flatten(1).double().norm(dim=1).cpu())
        advance()
    return ids, targets, adv_logits, stats, attack_stats


def _metric_values(plan: Plan, ev: Evidence, where: str = "") -> tuple[dict, dict, dict]:
    values, directions, details = {}, {}, {}
    for mspec, metric in plan.metrics:
        entry = plan.registry.entry("metric", mspec.plugin)
        with guard(entry, where, "compute()"):
            out = metric.compute(ev)
        out = metric_values(entry, out, dict(metric.higher_is_better), where)
        clash = sorted(set(out) & set(values))
        if clash:
            raise UserError(
                f"metric {mspec.name!r} reports {', '.join(clash)}, which an earlier metric of the suite "
                "already reported; list each metric once (its parameters choose the variant)"
            )
        values.update(out)
        directions.update(metric.higher_is_better)
        if hasattr(metric, "details"):  # per-class breakdowns and the like, kept beside the values
            with guard(entry, where, "details()"):
                details[mspec.name] = metric.details(ev)
    return values, directions, details


def _metric_intervals(plan: Plan, ev: Evidence, where: str = "") -> tuple[dict, dict]:
    """Per metric value, its 95 % interval: Wilson for the shares a metric declares
    (``proportions``), percentile bootstrap for the values it can recompute on resamples
    (``bootstrap``); and those bootstrap replicates (see ``avharness.stats``)."""
    intervals: dict[str, list[float] | None] = {}
    replicates: dict[str, list[float | None]] = {}
    indices = None
    for mspec, metric in plan.metrics:
        entry = plan.registry.entry("metric", mspec.plugin)
        if hasattr(metric, "proportions"):
            with guard(entry, where, "proportions()"):
                shares = {name: stats.wilson(int(k), int(n)) for name, (k, n) in metric.proportions(ev).items()}
            intervals.update(shares)
        if hasattr(metric, "bootstrap"):
            if indices is None:
                indices = stats.resample_indices(plan.suite.seed, ev.ids)
            with guard(entry, where, "bootstrap()"):
                boot = {name: [float(v) if v is not None and math.isfinite(v) else None for v in values]
                        for name, values in metric.bootstrap(ev, indices).items()}
            for name, reps in boot.items():
                if len(reps) != len(indices):
                    raise entry.error(f"{len(indices)} bootstrap values for {name!r} (one per resample), "
                                      f"got {len(reps)}", where)
                replicates[name] = reps
                intervals[name] = stats.percentile_interval(reps)
    return intervals, replicates


def _samples(task, ev: Evidence) -> list[dict]:
    clean_ok, robust_ok = ev.clean_correct, ev.robust_correct
    attackable, success = ev.attackable, ev.success
    clean_pred, adv_pred = task.predict(ev.clean_logits), task.predict(ev.adv_logits)
    return [
        {
            "id": sid,
            "target": _pred(ev.target[i]) if task.kind == "multilabel" else int(ev.target[i]),
            "clean_pred": _pred(clean_pred[i]),
            "adv_pred": _pred(adv_pred[i]),
            "clean_correct": bool(clean_ok[i]),
            "robust": bool(robust_ok[i]),
            # null where the success rule does not apply (multiclass: the clean prediction was wrong)
            "success": bool(success[i]) if bool(attackable[i]) else None,
        }
        for i, sid in enumerate(ev.ids)
    ]


def _pred(p: torch.Tensor):
    return int(p) if p.dim() == 0 else [int(i) for i in p.nonzero().flatten()]


def _verify(entry: Entry, where: str, threat, snapshot, clean, adv, model_modalities) -> None:
    """Refuse a result that breaks the threat model: a wrong robustness number is worse than none.

    Each violation is a ``PluginError`` naming the attack plugin and the cell (exit status 3)."""
    for m, x in snapshot.items():
        if not torch.equal(clean[m], x):
            raise entry.error(f"expected perturb() to leave its inputs alone, but it modified {m!r} in place", where)
        if m not in adv or not isinstance(adv[m], torch.Tensor) or adv[m].shape != x.shape:
            got = tuple(adv[m].shape) if isinstance(adv.get(m), torch.Tensor) else ("nothing" if m not in adv else
                                                                                     type(adv[m]).__name__)
            raise entry.error(f"expected an {m!r} input of shape {tuple(x.shape)} back, got {got}", where)
        if m not in threat.budgets:
            if not torch.equal(adv[m], x):
                raise entry.error(f"expected modality {m!r}, which the threat does not attack, unchanged; it was changed",
                                  where)
            continue
        b = threat.budgets[m]
        if not torch.isfinite(adv[m]).all():
            raise entry.error(f"expected finite adversarial {m!r} inputs, got NaN or inf", where)
        delta = (adv[m] - x).flatten(1).double()
        size = delta.abs().amax(1) if b.norm == "linf" else delta.norm(dim=1)
        slack = BUDGET_SLACK * max(b.eps, 1.0)  # float32 rounding of x + delta
        if b.norm != "none" and (b.eps == 0 and not torch.equal(adv[m], x) or (size > b.eps + slack).any()):
            raise entry.error(f"expected a {b.norm} perturbation of {m!r} within eps {b.eps:g}, got "
                              f"{float(size.max()):.6g}", where)
        if (adv[m] < b.bounds[0]).any() or (adv[m] > b.bounds[1]).any():
            raise entry.error(f"expected {m!r} inside its valid range {list(b.bounds)}, got values in "
                              f"[{float(adv[m].min()):.6g}, {float(adv[m].max()):.6g}]", where)
