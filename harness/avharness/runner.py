"""Running a suite: train or load each (model, defense), then attack it cell by cell.

Finished checkpoints and cells go to the run's store as soon as they exist, keyed by hashes of
everything that determines them, so a second run reuses them and an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checks import BUDGET_SLACK, probe_model
from .contracts import AttackOutput, Evidence, FitContext, ModelEvidence
from .errors import NumericalError, UserError
from .model import AVModel, load_model, model_spec, save_model
from .plugins import Registry, get_registry
from .progress import Reporter
from .seeding import SampleRNG, derive_seed, seed_everything
from .store import Store, atomic_write_json, ensure_writable
from .success import resolve_rule
from .suite import PluginSpec, Suite, _Where, build_component, check_plugins, sha256_json
from .weights import checkpoint_path, file_sha256, load_weights

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
class Trained:
    spec: PluginSpec
    defense: PluginSpec
    key: str
    model: AVModel
    fit: dict
    reused: bool
    folder: Path
    clean_logits: torch.Tensor | None = None
    probe: dict = field(default_factory=dict)
    #: model-scope metric name -> its result
    metrics: dict = field(default_factory=dict)


@dataclass
class RunResult:
    suite: Suite
    registry: Registry
    dataset: object
    device: torch.device
    eval_n: int
    eval_n_original: int
    manifests: dict
    trained: list[Trained] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    stages: dict = field(default_factory=dict)
    #: attack name -> whether it iterates (None: the plugin does not say), for the validity checks
    iterative: dict = field(default_factory=dict)
    gradient_free: dict = field(default_factory=dict)


class Stages:
    """Wall time per stage (seconds), summed over repeated entries."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def run_suite(suite: Suite, out_dir: str | Path, device: str | None = None, limit: int | None = None,
              reporter: Reporter | None = None, registry: Registry | None = None) -> RunResult:
    reporter = reporter or Reporter(enabled=False)
    stages = Stages()
    started = time.perf_counter()
    out_dir = ensure_writable(out_dir)
    store = Store(out_dir / "store", log=reporter.log)
    w = _Where(suite.path)

    with stages("plugins"):
        registry = registry or get_registry()
        parts = check_plugins(suite, registry)
        dataset, attacks, defenses, metrics = parts.dataset, parts.attacks, parts.defenses, parts.metrics
        dev = resolve_device(device or suite.device)
        # Model-scope metrics (latent geometry) run once per trained model; the rest once per cell.
        model_metrics = [(m, x) for m, x in metrics if getattr(x, "scope", "cell") == "model"]
        metrics = [(m, x) for m, x in metrics if getattr(x, "scope", "cell") != "model"]

    with stages("data"):
        if suite.eval_split not in dataset.splits():
            raise w.error(
                "eval.split",
                0,
                f"dataset {suite.data.plugin!r} has no split {suite.eval_split!r}; it has: {', '.join(dataset.splits())}",
            )
        reporter.log(f"data: {suite.data.plugin} (building or loading its cache)")
        manifests = {s: dataset.manifest(s) for s in dataset.splits()}
        for split in dataset.splits():  # before any training: a malformed dataset is a clear error
            check_batch(next(iter(dataset.batches(split, 2))), dataset, suite.data.plugin)
        n_original = dataset.size(suite.eval_split)
        limit = limit if limit is not None else suite.limit
        eval_n = min(n_original, limit) if limit else n_original

    result = RunResult(suite, registry, dataset, dev, eval_n, n_original, manifests)
    result.iterative = {a.name: getattr(attack, "iterative", None) for a, attack in attacks}
    result.gradient_free = {a.name: bool(getattr(attack, "gradient_free", False)) for a, attack in attacks}
    data_id = {"data": suite.data.identity(), "manifests": manifests}
    eval_id = {"split": suite.eval_split, "n": eval_n, "manifest": manifests[suite.eval_split]}

    for mspec in suite.models:
        for dspec, defense in defenses:
            with stages("train"):
                tr = _train_or_load(suite, w, registry, dataset, mspec, dspec, defense, data_id, store, dev, reporter)
            result.trained.append(tr)
            with stages("checks"):
                first = next(iter(dataset.batches(suite.eval_split, min(suite.batch_size, eval_n), limit=eval_n)))
                tr.probe = probe_model(tr.model, dataset.task, first.to(dev))
            if model_metrics:
                with stages("model_metrics"):
                    _model_metrics(suite, dataset, tr, model_metrics, eval_id, eval_n, store, dev, reporter)
            for aspec, attack in attacks:
                for tspec in suite.threats:
                    reason = _skip_reason(tr.model, attack, tspec)
                    if reason:
                        result.skipped.append(
                            {
                                "model": mspec.name,
                                "defense": dspec.name,
                                "attack": aspec.name,
                                "threat": tspec.name,
                                "reason": reason,
                            }
                        )
                        continue
                    for step in range(tspec.steps):
                        cell = _cell(
                            suite,
                            dataset,
                            tr,
                            aspec,
                            attack,
                            tspec,
                            step,
                            metrics,
                            eval_id,
                            eval_n,
                            store,
                            stages,
                            dev,
                            reporter,
                        )
                        cell.update(model=mspec.name, defense=dspec.name, attack=aspec.name, threat=tspec.name)
                        result.cells.append(cell)
    stages.times["total"] = time.perf_counter() - started
    result.stages = {f"{k}_s": round(v, 3) for k, v in stages.times.items()}
    return result


def _skip_reason(model, attack, tspec) -> str:
    """Why this (model, attack, threat) combination has no cells, or ""."""
    missing = [m for m in tspec.modalities if m not in model.modalities]
    if missing:
        return f"model reads {', '.join(model.modalities)}; threat attacks {', '.join(missing)}"
    unbounded = [m for m in tspec.modalities if tspec.norms[m] == "none"]
    if unbounded and not getattr(attack, "unbounded", False):
        return f"threat is unbounded (norm none) on {', '.join(unbounded)}; only corruptions take such threats"
    return ""


def _cell(
    suite, dataset, tr, aspec, attack, tspec, step, metrics, eval_id, eval_n, store, stages, dev, reporter
) -> dict:
    """One cell from the store, or computed and stored."""
    threat = tspec.at(step, dataset.specs)
    key = sha256_json(
        {
            "format": STORE_FORMAT,
            "train": tr.key,
            "attack": aspec.identity(),
            "threat": threat.canonical(),
            "eval": eval_id,
            "seed": suite.seed,
            "metrics": [m.identity() for m, _ in metrics],
            # only when not the defaults, so cells stored before these options existed stay valid
            **({"judge": judge} if (judge := _judge(suite)) else {}),
        }
    )[:20]
    cell = store.load_cell(key)
    if cell is not None:
        cell["reused"] = True
        return cell
    if tr.clean_logits is None:
        with stages("clean"):
            tr.clean_logits = _clean_pass(suite, dataset, tr, dev, eval_n)
    with stages("attack"):
        if hasattr(attack, "prepare"):  # attacks fitted before use (e.g. universal perturbations)
            attack = attack.prepare(tr.model, dataset, threat, dataset.task, suite.eval_split)
        cell = _attack_cell(suite, dataset, tr, aspec, attack, tspec, step, threat, metrics, dev, eval_n, reporter)
    cell["key"] = key
    store.save_cell(key, cell)
    cell["reused"] = False
    return cell


def _judge(suite) -> dict:
    """The suite's non-default evaluation rules (success rule, AP margin, label threshold)."""
    out = {"success": suite.success, "success_margin": suite.success_margin, "threshold": suite.threshold}
    defaults = {"success": "default", "success_margin": 0.1, "threshold": None}
    return {k: v for k, v in out.items() if v != defaults[k]}


def eval_task(suite, task):
    """The dataset's task with the suite's label threshold (a probability) as a logit."""
    if suite.threshold is None:
        return task
    import dataclasses
    import math

    return dataclasses.replace(task, threshold=math.log(suite.threshold / (1 - suite.threshold)))


def _train_or_load(suite, w, registry, dataset, mspec, dspec, defense, data_id, store, dev, reporter) -> Trained:
    model_id = {"plugin": mspec.plugin, "params": mspec.params}
    init = None
    if mspec.load:  # a checkpoint enters by its bytes, not its path: moving the file reuses the store
        path = checkpoint_path(w, mspec)
        init = {"sha256": file_sha256(path), "key_map": mspec.load.get("key_map")}
    identity = {
        "format": STORE_FORMAT,
        "model": model_id,
        **({"init": init} if init else {}),
        "defense": dspec.identity(),
        "data": data_id,
        "seed": suite.seed,
    }
    key = sha256_json(identity)[:20]
    folder = store.model_dir(key)
    label = f"{mspec.name} ({dspec.name})"
    if store.has_model(key):
        try:
            model = load_model(folder).to(dev).eval()
            fit = json.loads((folder / "fit.json").read_text())
            reporter.log(f"model {label}: reusing checkpoint {folder}")
            return Trained(mspec, dspec, key, model, fit, True, folder)
        except Exception as exc:  # a damaged checkpoint is retrained, not fatal: nothing is lost
            reporter.log(f"model {label}: checkpoint {folder} is unreadable ({type(exc).__name__}: {exc}); retraining")

    # The training seed depends on what is trained, never on STORE_FORMAT: a store layout change
    # must not change any number.
    fit_seed = derive_seed(suite.seed, "fit", sha256_json({k: v for k, v in identity.items() if k != "format"}))
    seed_everything(fit_seed)
    model = build_component(w, mspec, registry, task=dataset.task, specs=dataset.specs)
    if not isinstance(model, AVModel):
        raise TypeError(f"model plugin {mspec.plugin!r} returned {type(model).__name__}, not an avharness.AVModel")
    loaded = None
    if init:
        try:
            loaded = load_weights(model, checkpoint_path(w, mspec), key_map=mspec.load.get("key_map"))
        except UserError as exc:
            raise w.error(
                f"{mspec.where}.checkpoint", mspec.lines.get("checkpoint", mspec.lines[""]), str(exc)
            ) from None
        reporter.log(f"model {label}: weights from {loaded['path']} (sha256 {loaded['sha256'][:12]})")
    model.to(dev).train()
    ctx = FitContext(device=dev, seed=fit_seed, progress=reporter.task, log=reporter.log)
    t = time.perf_counter()
    fit = dict(defense.fit(model, dataset, ctx) or {})
    fit.setdefault("wall_s", round(time.perf_counter() - t, 3))
    fit["defense"] = dspec.identity()
    if loaded:
        fit["init"] = loaded  # the weights it started from: path, sha256, key map, keys left out
    model.eval()
    save_model(model, model_spec(mspec.plugin, mspec.params, dataset.task, dataset.specs), folder)
    atomic_write_json(folder / "fit.json", fit)  # written last: marks the checkpoint complete
    reporter.log(
        f"model {label}: "
        + (f"trained in {fit['wall_s']:.1f}s" if getattr(defense, "trains", True) else "evaluated as loaded")
    )
    return Trained(mspec, dspec, key, model, fit, False, folder)


def check_batch(batch, dataset, plugin: str) -> None:
    """A dataset's batches must match its declared specs; say which modality and shape when not."""
    for m, spec in dataset.specs.items():
        x = batch.inputs.get(m)
        if x is None:
            raise UserError(f"dataset {plugin!r} declares modality {m!r} but its batch has only {sorted(batch.inputs)}")
        if tuple(x.shape[1:]) != tuple(spec.shape):
            raise UserError(
                f"dataset {plugin!r} yielded {m!r} of shape {tuple(x.shape[1:])} per sample but its spec "
                f"says {tuple(spec.shape)}; fix the dataset plugin or its spec"
            )
    if len(batch.ids) != len(batch):
        raise UserError(f"dataset {plugin!r} yielded {len(batch.ids)} sample ids for {len(batch)} samples")


def _model_metrics(suite, dataset, tr: Trained, model_metrics, eval_id, eval_n, store, dev, reporter) -> None:
    cache: dict[str, tuple] = {}

    @torch.no_grad()
    def latents(split: str):
        if split not in cache:
            limit = eval_n if split == suite.eval_split else None
            parts, targets, ids = {}, [], []
            for batch in dataset.batches(split, suite.batch_size, limit=limit):
                for name, z in tr.model.embed(batch.to(dev).inputs).items():
                    parts.setdefault(name, []).append(z.float().cpu())
                targets.append(batch.target.cpu())
                ids.extend(batch.ids)
            cache[split] = ({k: torch.cat(v) for k, v in parts.items()}, torch.cat(targets), ids)
        return cache[split]

    ev = ModelEvidence(task=dataset.task, model=tr.model, seed=suite.seed, eval_split=suite.eval_split, latents=latents)
    for mspec, metric in model_metrics:
        key = sha256_json(
            {"format": STORE_FORMAT, "train": tr.key, "metric": mspec.identity(), "eval": eval_id, "seed": suite.seed}
        )[:20]
        path = store.root / "model_metrics" / f"{key}.json"
        stored = store.load_model_metric(path)
        if stored is not None:
            tr.metrics[mspec.name] = stored
            continue
        reporter.log(f"model {tr.spec.name}: {mspec.name}")
        t = time.perf_counter()
        result = dict(metric.compute_model(ev))
        result["wall_s"] = round(time.perf_counter() - t, 3)
        result["higher_is_better"] = dict(metric.higher_is_better)
        atomic_write_json(path, result)
        tr.metrics[mspec.name] = json.loads(path.read_text())  # as stored: NaN -> null, int keys -> str


def _finite(t: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise NumericalError(f"{what} contain NaN or inf; check the model's inputs, weights and training loss")
    return t


@torch.no_grad()
def _clean_pass(suite, dataset, tr: Trained, dev, n) -> torch.Tensor:
    out = []
    for batch in dataset.batches(suite.eval_split, suite.batch_size, limit=n):
        check_batch(batch, dataset, suite.data.plugin)
        batch = batch.to(dev)
        out.append(tr.model(batch.inputs).float().cpu())
    return _finite(torch.cat(out), f"clean logits of model {tr.spec.name!r}")


def _attack_cell(suite, dataset, tr, aspec, attack, tspec, step, threat, metrics, dev, n, reporter) -> dict:
    task = eval_task(suite, dataset.task)
    t0 = time.perf_counter()
    ids, targets, adv_logits = [], [], []
    stats = {m: {"linf": [], "l2": [], "signal_l2": []} for m in threat.modalities}
    attack_stats: dict[str, float] = {}
    rng_key = f"{sha256_json(aspec.identity())[:12]}|{threat.canonical()}"
    label = f"{aspec.name} {tspec.name} eps#{step} on {tr.spec.name}"
    advance = reporter.task(label, (n + suite.batch_size - 1) // suite.batch_size)
    for batch in dataset.batches(suite.eval_split, suite.batch_size, limit=n):
        check_batch(batch, dataset, suite.data.plugin)
        batch = batch.to(dev)
        clean = {k: v for k, v in batch.inputs.items()}
        snapshot = {k: v.clone() for k, v in clean.items()}
        adv = attack.perturb(tr.model, clean, batch.target, threat, task, SampleRNG(suite.seed, rng_key, batch.ids))
        if isinstance(adv, AttackOutput):
            for k, v in adv.stats.items():
                attack_stats[k] = attack_stats.get(k, 0) + float(v)
            adv = adv.inputs
        _verify(aspec.name, threat, snapshot, clean, adv, tr.model.modalities)
        with torch.no_grad():
            logits = tr.model(adv).float().cpu()
        adv_logits.append(logits)
        ids.extend(batch.ids)
        targets.append(batch.target.cpu())
        for m in threat.modalities:
            delta = (adv[m] - snapshot[m]).flatten(1).double()
            stats[m]["linf"].append(delta.abs().amax(1).cpu())
            stats[m]["l2"].append(delta.norm(dim=1).cpu())
            stats[m]["signal_l2"].append(snapshot[m].flatten(1).double().norm(dim=1).cpu())
        advance()
    adv_logits = _finite(torch.cat(adv_logits), f"adversarial logits of model {tr.spec.name!r} under {label}")
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
    values, directions, details = {}, {}, {}
    for mspec, metric in metrics:
        out = metric.compute(ev)
        clash = sorted(set(out) & set(values))
        if clash:
            raise UserError(
                f"metric {mspec.name!r} reports {', '.join(clash)}, which an earlier metric of the suite "
                "already reported; list each metric once (its parameters choose the variant)"
            )
        values.update({k: float(v) for k, v in out.items()})
        directions.update(metric.higher_is_better)
        if hasattr(metric, "details"):  # per-class breakdowns and the like, kept beside the values
            details[mspec.name] = metric.details(ev)
    clean_ok, robust_ok = ev.clean_correct, ev.robust_correct
    attackable, success = ev.attackable, ev.success
    clean_pred, adv_pred = task.predict(ev.clean_logits), task.predict(adv_logits)
    samples = [
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
        for i, sid in enumerate(ids)
    ]
    return {
        "step": step,
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
        **({"details": details} if details else {}),
        "attack_stats": attack_stats,
        "wall_s": round(time.perf_counter() - t0, 3),
        "samples": samples,
    }


def _pred(p: torch.Tensor):
    return int(p) if p.dim() == 0 else [int(i) for i in p.nonzero().flatten()]


def _verify(attack: str, threat, snapshot, clean, adv, model_modalities) -> None:
    """Refuse a result that breaks the threat model: a wrong robustness number is worse than none."""
    for m, x in snapshot.items():
        if not torch.equal(clean[m], x):
            raise RuntimeError(f"attack {attack!r} modified its input tensor {m!r} in place (a plugin bug)")
        if m not in adv or adv[m].shape != x.shape:
            raise RuntimeError(f"attack {attack!r} returned no {m!r} input of shape {tuple(x.shape)} (a plugin bug)")
        if m not in threat.budgets:
            if not torch.equal(adv[m], x):
                raise RuntimeError(
                    f"attack {attack!r} changed modality {m!r}, which the threat does not allow (a plugin bug)"
                )
            continue
        b = threat.budgets[m]
        delta = (adv[m] - x).flatten(1).double()
        size = delta.abs().amax(1) if b.norm == "linf" else delta.norm(dim=1)
        slack = BUDGET_SLACK * max(b.eps, 1.0)  # float32 rounding of x + delta
        if b.norm != "none" and (b.eps == 0 and not torch.equal(adv[m], x) or (size > b.eps + slack).any()):
            raise RuntimeError(
                f"attack {attack!r} exceeded its {b.norm} budget {b.eps:g} on {m!r} "
                f"(max {float(size.max()):.6g}; a plugin bug)"
            )
        if (adv[m] < b.bounds[0]).any() or (adv[m] > b.bounds[1]).any():
            raise RuntimeError(f"attack {attack!r} left the valid range {list(b.bounds)} of {m!r} (a plugin bug)")
        if not torch.isfinite(adv[m]).all():
            raise NumericalError(f"attack {attack!r} produced NaN/inf in {m!r}")
