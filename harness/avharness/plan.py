"""A suite compiled into a plan: the training units and the cells, each with its store key.

``compile_plan`` resolves and builds every plugin, reads the dataset's manifests and checks a first
batch of every split, builds each model once to learn which modalities it reads, and raises every
error the suite can cause before anything is trained or attacked. An executor (``executor.py``:
the local one; a distributed one would consume the same plan) then runs the units and cells.

Keys are sha256 hashes of everything that determines a result, so a rerun finds finished work in
the store: a training unit by (model plugin and parameters, starting checkpoint bytes, defense,
data manifests, seed); a cell by (training unit, attack, threat budget, evaluated samples, seed,
metrics, evaluation rules). Every plugin enters a key with its distribution, version and, when
installed from a working tree, the sha256 of its package's sources (``Entry.provenance``), so an
upgraded or edited plugin never reuses results it did not make. The training seed leaves the
provenance out: a plugin upgrade recomputes, but with the same seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .components import Components, build_component, check_plugins
from .data import Batch, Dataset
from .enforce import check_directions, probe_model
from .errors import UserError
from .model import AVModel
from .numerics import training_threads
from .plugins import Entry, Registry, get_registry, guard
from .seeding import derive_seed
from .suite import PluginSpec, Suite, ThreatSpec, _Where, sha256_json
from .sweep import reuse_identity
from .threat import ThreatModel
from .weights import checkpoint_path, file_sha256

if TYPE_CHECKING:
    from .store import Store

#: bump when the meaning of a stored cell or checkpoint changes, so old ones are not reused
STORE_FORMAT = 3


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA device is available; use --device cpu (or auto)")
    if requested not in ("cpu", "cuda"):
        raise UserError(f"unknown device {requested!r}; use auto, cpu or cuda")
    return torch.device(requested)


@dataclass
class Unit:
    """One training (or checkpoint-loading) unit: a model under a defense."""

    model: PluginSpec
    defense: PluginSpec
    defense_impl: object
    key: str
    #: the training seed: derived from what is trained, never from STORE_FORMAT
    fit_seed: int
    #: the starting checkpoint (sha256, key map), when the suite gives one
    init: dict | None
    modalities: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.model.name} ({self.defense.name})"


@dataclass
class PlannedCell:
    """One cell: a unit's model attacked by one attack at one step of one threat's sweep."""

    unit: Unit
    attack: PluginSpec
    attack_impl: object
    threat_spec: ThreatSpec
    step: int
    threat: ThreatModel
    key: str

    @property
    def label(self) -> str:
        return f"{self.unit.model.name}/{self.unit.defense.name}/{self.attack.name}/{self.threat_spec.name}/{self.step}"


@dataclass
class Plan:
    suite: Suite
    registry: Registry
    dataset: Dataset
    device: torch.device
    eval_n: int
    eval_n_original: int
    manifests: dict
    #: cell-scope metrics [(spec, metric)] and model-scope ones (latent geometry, once per unit)
    metrics: list
    model_metrics: list
    units: list[Unit] = field(default_factory=list)
    cells: list[PlannedCell] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    #: attack name -> whether it iterates (None: the plugin does not say), for the validity checks
    iterative: dict = field(default_factory=dict)
    gradient_free: dict = field(default_factory=dict)
    #: per task kind, the value findings compare models by, as a metric declared it (``headline``)
    headline: dict = field(default_factory=dict)

    @property
    def eval_id(self) -> dict:
        return {"split": self.suite.eval_split, "n": self.eval_n, "manifest": self.manifests[self.suite.eval_split]}

    def cells_of(self, unit: Unit) -> list[PlannedCell]:
        return [c for c in self.cells if c.unit is unit]

    def describe(self, store: Store | None = None) -> list[str]:
        """Lines for ``avharness validate --plan``: units and cells, what the store already holds, skips."""
        have_units = {u.key for u in self.units if store is not None and store.has_model(u.key)}
        have_cells = {c.key for c in self.cells if store is not None and store.has_cell(c.key)}
        lines = [f"{len(self.units)} training units ({len(have_units)} in the store), "
                 f"{len(self.cells)} cells ({len(have_cells)} in the store), {len(self.skipped)} skipped; "
                 f"{self.eval_n} samples of split {self.suite.eval_split!r}"]
        for u in self.units:
            mine = self.cells_of(u)
            done = sum(c.key in have_cells for c in mine)
            lines.append(f"  unit {u.label} [{u.key}] {'stored' if u.key in have_units else 'to train'}"
                         f"{' from a checkpoint' if u.init else ''}: {len(mine)} cells, {done} stored")
            for c in mine:
                lines.append(f"    cell {c.attack.name} × {c.threat_spec.name} step {c.step} "
                             f"({c.threat.canonical()}) [{c.key}] {'stored' if c.key in have_cells else 'to run'}")
        for s in self.skipped:
            lines.append(f"  skipped {s['model']} ({s['defense']}) × {s['attack']} × {s['threat']}: {s['reason']}")
        return lines


def compile_plan(suite: Suite, registry: Registry | None = None, device: str | None = None,
                 limit: int | None = None, log: Callable[[str], None] = lambda msg: None) -> Plan:
    """Every plugin built, every key computed and every suite error raised; nothing trained or attacked."""
    w = _Where(suite.path)
    registry = registry or get_registry()
    parts = check_plugins(suite, registry)
    dataset = parts.dataset
    dev = resolve_device(device or suite.device)
    manifests = _check_dataset(w, suite, registry, dataset)
    dentry = registry.entry("dataset", suite.data.plugin)
    with guard(dentry, "the plan", "size()"):
        n_original = dataset.size(suite.eval_split)
    limit = limit if limit is not None else suite.limit
    eval_n = min(n_original, limit) if limit else n_original
    with guard(dentry, f"the plan (split {suite.eval_split!r})", "batches()"):
        probe = next(iter(dataset.batches(suite.eval_split, max(1, min(suite.batch_size, eval_n, 8)), limit=eval_n)))

    plan = Plan(suite, registry, dataset, dev, eval_n, n_original, manifests,
                metrics=[(m, x) for m, x in parts.metrics if getattr(x, "scope", "cell") != "model"],
                model_metrics=[(m, x) for m, x in parts.metrics if getattr(x, "scope", "cell") == "model"])
    _read_declarations(plan, parts)
    for mspec in suite.models:
        _plan_model(w, plan, parts, mspec, _model_modalities(w, mspec, registry, dataset, probe))
    _check_coverage(w, plan)
    log(f"plan: {len(plan.units)} training units, {len(plan.cells)} cells, {len(plan.skipped)} skipped; "
        f"{eval_n} samples of {suite.data.plugin} split {suite.eval_split!r}")
    return plan


def _check_dataset(w: _Where, suite: Suite, registry: Registry, dataset: Dataset) -> dict[str, str]:
    """The evaluated split exists and every split yields a well-formed first batch; returns the
    manifests (a dataset that builds or caches itself does so here, with the training thread count:
    numerics.py)."""
    if suite.eval_split not in dataset.splits():
        raise w.error("eval.split", 0,
                      f"dataset {suite.data.plugin!r} has no split {suite.eval_split!r}; it has: {', '.join(dataset.splits())}")
    dentry = registry.entry("dataset", suite.data.plugin)
    with guard(dentry, "the plan", "manifest()"), training_threads():
        manifests = {s: dataset.manifest(s) for s in dataset.splits()}
    for split in dataset.splits():  # before any training: a malformed dataset is a clear error
        with guard(dentry, f"the plan (split {split!r})", "batches()"):
            first = next(iter(dataset.batches(split, 2)), None)
        if first is None:
            raise dentry.error(f"expected split {split!r} to yield at least one batch, got none", "the plan")
        check_batch(first, dataset, suite.data.plugin, dentry)
    return manifests


def _read_declarations(plan: Plan, parts: Components) -> None:
    """What the attacks and metrics declare (iterative, gradient-free, directions, headline values)."""
    suite, registry = plan.suite, plan.registry
    plan.iterative = {a.name: getattr(attack, "iterative", None) for a, attack in parts.attacks}
    plan.gradient_free = {a.name: bool(getattr(attack, "gradient_free", False)) for a, attack in parts.attacks}
    for mspec, metric in parts.metrics:
        check_directions(registry.entry("metric", mspec.plugin), metric, f"{suite.path}:{mspec.lines.get('', 0)} "
                         f"{mspec.where}")
    for _, metric in parts.metrics:
        for kind, value in (getattr(metric, "headline", None) or {}).items():
            plan.headline.setdefault(kind, value)


def _plan_model(w: _Where, plan: Plan, parts: Components, mspec: PluginSpec, modalities: tuple[str, ...]) -> None:
    """One training unit per defense, and its cells: every attack × threat × step the model can face."""
    suite, dataset = plan.suite, plan.dataset
    for dspec, defense in parts.defenses:
        unit = _unit(w, suite, mspec, dspec, defense, plan.manifests, modalities, plan.registry)
        plan.units.append(unit)
        for aspec, attack in parts.attacks:
            for tspec in suite.threats:
                reason = skip_reason(modalities, attack, tspec)
                if reason:
                    plan.skipped.append({"model": mspec.name, "defense": dspec.name, "attack": aspec.name,
                                         "threat": tspec.name, "reason": reason})
                    continue
                for step in range(tspec.steps):
                    threat = tspec.at(step, dataset.specs)
                    reuse = reuse_identity(suite, tspec, step, dataset.specs, attack)
                    plan.cells.append(PlannedCell(unit, aspec, attack, tspec, step, threat,
                                                  _cell_key(plan, unit, aspec, threat, reuse)))


def _check_coverage(w: _Where, plan: Plan) -> None:
    """A threat (or a whole suite) that yields no cell is a mistake in the suite: say why, per pair."""
    if not plan.suite.attacks:
        return  # a suite may train and report clean results only
    taken = {c.threat_spec.name for c in plan.cells}
    for tspec in plan.suite.threats:
        if tspec.name in taken:
            continue
        why = sorted({f"{s['model']} × {s['attack']}: {s['reason']}" for s in plan.skipped
                      if s["threat"] == tspec.name})
        if not plan.cells:
            why = sorted({f"{s['model']} × {s['attack']} × {s['threat']}: {s['reason']}" for s in plan.skipped})
            raise w.error("threats", 0, "no cell to run: every (model, attack, threat) combination is skipped — "
                          + "; ".join(why[:6]) + ("; ..." if len(why) > 6 else "")
                          + "; add a model that reads the threatened modality or change the threats")
        raise w.error(f"{tspec.where}", tspec.lines.get("name", 0),
                      f"threat {tspec.name!r} is taken by no model and attack: " + "; ".join(why[:4])
                      + ("; ..." if len(why) > 4 else "") + "; remove it or add a model that can face it")


def _model_modalities(w: _Where, mspec: PluginSpec, registry: Registry, dataset, probe=None) -> tuple[str, ...]:
    """Build the model once, leaving every random generator as it was, to learn what it reads, and
    probe it on a first batch (its output contract) before anything is trained."""
    states = (random.getstate(), np.random.get_state())
    entry = registry.entry("model", mspec.plugin)
    where = f"model {mspec.name!r} ({w.path}:{mspec.lines.get('', 0)} {mspec.where}), before training"
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_component(w, mspec, registry, task=dataset.task, specs=dataset.specs)
            if probe is not None:
                probe_model(entry, model, dataset.task, dict(probe.inputs), where)
            elif not isinstance(model, AVModel):
                raise entry.error(f"expected an avharness.AVModel, got {type(model).__name__}", where)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return tuple(model.modalities)


def provenance(registry: Registry, spec: PluginSpec) -> dict:
    """The plugin behind a suite entry: distribution, version (and source sha256 for a working tree)."""
    return registry.entry(spec.kind, spec.plugin).provenance()


def _identity(registry: Registry, spec: PluginSpec) -> dict:
    """A suite entry's identity with the plain plugin name (``avharness:pgd`` and ``pgd`` are one plugin)."""
    entry: Entry = registry.entry(spec.kind, spec.plugin)
    return {**spec.identity(), "plugin": entry.name}


def _unit(w, suite, mspec, dspec, defense, manifests, modalities, registry: Registry) -> Unit:
    init = None
    if mspec.load:  # a checkpoint enters by its bytes, not its path: moving the file reuses the store
        init = {"sha256": file_sha256(checkpoint_path(w, mspec)), "key_map": mspec.load.get("key_map")}
    identity = {
        "format": STORE_FORMAT,
        "model": {"plugin": registry.entry("model", mspec.plugin).name, "params": mspec.params},
        **({"init": init} if init else {}),
        "defense": _identity(registry, dspec),
        "data": {"data": _identity(registry, suite.data), "manifests": manifests},
        "seed": suite.seed,
    }
    # The training seed depends on what is trained, never on STORE_FORMAT nor on the plugins'
    # versions and sources: a store layout change or a plugin upgrade must not change the seed.
    fit_seed = derive_seed(suite.seed, "fit", sha256_json({k: v for k, v in identity.items() if k != "format"}))
    identity["plugins"] = {"model": provenance(registry, mspec), "defense": provenance(registry, dspec),
                           "data": provenance(registry, suite.data)}
    return Unit(mspec, dspec, defense, sha256_json(identity)[:20], fit_seed, init, modalities)


def _cell_key(plan: Plan, unit: Unit, aspec: PluginSpec, threat: ThreatModel, reuse: dict | None = None) -> str:
    return sha256_json({
        "format": STORE_FORMAT,
        "train": unit.key,
        "attack": _identity(plan.registry, aspec),
        "threat": threat.canonical(),
        "eval": plan.eval_id,
        "seed": plan.suite.seed,
        "metrics": [_identity(plan.registry, m) for m, _ in plan.metrics],
        # the code behind the attack and the metrics (the unit key covers model, defense and data)
        "plugins": {"attack": provenance(plan.registry, aspec),
                    "metrics": [provenance(plan.registry, m) for m, _ in plan.metrics]},
        # only when not the defaults, so cells stored before these options existed stay valid
        **({"judge": judge} if (judge := judge_rules(plan.suite)) else {}),
        # eval.reuse_sweep (sweep.py): on by default, so in the key when on; off keeps the old keys
        **({"reuse": reuse} if reuse is not None else {}),
        **({"precision": plan.suite.precision} if plan.suite.precision != "fp32" else {}),
    })[:20]


def skip_reason(modalities: tuple[str, ...], attack: object, tspec: ThreatSpec) -> str:
    """Why this (model, attack, threat) combination has no cells, or ""."""
    missing = [m for m in tspec.modalities if m not in modalities]
    if missing:
        return f"model reads {', '.join(modalities)}; threat attacks {', '.join(missing)}"
    unbounded = [m for m in tspec.modalities if tspec.norms[m] == "none"]
    if unbounded and not getattr(attack, "unbounded", False):
        return f"threat is unbounded (norm none) on {', '.join(unbounded)}; only corruptions take such threats"
    return ""


def judge_rules(suite: Suite) -> dict:
    """The suite's non-default evaluation rules (success rule, AP margin, label threshold)."""
    out = {"success": suite.success, "success_margin": suite.success_margin, "threshold": suite.threshold}
    defaults = {"success": "default", "success_margin": 0.1, "threshold": None}
    return {k: v for k, v in out.items() if v != defaults[k]}


def check_batch(batch: Batch, dataset: Dataset, plugin: str, entry: Entry | None = None) -> None:
    """A dataset's batches must match its declared specs; say which modality and shape when not.

    With the dataset's registry ``entry`` a mismatch is a ``PluginError`` (exit 3) naming it."""
    def fail(msg):
        return entry.error(msg, "a batch") if entry is not None else UserError(f"dataset {plugin!r} {msg}")

    for m, spec in dataset.specs.items():
        x = batch.inputs.get(m)
        if x is None:
            raise fail(f"declares modality {m!r} but its batch has only {sorted(batch.inputs)}")
        if tuple(x.shape[1:]) != tuple(spec.shape):
            raise fail(
                f"yielded {m!r} of shape {tuple(x.shape[1:])} per sample but its spec "
                f"says {tuple(spec.shape)}; fix the dataset plugin or its spec"
            )
    if len(batch.ids) != len(batch):
        raise fail(f"yielded {len(batch.ids)} sample ids for {len(batch)} samples")
