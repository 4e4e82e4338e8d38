"""``avharness plugin check NAME``: the contract tests a plugin must pass, runnable by its author.

Models are checked on random inputs inside a dataset's specs (default: the dataset named by
``--data``); attacks on a small linear reference model over two synthetic modalities; metrics on
synthetic evidence. Each check returns (name, ok, detail).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from .contracts import AttackOutput, Evidence
from .data import InputSpec
from .errors import UserError
from .model import AVModel
from .plugins import KINDS, Registry
from .seeding import SampleRNG, generator
from .task import Task
from .threat import Budget, ThreatModel

N = 8


class _Reference(AVModel):
    """A linear model over both synthetic modalities: what attacks are checked against."""

    head_latent = "fused"

    def __init__(self, task: Task, specs: dict[str, InputSpec]):
        super().__init__()
        self.modalities = tuple(sorted(specs))
        self.enc = nn.ModuleDict({m: nn.Linear(int(torch.tensor(s.shape).prod()), 16) for m, s in specs.items()})
        self.out = nn.Linear(16, task.num_classes)

    def embed(self, inputs):
        return {"fused": torch.tanh(sum(self.enc[m](inputs[m].flatten(1)) for m in self.modalities))}

    def head(self, z):
        return self.out(z)


class _Synthetic:
    """The synthetic batch as a dataset with identical "train", "val" and "test" splits (for attacks
    that are fitted before use)."""

    def __init__(self, task, specs, x, y):
        self.task, self.specs, self.x, self.y = task, specs, x, y

    def splits(self):
        return ("train", "val", "test")

    def size(self, split):
        return N

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        from .data import Batch

        yield Batch(dict(self.x), self.y, [f"{split}/{i}" for i in range(N)])


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
    kinds = [k for k in KINDS if name in registry.entries[k]]
    if not kinds:
        raise UserError(f"no plugin named {name!r}; see `avharness list`")
    if len(kinds) > 1:
        raise UserError(f"{name!r} names a {' and a '.join(kinds)}; say which with --kind")
    return kinds[0]


def check_plugin(name: str, registry: Registry, kind: str | None = None, data: str = "avdigits",
                 params: dict | None = None, data_params: dict | None = None) -> list[tuple[str, bool, str]]:
    kind = _kind_of(name, registry, kind)
    base = registry.get(kind, name)
    params = dict(params or {})
    sig = inspect.signature(base)
    needed = [n for n, p in sig.parameters.items() if p.default is p.empty and n not in ("task", "specs")
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in params]
    if needed:
        raise UserError(f"{kind} {name!r} needs parameter(s) {', '.join(needed)}; pass them with --param, "
                        f"e.g. --param {needed[0]}=VALUE (VALUE is read as YAML)")

    def factory(**kw):
        return base(**kw, **params)
    if kind == "model":
        ds = registry.get("dataset", data)(**(data_params or {}))
        try:
            factory(task=ds.task, specs=ds.specs)
        except UserError as exc:
            raise UserError(f"{exc} (checked on dataset {data!r}; choose one whose inputs the model reads with "
                            "--data NAME --data-param key=value)") from None
        return check_model(lambda: factory(task=ds.task, specs=ds.specs), ds.task, ds.specs)
    if kind == "attack":
        return check_attack(factory())
    if kind == "metric":
        return check_metric(factory())
    if kind == "dataset":
        return check_dataset(factory())
    return [("factory builds", factory() is not None, f"{kind} plugins have no further contract tests yet")]


def _run(results, name, fn, refusal_ok=False):
    try:
        ok, detail = fn()
    except UserError as exc:  # a clear refusal of a threat the attack cannot express is allowed
        ok, detail = refusal_ok, f"refused: {exc}"
    except Exception as exc:  # a failing contract is a result, not a crash
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    results.append((name, bool(ok), detail))


def check_model(build, task: Task, specs: dict[str, InputSpec]) -> list:
    results = []
    torch.manual_seed(0)
    model = build()
    model.eval()
    x = _inputs(specs)
    snapshot = {m: v.clone() for m, v in x.items()}
    _run(results, "is an AVModel", lambda: (isinstance(model, AVModel), type(model).__name__))
    _run(results, "declares modalities the data has",
         lambda: (bool(model.modalities) and set(model.modalities) <= set(specs), f"{model.modalities} vs {sorted(specs)}"))

    def shapes():
        out = model(x)
        return out.shape == (N, task.num_classes) and torch.isfinite(out).all(), f"logits {tuple(out.shape)}"
    _run(results, "logits of shape [B, classes], finite", shapes)

    def logits():
        out = model(x)
        probs = bool(((out >= 0) & (out <= 1)).all()) and torch.allclose(out.sum(1), torch.ones(N), atol=1e-4)
        return not probs, "outputs look like probabilities (in [0,1], rows sum to 1)" if probs else "raw logits"
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


def check_attack(attack, task: Task | None = None) -> list:
    results = []
    task = task or Task("multiclass", tuple("abcd"))
    specs = {"audio": InputSpec((6, 5), (-1.0, 1.0)), "video": InputSpec((2, 4, 4), (0.0, 1.0))}
    torch.manual_seed(0)
    model = _Reference(task, specs).eval()
    x, y = _inputs(specs, 1), _target(task)
    ids = [f"s{i}" for i in range(N)]

    def perturb(threat, key="k"):
        snap = {m: v.clone() for m, v in x.items()}
        run = (
            attack.prepare(model, _Synthetic(task, specs, x, y), threat, task, "test")
            if hasattr(attack, "prepare")
            else attack
        )
        out = run.perturb(model, x, y, threat, task, SampleRNG(0, key, ids))
        out = out.inputs if isinstance(out, AttackOutput) else out
        if not all(torch.equal(x[m], snap[m]) for m in x):
            raise AssertionError("the attack modified its input tensors")
        return out

    def zero():
        t = ThreatModel("zero", {m: Budget("linf", 0.0, specs[m].bounds) for m in specs})
        out = perturb(t)
        return all(torch.equal(out[m], x[m]) for m in x), "eps = 0 leaves every input bit-identical"

    _run(results, "eps = 0 is a no-op", zero)

    for norm, eps in (
        ("linf", {"audio": 0.1, "video": 0.05}),
        ("l2", {"audio": 0.5, "video": 0.3}),
    ):
        for scope in (("audio",), ("video",), ("audio", "video")):

            def budget(norm=norm, eps=eps, scope=scope):
                t = ThreatModel("t", {m: Budget(norm, eps[m], specs[m].bounds) for m in scope})
                out = perturb(t)
                worst = []
                for m in x:
                    if m not in scope:
                        if not torch.equal(out[m], x[m]):
                            return False, f"changed unattacked modality {m!r}"
                        continue
                    d = (out[m] - x[m]).flatten(1)
                    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
                    lo, hi = specs[m].bounds
                    if (
                        (size > eps[m] * (1 + 1e-5) + 1e-6).any()
                        or out[m].min() < lo
                        or out[m].max() > hi
                    ):
                        return (
                            False,
                            f"{m}: size {float(size.max()):.4g} > eps {eps[m]} or out of bounds",
                        )
                    worst.append(f"{m} {float(size.max()):.3g}/{eps[m]}")
                return True, ", ".join(worst)

            _run(
                results,
                f"budget and range hold ({norm}, {'+'.join(scope)})",
                budget,
                refusal_ok=True,
            )

    def seeded():
        for norm, eps in (
            ("linf", 0.1),
            ("l2", 0.5),
        ):  # the first single-modality threat it accepts
            t = ThreatModel("t", {"audio": Budget(norm, eps, specs["audio"].bounds)})
            try:
                a = perturb(t)
            except UserError:
                continue
            return torch.equal(
                a["audio"], perturb(t)["audio"]
            ), f"same seed twice ({norm}), identical output"
        return False, "refused every single-modality threat"

    _run(results, "seeded reproducibility", seeded)
    return [(n, ok, d) for n, ok, d in results]


def check_metric(metric) -> list:
    results = []
    directions = getattr(metric, "higher_is_better", None)
    _run(
        results,
        "declares higher_is_better",
        lambda: (isinstance(directions, dict) and bool(directions), repr(directions)),
    )
    if getattr(metric, "scope", "cell") == "model":
        results.append(
            (
                "scope",
                True,
                "model-scope metric: checked with a run (compute_model needs a trained model)",
            )
        )
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
    for kind in ("multiclass", "multilabel"):  # a metric may refuse one task kind with a UserError
        task = Task(kind, tuple("abcd"))
        ev = Evidence(
            task,
            [str(i) for i in range(N)],
            _target(task),
            torch.randn(N, 4, generator=g),
            torch.randn(N, 4, generator=g),
            threat,
            perturbation,
        )

        def values(ev=ev, kind=kind):
            out = metric.compute(ev)
            missing = [k for k in out if k not in metric.higher_is_better]
            accepted.append(kind)
            return isinstance(out, dict) and not missing, f"keys {sorted(out)}" + (
                f"; no direction for {missing}" if missing else ""
            )

        _run(results, f"every value has a direction ({kind})", values, refusal_ok=True)
    results.append(
        ("accepts a task kind", bool(accepted), ", ".join(accepted) or "refused every task kind")
    )
    return results


def check_dataset(ds) -> list:
    results = []
    _run(
        results,
        "task and specs",
        lambda: (
            isinstance(ds.task, Task) and all(isinstance(s, InputSpec) for s in ds.specs.values()),
            repr(ds.task.kind),
        ),
    )
    return results
