"""``avharness plugin new NAME --kind K``: a new plugin distribution that works out of the box.

It writes ``pyproject.toml`` (with the ``avharness`` entry point), a package with a minimal working
plugin of that kind, a test calling the conformance kit (``avharness.testing``) and a README. After
``pip install -e DIR`` the plugin is listed by ``avharness list`` and passes ``avharness plugin check``.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from pathlib import Path

from .errors import UserError

KINDS = ("dataset", "model", "attack", "defense", "metric")

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
version = "0.1.0"
description = "An avharness {kind} plugin: {name}"
requires-python = ">=3.10"
dependencies = ["avharness"]

[project.optional-dependencies]
test = ["pytest>=8.0"]

# This entry point is how avharness finds the plugin.
[project.entry-points.avharness]
{module} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

HEADER = '''"""{name}: an avharness {kind} plugin (written by `avharness plugin new`; see docs/plugins.md of avharness)."""

from __future__ import annotations

'''

BODY = {
    "attack": '''import torch

from avharness import AttackOutput, AttackStats, hookimpl


class {cls}:
    """A single sign-gradient (linf) or normalised-gradient (l2) step of size eps, projected onto the
    threat's ball and valid range; modalities the threat does not name are returned unchanged."""

    iterative = False  # one step: the report's iterative-vs-single-step check reads this

    def __init__(self, step: float = 1.0):
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
            raise ValueError(f"{name}: step must be a number in (0, 1] (a fraction of eps), got {{step!r}}")
        self.step = float(step)

    def perturb(self, model, inputs, target, threat, task, rng):
        attacked = threat.attacked(inputs, "{name}")  # eps > 0 (a UserError names what the inputs lack)
        if not attacked:
            return dict(inputs)
        leaves = {{m: inputs[m].detach().clone().requires_grad_(True) for m in attacked}}
        loss = task.loss(model({{**inputs, **leaves}}), target).sum()
        grads = torch.autograd.grad(loss, [leaves[m] for m in attacked], allow_unused=True)
        out = dict(inputs)
        for m, g in zip(attacked, grads):
            b = threat.budgets[m]
            if g is None:
                continue
            if b.norm == "linf":
                d = g.sign()
            else:
                d = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            out[m] = b.project(inputs[m] + self.step * b.eps * d, inputs[m]).detach()
        n = len(target)
        return AttackOutput(out, {{AttackStats.FORWARD: n, AttackStats.BACKWARD: n}})


def build(step: float = 1.0) -> {cls}:
    return {cls}(step=step)


@hookimpl
def register_attacks(register):
    register("{name}", build)
''',
    "model": '''import torch
from torch import nn

from avharness import AVModel, UserError, hookimpl


class {cls}(AVModel):
    """One linear encoder per modality read, summed into a "fused" latent, then a linear head."""

    def __init__(self, task, specs, modalities: list[str] | None = None, latent: int = 32):
        super().__init__()
        self.modalities = tuple(modalities or sorted(specs))
        for m in self.modalities:
            if m not in specs:
                raise UserError(f"{name}: unknown modality {{m!r}}; the dataset has {{', '.join(sorted(specs))}}")
        size = {{m: int(torch.tensor(specs[m].shape).prod()) for m in self.modalities}}
        self.enc = nn.ModuleDict({{m: nn.Linear(size[m], latent) for m in self.modalities}})
        self.out = nn.Linear(latent, task.num_classes)
        self.head_latent = "fused"

    def embed(self, inputs):
        z = {{m: self.enc[m](inputs[m].flatten(1)) for m in self.modalities}}
        z["fused"] = torch.tanh(sum(z[m] for m in self.modalities))
        return z

    def head(self, latent):
        return self.out(latent)  # raw logits: the harness applies softmax / sigmoid itself


@hookimpl
def register_models(register):
    register("{name}", {cls})
''',
    "dataset": '''import hashlib

import torch

from avharness import Batch, InputSpec, Task, UserError, generator, hookimpl

SPLITS = ("train", "val", "test")


class {cls}:
    """Class-conditional Gaussians in two modalities, seeded: the same seed gives the same tensors."""

    def __init__(self, seed: int = 0, n: int = 240, classes: int = 4, noise: float = 1.0):
        if n < 3 * classes:
            raise UserError(f"{name}: n must be at least {{3 * classes}}, got {{n}}")
        self.seed, self.n, self.noise = seed, n, noise
        self.task = Task("multiclass", tuple(f"c{{i}}" for i in range(classes)))
        self.specs = {{"audio": InputSpec((16,), (-6.0, 6.0), "feature"), "video": InputSpec((12,), (-6.0, 6.0), "feature")}}
        self._data = None

    def _build(self):
        if self._data is None:
            g = generator(self.seed, "{name}")
            k = self.task.num_classes
            centers = {{m: torch.randn(k, s.shape[0], generator=g) for m, s in self.specs.items()}}
            y = torch.arange(self.n) % k
            x = {{m: (c[y] + self.noise * torch.randn(self.n, c.shape[1], generator=g)).clamp(-6, 6)
                 for m, c in centers.items()}}
            cut = [0, int(0.6 * self.n), int(0.8 * self.n), self.n]
            self._data = {{s: ({{m: v[cut[i]:cut[i + 1]] for m, v in x.items()}}, y[cut[i]:cut[i + 1]], cut[i])
                          for i, s in enumerate(SPLITS)}}
        return self._data

    def splits(self):
        return SPLITS

    def size(self, split):
        return len(self._build()[split][1])

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        x, y, first = self._build()[split]
        n = len(y) if limit is None else min(limit, len(y))
        order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            # ids are unique across splits and stable across runs
            yield Batch({{m: v[idx] for m, v in x.items()}}, y[idx], [f"{{split}}/{{first + int(j):05d}}" for j in idx])

    def manifest(self, split):
        x, y, _ = self._build()[split]
        h = hashlib.sha256(y.numpy().tobytes())
        for m in sorted(x):
            h.update(x[m].numpy().tobytes())
        return h.hexdigest()


@hookimpl
def register_datasets(register):
    register("{name}", {cls})
''',
    "defense": '''import time

import torch

from avharness import generator, hookimpl


class {cls}:
    """Standard training with Gaussian noise added to every input (a simple noise-training defense)."""

    def __init__(self, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64, sigma: float = 0.1):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"{name}: epochs must be an integer >= 1, got {{epochs!r}}")
        self.epochs, self.lr, self.batch_size, self.sigma = epochs, float(lr), batch_size, float(sigma)

    def fit(self, model, data, ctx):
        start = time.perf_counter()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        task, samples, losses = data.task, 0, []
        model.train()
        for epoch in range(self.epochs):
            g = generator(ctx.seed, "{name}", epoch)
            for batch in data.batches("train", self.batch_size, shuffle=g):
                batch = batch.to(ctx.device)
                noisy = {{}}
                for m, x in batch.inputs.items():
                    noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
                    noisy[m] = (x + self.sigma * noise).clamp(*data.specs[m].bounds)
                loss = task.loss(model(noisy), batch.target).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                samples += len(batch)
                losses.append(float(loss.detach()))
        model.eval()
        # the cost facts the report reads: backward_samples (required) and wall_s
        return {{"epochs": self.epochs, "forward_samples": samples, "backward_samples": samples,
                "wall_s": round(time.perf_counter() - start, 3), "final_train_loss": losses[-1] if losses else None}}


@hookimpl
def register_defenses(register):
    register("{name}", {cls})
''',
    "metric": '''from avharness import hookimpl


class {cls}:
    """The mean drop of the true class's logit margin under attack (multiclass), or of the mean
    correct-label logit sign agreement (multi-label): how far the attack pushed the model."""

    higher_is_better = {{"{name}": False}}

    def compute(self, ev):
        clean, adv = ev.clean_logits.float(), ev.adv_logits.float()
        if len(ev.ids) == 0:
            return {{"{name}": None}}  # undefined on no samples: null, not 0
        if ev.task.kind == "multiclass":
            t = ev.target.long().view(-1, 1)
            drop = clean.gather(1, t) - adv.gather(1, t)
        else:
            sign = ev.target.float() * 2 - 1
            drop = (clean * sign).mean(1) - (adv * sign).mean(1)
        return {{"{name}": float(drop.mean())}}


def build() -> {cls}:
    return {cls}()


@hookimpl
def register_metrics(register):
    register("{name}", build)
''',
}

TEST = {
    "attack": "from avharness.testing import assert_passes, check_attack\n\nfrom {module} import build\n\n\n"
              "def test_conforms():\n    assert_passes(check_attack(build))\n",
    "model": "from avharness.testing import assert_passes, check_model\n\nfrom {module} import {cls}\n\n\n"
             "def test_conforms():\n    assert_passes(check_model({cls}))\n",
    "dataset": "from avharness.testing import assert_passes, check_dataset\n\nfrom {module} import {cls}\n\n\n"
               "def test_conforms():\n    assert_passes(check_dataset({cls}))\n",
    "defense": "from avharness.testing import assert_passes, check_defense\n\nfrom {module} import {cls}\n\n\n"
               "def test_conforms():\n    assert_passes(check_defense({cls}, epochs=2))\n",
    "metric": "from avharness.testing import assert_passes, check_metric\n\nfrom {module} import build\n\n\n"
              "def test_conforms():\n    assert_passes(check_metric(build))\n",
}

README = """\
# {dist}

An [avharness](https://github.com/) {kind} plugin registering `{name}`.

```sh
pip install -e .                       # avharness finds it through the `avharness` entry point
avharness list {kind}                  # {name} ... {dist}
avharness plugin check {name} --kind {kind}
pip install -e ".[test]" && pytest     # the conformance kit, from tests/test_{module}.py
```

Use it in a suite as `plugin: {name}` (or `plugin: {dist}:{name}` if another distribution registers the
same name). Bump `version` in pyproject.toml whenever its behaviour changes: stored results are keyed
by the distribution's name and version (and, for an editable install, by a hash of its sources), so
a rerun recomputes what the new version would compute differently.

The contract of a {kind} plugin is in avharness's docs/plugins.md.
"""


def new_plugin(name: str, kind: str, out: str | Path | None = None) -> Path:
    """Write the distribution for plugin ``name`` of ``kind`` into ``out`` (default ./avharness-NAME)."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"plugin name {name!r}: use lower-case letters, digits and _ (a Python identifier), e.g. my_{kind}")
    dist = f"avharness-{name.replace('_', '-')}"
    module = f"avharness_{name}"
    cls = "".join(p.capitalize() for p in name.split("_")) or "Plugin"
    root = Path(out) if out else Path(dist)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; choose another folder with -o DIR")
    fmt = {"name": name, "kind": kind, "dist": dist, "module": module, "cls": cls}
    files = {
        "pyproject.toml": PYPROJECT.format(**fmt),
        f"{module}/__init__.py": HEADER.format(**fmt) + BODY[kind].format(**fmt),
        f"tests/test_{module}.py": TEST[kind].format(**fmt),
        "README.md": README.format(**fmt),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if rel.endswith(".md") else text)
    return root
