"""``avharness plugin check NAME``: the contract tests a plugin must pass, runnable by its author.

The same checks are importable for a plugin's own tests from ``avharness.testing``. Each check
returns ``Check(name, ok, detail)`` (a 3-tuple).

- Models: random inputs inside a dataset's specs (``--data``, default avdigits): an AVModel, finite
  logits of shape [B, classes] (not probabilities), inputs untouched, forward == head(embed()),
  deterministic, finite non-zero input gradients.
- Attacks: a small reference model the kit trains in well under a second on a synthetic
  two-modality task. Budgets and range hold (NaN/inf fails), eps = 0 is a no-op, unattacked
  modalities stay bit-identical, seeded reproducibility, and the attack must actually attack: a
  gradient attack must lower accuracy below what random noise of the same budget does; a
  gradient-free one (``gradient_free = True``) below clean accuracy; a corruption
  (``unbounded = True``) must change its inputs.
- Defenses: ``fit`` on a tiny synthetic dataset changes the model (unless ``trains = False``) and
  returns the cost facts (``backward_samples``; ``wall_s`` when given is seconds).
- Datasets: task and specs, batches match the specs, ids unique and stable, splits disjoint, order
  and manifest deterministic.
- Metrics: ``higher_is_better`` declared; on multiclass and multi-label evidence every value is a
  float or null with a direction (a metric may refuse one task kind with a UserError).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn

from .contracts import AttackOutput, Defense, Evidence, FitContext, Metric, ModelMetric
from .data import Batch, InputSpec
from .enforce import fit_facts, looks_like_probabilities, metric_values
from .errors import PluginError, UserError
from .model import AVModel
from .plugins import KINDS, Entry, Registry
from .seeding import SampleRNG, generator
from .task import Task
from .threat import Budget, ThreatModel

N = 8
#: the synthetic task attacks and defenses are checked on
SPECS = {"audio": InputSpec((6, 5), (-1.0, 1.0), "synthetic"), "video": InputSpec((2, 4, 4), (0.0, 1.0), "synthetic")}


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str = ""


class _Reference(AVModel):
    """A small model over both synthetic modalities: what attacks and defenses are checked against."""

    head_latent = "fused"

    def __init__(self, task: Task, specs: dict[str, InputSpec]):
        super().__init__()
        self.modalities = tuple(sorted(specs))
        self.enc = nn.ModuleDict({m: nn.Linear(int(torch.tensor(s.shape).prod()), 16) for m, s in specs.items()})
        self.out = nn.Linear(16, task.num_classes)

    def embed(self, inputs):
        z = {m: self.enc[m](inputs[m].flatten(1)) for m in self.modalities}
        z["fused"] = torch.tanh(sum(z[m] for m in self.modalities))
        return z

    def head(self, z):
        return self.out(z)


class SyntheticAV:
    """A deterministic two-modality dataset: class prototypes plus noise, splits train/val/test.

    ``n`` samples per split; ``kind`` multiclass (4 classes) or multilabel (3 labels). Satisfies
    ``avharness.Dataset`` (batches with a ``shuffle`` generator, ``limit``, manifests)."""

    def __init__(self, n: int = 64, kind: str = "multiclass", seed: int = 0, noise: float = 1.0,
                 specs: dict[str, InputSpec] | None = None):
        self.specs = dict(specs or SPECS)
        k = 4 if kind == "multiclass" else 3
        self.task = Task(kind, tuple(f"c{i}" for i in range(k)))
        g = generator(seed, "synthetic-av")
        self._data = {}
        protos = {m: torch.randn(k, *s.shape, generator=g) for m, s in self.specs.items()}
        for split in ("train", "val", "test"):
            if kind == "multiclass":
                y = torch.arange(n) % k
                mix = nn.functional.one_hot(y, k).float()
            else:
                y = (torch.rand(n, k, generator=g) < 0.5).float()
                mix = y
            x = {}
            for m, s in self.specs.items():
                lo, hi = s.bounds
                mid, half = (lo + hi) / 2, (hi - lo) / 2
                raw = torch.einsum("nk,k...->n...", mix, protos[m]) + noise * torch.randn(n, *s.shape, generator=g)
                x[m] = (mid + half * 0.5 * torch.tanh(raw)).clamp(lo, hi)
            self._data[split] = (x, y)

    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "test")

    def size(self, split: str) -> int:
        return len(self._data[split][1])

    def batches(self, split: str, batch_size: int, *, shuffle: torch.Generator | None = None,
                limit: int | None = None) -> Iterator[Batch]:
        x, y = self._data[split]
        n = len(y) if limit is None else min(limit, len(y))
        order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield Batch({m: v[idx] for m, v in x.items()}, y[idx], [f"{split}/{int(j)}" for j in idx])

    def manifest(self, split: str) -> str:
        return f"synthetic-{split}-{self.size(split)}"


_TRAINED: dict = {}


def reference_model(data: SyntheticAV | None = None, steps: int = 150) -> AVModel:
    """The reference model trained on the synthetic task (full-batch Adam; cached per process)."""
    data = data or SyntheticAV()
    key = (id(data), steps)
    if key not in _TRAINED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _Reference(data.task, data.specs)
            opt = torch.optim.Adam(model.parameters(), lr=0.01)
            batch = next(iter(data.batches("train", 10**9)))
            for _ in range(steps):
                opt.zero_grad()
                data.task.loss(model(batch.inputs), batch.target).mean().backward()
                opt.step()
        _TRAINED[key] = (data, model.eval())
    return _TRAINED[key][1]


_DATA: SyntheticAV | None = None


def _synthetic() -> SyntheticAV:
    global _DATA
    if _DATA is None:
        _DATA = SyntheticAV()
    return _DATA


def _inputs(specs: dict[str, InputSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    g = generator(seed, "conformance")
    out = {}
    for m, s in sorted(specs.items()):
        lo, hi = s.bounds
        # an open range (a log feature has no ceiling) is sampled over a few units from its finite end
        lo = lo if math.isfinite(lo) else (hi - 6.0 if math.isfinite(hi) else -3.0)
        hi = hi if math.isfinite(hi) else lo + 6.0
        out[m] = lo + (hi - lo) * torch.rand((N, *s.shape), generator=g)
    return out


def _target(task: Task) -> torch.Tensor:
    if task.kind == "multiclass":
        return torch.arange(N) % task.num_classes
    return (torch.arange(N * task.num_classes).view(N, -1) % 3 == 0).float()


def _kind_of(name: str, registry: Registry, kind: str | None) -> str:
    if kind:
        return kind
    kinds = [k for k in KINDS if registry.has(k, name)]
    if not kinds:
        raise UserError(f"no plugin named {name!r}; see `avharness list`")
    if len(kinds) > 1:
        raise UserError(f"{name!r} names a {' and a '.join(kinds)}; say which with --kind")
    return kinds[0]


def _build(entry: Entry | None, label: str, factory, **kw):
    """Call a factory: a ValueError/TypeError/UserError is a parameter problem (UserError, exit 2)."""
    try:
        return factory(**kw)
    except UserError as exc:
        raise UserError(f"{label}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{label} rejected its parameters: {type(exc).__name__}: {exc}; pass others with --param "
                        "KEY=VALUE") from None


def check_plugin(name: str, registry: Registry, kind: str | None = None, data: str = "avdigits",
                 params: dict | None = None, data_params: dict | None = None) -> list[Check]:
    kind = _kind_of(name, registry, kind)
    entry = registry.entry(kind, name)
    base = entry.factory
    params = dict(params or {})
    try:
        sig = inspect.signature(base)
        needed = [n for n, p in sig.parameters.items() if p.default is p.empty and n not in ("task", "specs")
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in params]
    except (TypeError, ValueError):
        needed = []
    if needed:
        raise UserError(f"{kind} {name!r} needs parameter(s) {', '.join(needed)}; pass them with --param, "
                        f"e.g. --param {needed[0]}=VALUE (VALUE is read as YAML)")
    label = f"{kind} {name!r} (from {entry.dist} {entry.version})"

    def factory(**kw):
        return base(**kw, **params)

    try:
        if kind == "model":
            ds = _build(None, f"dataset {data!r}", registry.get("dataset", data), **(data_params or {}))
            try:
                _build(entry, label, factory, task=ds.task, specs=ds.specs)
            except UserError as exc:
                raise UserError(f"{exc} (checked on dataset {data!r}; choose one whose inputs the model reads with "
                                "--data NAME --data-param key=value)") from None
            return check_model(lambda: factory(task=ds.task, specs=ds.specs), ds.task, ds.specs)
        obj = _build(entry, label, factory)
    except UserError:
        raise
    except Exception as exc:  # the factory itself broke: a failed check, not a crash
        return [Check("factory builds", False, f"{type(exc).__name__}: {exc}")]
    return {"attack": check_attack, "metric": check_metric, "dataset": check_dataset, "defense": check_defense}[kind](obj)


def _run(results, name, fn, refusal_ok=False):
    try:
        ok, detail = fn()
    except UserError as exc:  # a clear refusal of a threat the attack cannot express is allowed
        ok, detail = refusal_ok, f"refused: {exc}"
    except Exception as exc:  # a failing contract is a result, not a crash
        ok, detail = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    results.append(Check(name, bool(ok), detail))


def check_model(build: Callable[[], object], task: Task, specs: dict[str, InputSpec]) -> list[Check]:
    results: list[Check] = []
    torch.manual_seed(0)
    try:
        model = build()
    except Exception as exc:
        return [Check("factory builds", False, f"{type(exc).__name__}: {exc}")]
    if not isinstance(model, AVModel):
        return [Check("is an AVModel", False, type(model).__name__)]
    model.eval()
    x = _inputs(specs)
    snapshot = {m: v.clone() for m, v in x.items()}
    _run(results, "is an AVModel", lambda: (True, type(model).__name__))
    _run(results, "declares modalities the data has",
         lambda: (bool(model.modalities) and set(model.modalities) <= set(specs), f"{model.modalities} vs {sorted(specs)}"))

    def shapes():
        out = model(x)
        return (tuple(out.shape) == (N, task.num_classes) and bool(torch.isfinite(out).all()),
                f"logits {tuple(out.shape)}, expected {(N, task.num_classes)}, finite")
    _run(results, "logits of shape [B, classes], finite", shapes)

    def logits():
        why = looks_like_probabilities(model(x).detach().float(), task.kind)
        return not why, f"outputs look like probabilities: {why}" if why else "raw logits"
    _run(results, "returns logits, not probabilities", logits)
    _run(results, "does not mutate its inputs", lambda: (all(torch.equal(x[m], snapshot[m]) for m in x), ""))

    def embed():
        z = model.embed(x)
        ok = isinstance(z, dict) and model.head_latent in z and torch.equal(model.head(z[model.head_latent]), model(x))
        return ok, f"latents {sorted(z) if isinstance(z, dict) else type(z).__name__}, head_latent {model.head_latent!r}"
    _run(results, "forward == head(embed()[head_latent])", embed)
    _run(results, "deterministic in eval mode", lambda: (torch.equal(model(x), model(x)), ""))

    def grads():
        leaves = {m: x[m].clone().requires_grad_(True) for m in model.modalities}
        loss = task.loss(model({**x, **leaves}), _target(task)).sum()
        g = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        finite = all(t is not None and torch.isfinite(t).all() for t in g)
        nonzero = all(t is not None and t.abs().sum() > 0 for t in g)
        ok = finite and nonzero
        return ok, "finite and non-zero for every modality read" if ok else "missing, NaN or all-zero"

    _run(results, "input gradients finite and non-zero", grads)
    return results


def _accuracy(model, inputs, target) -> float:
    with torch.no_grad():
        return float((model(inputs).argmax(1) == target).float().mean())


def _noise(x: torch.Tensor, budget: Budget, g: torch.Generator) -> torch.Tensor:
    """Random noise of the full budget: random signs (linf) or a random direction (l2), clipped."""
    if budget.norm == "linf":
        d = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x.dtype) * budget.eps
    else:
        d = torch.randn(x.shape, generator=g).to(x.dtype)
        d = d * (budget.eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (x.dim() - 1)))
    return (x + d).clamp(*budget.bounds)


#: the threats of the effectiveness check on the synthetic task, tried in order until the attack takes
#: one (modalities, norm, eps): a one-step sign-gradient attack breaks about 90% of the samples at
#: linf 0.2 on both modalities (95% at 0.4 on audio alone), random noise of the same size about 2%
EFFECT_THREATS = ((("audio", "video"), "linf", 0.2), (("audio", "video"), "l2", 1.5),
                  (("audio",), "linf", 0.4), (("audio",), "l2", 3.0))
EFFECT_N = 32


def check_attack(attack: object, task: Task | None = None) -> list[Check]:
    """Contract and effectiveness checks of an attack object (see the module docstring)."""
    results: list[Check] = []
    task = task or Task("multiclass", tuple("abcd"))
    specs = SPECS
    torch.manual_seed(0)
    model = _Reference(task, specs).eval()
    x = _inputs(specs, 1)
    perturb = _attack_runner(attack, task, specs, model, x, _target(task), [f"s{i}" for i in range(N)])
    _run(results, "eps = 0 is a no-op", lambda: _zero_is_noop(perturb, x, specs))
    for norm, eps in (("linf", {"audio": 0.1, "video": 0.05}), ("l2", {"audio": 0.5, "video": 0.3})):
        for scope in (("audio",), ("video",), ("audio", "video")):
            _run(results, f"budget and range hold ({norm}, {'+'.join(scope)})",
                 lambda norm=norm, eps=eps, scope=scope: _budget_holds(perturb, x, specs, norm, eps, scope),
                 refusal_ok=True)
    _run(results, "seeded reproducibility", lambda: _seeded(perturb, specs))
    _run(results, "actually attacks", lambda: _effect(attack, perturb))
    return results


def _attack_runner(attack: object, task: Task, specs: dict, model: nn.Module, x: dict, y: torch.Tensor,
                   ids: list[str]) -> Callable[..., dict]:
    """``perturb(threat, key=...)``: one call of the attack (prepared first when it has ``prepare``) on a
    fixed batch, checking that it returns a dict of inputs and leaves its input tensors alone."""

    def perturb(threat, key="k", model=model, x=x, y=y, ids=ids, data=None):
        snap = {m: v.clone() for m, v in x.items()}
        data = data or _Fixed(task, specs, x, y)
        run = attack.prepare(model, data, threat, task, "test") if hasattr(attack, "prepare") else attack
        out = run.perturb(model, x, y, threat, task, SampleRNG(0, key, ids))
        out = out.inputs if isinstance(out, AttackOutput) else out
        if not isinstance(out, dict):
            raise AssertionError(f"perturb() returned {type(out).__name__}, not a dict of inputs")
        if not all(torch.equal(x[m], snap[m]) for m in x):
            raise AssertionError("the attack modified its input tensors")
        return out

    return perturb


def _zero_is_noop(perturb: Callable[..., dict], x: dict, specs: dict) -> tuple[bool, str]:
    t = ThreatModel("zero", {m: Budget("linf", 0.0, specs[m].bounds) for m in specs})
    out = perturb(t)
    return all(torch.equal(out[m], x[m]) for m in x), "eps = 0 leaves every input bit-identical"


def _budget_holds(perturb: Callable[..., dict], x: dict, specs: dict, norm: str, eps: dict[str, float],
                  scope: tuple[str, ...]) -> tuple[bool, str]:
    """Every attacked modality within its ε (after clipping) and its range; the others untouched."""
    t = ThreatModel("t", {m: Budget(norm, eps[m], specs[m].bounds) for m in scope})
    out = perturb(t)
    worst = []
    for m in x:
        if m not in out or not isinstance(out[m], torch.Tensor) or out[m].shape != x[m].shape:
            return False, f"returned no {m!r} of shape {tuple(x[m].shape)}"
        if m not in scope:
            if not torch.equal(out[m], x[m]):
                return False, f"changed unattacked modality {m!r}"
            continue
        if not bool(torch.isfinite(out[m]).all()):
            return False, f"{m}: output contains NaN or inf"
        d = (out[m] - x[m]).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        lo, hi = specs[m].bounds
        if (size > eps[m] * (1 + 1e-5) + 1e-6).any():
            return False, f"{m}: {norm} size {float(size.max()):.4g} > eps {eps[m]}"
        if out[m].min() < lo or out[m].max() > hi:
            return False, f"{m}: values [{float(out[m].min()):.4g}, {float(out[m].max()):.4g}] outside {[lo, hi]}"
        worst.append(f"{m} {float(size.max()):.3g}/{eps[m]}")
    return True, ", ".join(worst)


def _seeded(perturb: Callable[..., dict], specs: dict) -> tuple[bool, str]:
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):  # the first single-modality threat it accepts
        t = ThreatModel("t", {"audio": Budget(norm, eps, specs["audio"].bounds)})
        try:
            a = perturb(t)
        except UserError:
            continue
        return torch.equal(a["audio"], perturb(t)["audio"]), f"same seed twice ({norm}), identical output"
    return False, "refused every single-modality threat"


class _Fixed:
    """One fixed batch as a dataset with identical "train", "val" and "test" splits (for attacks
    fitted before use)."""

    def __init__(self, task, specs, x, y):
        self.task, self.specs, self.x, self.y = task, specs, x, y

    def splits(self):
        return ("train", "val", "test")

    def size(self, split):
        return len(self.y)

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        yield Batch(dict(self.x), self.y, [f"{split}/{i}" for i in range(len(self.y))])

    def manifest(self, split):
        return "fixed"


def _effect(attack, perturb):
    """The attack must do what attacks are for, on a model trained by the kit."""
    data = _synthetic()
    model = reference_model(data)
    batch = next(iter(data.batches("test", EFFECT_N, limit=EFFECT_N)))
    x, y = batch.inputs, batch.target
    ids = list(batch.ids)
    if getattr(attack, "unbounded", False):
        t = ThreatModel("none", {"audio": Budget("none", 0.0, data.specs["audio"].bounds)})
        out = perturb(t, model=model, x=x, y=y, ids=ids, data=data)
        changed = not torch.equal(out["audio"], x["audio"])
        return changed, ("changes its inputs under an unbounded threat (a corruption: not required to beat noise)"
                         if changed else "left every input unchanged under an unbounded threat: a no-op")
    clean = _accuracy(model, x, y)
    last_refusal = None
    for mods, norm, eps in EFFECT_THREATS:
        t = ThreatModel("t", {m: Budget(norm, eps, data.specs[m].bounds) for m in mods})
        try:
            out = perturb(t, model=model, x=x, y=y, ids=ids, data=data)
        except UserError as exc:
            last_refusal = exc
            continue
        adv = _accuracy(model, {m: out[m] for m in x}, y)
        g = generator(0, "noise")
        noise = _accuracy(model, {m: _noise(v, t.budgets[m], g) if m in mods else v for m, v in x.items()}, y)
        facts = (f"{norm} eps {eps} on {'+'.join(mods)}: clean accuracy {clean:.2f}, under attack {adv:.2f}, "
                 f"random noise {noise:.2f}")
        if adv >= clean:
            return False, f"does not lower accuracy at all — a no-op? ({facts})"
        if getattr(attack, "gradient_free", False):
            return True, f"gradient-free: beats no-op ({facts})"
        if adv >= noise:
            return False, f"not stronger than random noise of the same budget ({facts})"
        return True, facts
    raise UserError(f"refused every threat of the effectiveness check ({last_refusal})")


def check_defense(defense: Defense) -> list[Check]:
    """``fit`` on a tiny synthetic dataset: changes the model, returns the cost facts."""
    results: list[Check] = []
    data = SyntheticAV(n=32)
    torch.manual_seed(0)
    model = _Reference(data.task, data.specs)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trains = getattr(defense, "trains", True)
    out: dict = {}

    def fit():
        model.train()
        t = time.perf_counter()
        facts = defense.fit(model, data, FitContext(device=torch.device("cpu"), seed=0))
        out["wall"] = time.perf_counter() - t
        out["facts"] = facts
        return True, f"{out['wall']:.2f}s"

    _run(results, "fit runs on a tiny dataset", fit)
    if "facts" not in out:
        return results
    entry = Entry("defense", type(defense).__name__, None, "?", "?", "")

    def facts():
        try:
            f = fit_facts(entry, out["facts"], "")
        except PluginError as exc:
            return False, str(exc).split(": ", 1)[-1]
        return True, f"backward_samples {f['backward_samples']}" + (f", wall_s {f['wall_s']}" if "wall_s" in f else "")

    _run(results, "returns the cost facts (backward_samples, wall_s)", facts)

    def changed():
        diff = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        if not trains:
            return not diff, "trains = False: the model is evaluated as loaded, and fit left it unchanged" if not diff \
                else "trains = False, but fit changed the model"
        return diff, "the weights changed" if diff else "fit left every weight unchanged (a defense that trains must train)"

    _run(results, "fit changes the model", changed)

    _run(results, "model usable after fit", lambda: (bool(torch.isfinite(model(next(iter(data.batches(
        "test", 8))).inputs)).all()), "finite logits after fit"))
    return results


def check_metric(metric: Metric | ModelMetric) -> list[Check]:
    results: list[Check] = []
    directions = getattr(metric, "higher_is_better", None)
    ok_dirs = isinstance(directions, dict) and bool(directions) and all(
        isinstance(k, str) and isinstance(v, bool) for k, v in directions.items())
    results.append(Check("declares higher_is_better", ok_dirs, repr(directions)))
    if getattr(metric, "scope", "cell") == "model":
        results.append(Check("scope", True, "model-scope metric: checked with a run (compute_model needs a trained model)"))
        return results
    g = generator(0, "metric")
    perturbation = {
        "audio": {
            "linf": torch.full((N,), 0.1, dtype=torch.float64),
            "l2": torch.full((N,), 0.3, dtype=torch.float64),
            "signal_l2": torch.full((N,), 3.0, dtype=torch.float64),
        }
    }
    threat = ThreatModel("t", {"audio": Budget("linf", 0.1, (-1.0, 1.0))})
    accepted = []
    entry = Entry("metric", type(metric).__name__, None, "?", "?", "")
    for kind in ("multiclass", "multilabel"):  # a metric may refuse one task kind with a UserError
        task = Task(kind, tuple("abcd"))
        ev = Evidence(task, [str(i) for i in range(N)], _target(task), torch.randn(N, 4, generator=g),
                      torch.randn(N, 4, generator=g), threat, perturbation)

        def values(ev=ev, kind=kind):
            out = metric.compute(ev)
            if not ok_dirs:
                return False, "no higher_is_better to check the values against"
            try:
                vals = metric_values(entry, out, directions, "")
            except PluginError as exc:
                return False, str(exc).split(": ", 1)[-1]
            accepted.append(kind)
            again = metric_values(entry, metric.compute(ev), directions, "")
            same = all(v == again.get(k) or (math.isnan(v) and math.isnan(again.get(k, 0.0))) for k, v in vals.items())
            if not same:
                return False, "two computations on the same evidence differ"
            return bool(vals), f"values {sorted(vals)}, each a float with a direction" if vals else "returned no values"

        _run(results, f"values are floats with directions ({kind})", values, refusal_ok=True)
    results.append(Check("accepts a task kind", bool(accepted), ", ".join(accepted) or "refused every task kind"))
    return results


def check_dataset(ds: object) -> list[Check]:
    results: list[Check] = []
    limit = 64
    _run(results, "task and specs", lambda: (
        isinstance(ds.task, Task) and isinstance(ds.specs, dict) and bool(ds.specs)
        and all(isinstance(s, InputSpec) for s in ds.specs.values()), repr(ds.task.kind)))
    try:
        splits = tuple(ds.splits())
    except Exception as exc:
        results.append(Check("splits", False, f"{type(exc).__name__}: {exc}"))
        return results
    seen: dict[str, list[str]] = {}  # split -> its ids, filled by _stable_split for the disjointness check
    for split in splits:
        _run(results, f"batches match the specs ({split})", lambda split=split: _batches_match_specs(ds, split, limit))
        _run(results, f"ids unique and stable, order deterministic ({split})",
             lambda split=split: _stable_split(ds, split, limit, seen))
    _run(results, "splits disjoint", lambda: _disjoint(seen))

    def manifest():
        a = [ds.manifest(s) for s in splits]
        return a == [ds.manifest(s) for s in splits] and all(isinstance(x, str) and x for x in a), "stable strings"

    _run(results, "manifest deterministic", manifest)
    return results


def _batches_match_specs(ds: object, split: str, limit: int) -> tuple[bool, str]:
    n = 0
    for b in ds.batches(split, 16, limit=limit):
        for m, s in ds.specs.items():
            x = b.inputs.get(m)
            if x is None:
                return False, f"batch lacks declared modality {m!r}"
            if tuple(x.shape[1:]) != tuple(s.shape):
                return False, f"{m!r}: per-sample shape {tuple(x.shape[1:])}, spec {tuple(s.shape)}"
            lo, hi = s.bounds
            if x.numel() and (float(x.min()) < lo or float(x.max()) > hi):
                return False, f"{m!r}: values outside the spec's bounds {[lo, hi]}"
        if len(b.ids) != len(b) or len(b.target) != len(b):
            return False, f"{len(b.ids)} ids, {len(b.target)} targets for {len(b)} samples"
        n += len(b)
    return n > 0, f"{n} samples read" if n else "no batches"


def _read_split(ds: object, split: str, limit: int) -> tuple[list[str], list[tuple]]:
    ids, xs = [], []
    for b in ds.batches(split, 16, limit=limit):
        ids.extend(b.ids)
        xs.append((b.target.clone(), {m: v.clone() for m, v in b.inputs.items()}))
    return ids, xs


def _stable_split(ds: object, split: str, limit: int, seen: dict[str, list[str]]) -> tuple[bool, str]:
    a_ids, a = _read_split(ds, split, limit)
    b_ids, b = _read_split(ds, split, limit)
    seen[split] = a_ids
    if len(set(a_ids)) != len(a_ids):
        return False, "sample ids repeat within the split"
    if a_ids != b_ids:
        return False, "two passes gave different ids or a different order"
    same = all(torch.equal(ta, tb) and all(torch.equal(xa[m], xb[m]) for m in xa)
               for (ta, xa), (tb, xb) in zip(a, b))
    return same, "ids unique, same ids, order and tensors in two passes" if same else "two passes differ in content"


def _disjoint(seen: dict[str, list[str]]) -> tuple[bool, str]:
    ids = {s: set(v) for s, v in seen.items()}
    clash = [(a, b) for i, a in enumerate(ids) for b in list(ids)[i + 1:] if ids[a] & ids[b]]
    return not clash, ("splits share sample ids: " + ", ".join(f"{a}/{b}" for a, b in clash)) if clash \
        else f"no shared ids among {', '.join(ids)}"


