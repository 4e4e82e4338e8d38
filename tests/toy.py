"""Tiny synthetic audio-visual data and models for unit tests (CPU, a few seconds to train).

Import it from a test module as ``from toy import ...`` (pytest puts ``tests/`` on ``sys.path``;
``tests/`` is not a package).

What is here:

- ``ToyAVData(kind)``: an in-memory dataset object that satisfies ``avharness.Dataset``, with
  splits "train" (256 samples) and "test" (64), modality "audio" ([1, 12, 10], bounds [-1, 1],
  a stand-in for a normalised log-mel patch) and "video" ([2, 3, 6, 6], bounds [0, 1], two tiny
  RGB frames). ``kind="multiclass"``: 4 classes, each sample is its class prototype plus noise.
  ``kind="multilabel"``: 3 labels, each present label adds its prototype; targets are 0/1 floats.
  Both modalities carry the label, so audio-only, video-only and fused models all learn it.
- ``ToyModel(task, specs, modalities)``: an ``AVModel`` (one small MLP per modality; with two
  modalities a "fused" latent, the sum of the modality latents, feeds the head).
- ``train(model, data)``: 150 full-batch Adam steps (well under a second); ``trained(modalities, kind)`` caches
  a trained, eval-mode model per process (do not modify it in a test: it is shared).
- ``test_batch(data, n)``, ``sample_rng(batch)``, ``threat(data, audio=..., video=...)``: shortcuts
  for calling an attack's ``perturb`` directly.
"""

from __future__ import annotations

import functools
import hashlib

import torch
from torch import nn

from avharness import AVModel, Batch, Budget, InputSpec, SampleRNG, Task, ThreatModel, generator

SPECS = {
    "audio": InputSpec((1, 12, 10), (-1.0, 1.0), "normalised log-mel (toy)"),
    "video": InputSpec((2, 3, 6, 6), (0.0, 1.0), "pixel (toy)"),
}
SIZES = {"train": 256, "test": 64}


class ToyAVData:
    """A separable synthetic task; the same ``seed`` always gives the same tensors."""

    def __init__(self, kind: str = "multiclass", seed: int = 0, noise: float = 0.35):
        n = 4 if kind == "multiclass" else 3
        self.task = Task(kind, tuple(f"c{i}" for i in range(n)))
        self.specs = dict(SPECS)
        self.seed, self.noise = seed, noise
        g = generator(seed, "toy", kind, "prototypes")
        # Prototypes are +-0.4 patterns (audio) and 0.5 +- 0.25 patterns (video): far apart in l2.
        self._protos = {
            "audio": (torch.randint(0, 2, (n, *SPECS["audio"].shape), generator=g) * 2 - 1) * 0.4,
            "video": (torch.randint(0, 2, (n, *SPECS["video"].shape), generator=g) * 2 - 1) * 0.25,
        }
        self._data = {split: self._make(split, size) for split, size in SIZES.items()}

    def _make(self, split: str, size: int) -> Batch:
        g = generator(self.seed, "toy", self.task.kind, split)
        n = self.task.num_classes
        if self.task.kind == "multiclass":
            target = torch.randint(0, n, (size,), generator=g)
            mix = nn.functional.one_hot(target, n).float()
        else:
            target = (torch.rand(size, n, generator=g) < 0.4).float()
            mix = target
        inputs = {}
        for m, spec in SPECS.items():
            centre = 0.0 if m == "audio" else 0.5
            base = centre + torch.einsum("bn,n...->b...", mix, self._protos[m])
            noise = torch.randn(size, *spec.shape, generator=g) * self.noise * (0.4 if m == "audio" else 0.25)
            inputs[m] = (base + noise).clamp(*spec.bounds)
        return Batch(inputs, target, [f"{split}-{i:04d}" for i in range(size)])

    # --- the avharness.Dataset protocol ---
    def splits(self) -> tuple[str, ...]:
        return tuple(SIZES)

    def size(self, split: str) -> int:
        return SIZES[split]

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        full = self._data[split]
        n = len(full) if limit is None else min(limit, len(full))
        order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield Batch({m: x[idx] for m, x in full.inputs.items()}, full.target[idx], [full.ids[i] for i in idx.tolist()])

    def manifest(self, split: str) -> str:
        h = hashlib.sha256()
        full = self._data[split]
        h.update("\n".join(full.ids).encode())
        for m in sorted(full.inputs):
            h.update(full.inputs[m].numpy().tobytes())
        h.update(full.target.numpy().tobytes())
        return h.hexdigest()

    def info(self) -> dict:
        return {"toy": True, "kind": self.task.kind, "seed": self.seed, "noise": self.noise}


class ToyModel(AVModel):
    """One small MLP per modality read; two modalities are fused by summing their latents."""

    def __init__(self, task: Task, specs: dict[str, InputSpec], modalities=("audio", "video"), hidden: int = 32):
        super().__init__()
        self.modalities = tuple(modalities)
        self.head_latent = self.modalities[0] if len(self.modalities) == 1 else "fused"
        self.encoders = nn.ModuleDict({
            m: nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(specs[m].shape).prod()), hidden), nn.ReLU())
            for m in self.modalities
        })
        self.out = nn.Linear(hidden, task.num_classes)

    def embed(self, inputs):
        latents = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        if len(self.modalities) > 1:
            latents["fused"] = sum(latents[m] for m in self.modalities)
        return latents

    def head(self, latent):
        return self.out(latent)


def train(model: AVModel, data: ToyAVData, steps: int = 150, lr: float = 1e-2, seed: int = 0) -> AVModel:
    """Full-batch Adam on the train split; returns the model in eval mode."""
    torch.manual_seed(seed)
    full = next(data.batches("train", data.size("train")))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        data.task.loss(model(full.inputs), full.target).mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)  # leave no .grad behind: tests check attacks add none
    return model.eval()


@functools.cache
def toy_data(kind: str = "multiclass") -> ToyAVData:
    return ToyAVData(kind)


@functools.cache
def trained(modalities: tuple[str, ...] = ("audio", "video"), kind: str = "multiclass") -> AVModel:
    """A trained eval-mode ToyModel, built once per process (shared: do not modify it)."""
    data = toy_data(kind)
    torch.manual_seed(1)
    return train(ToyModel(data.task, data.specs, modalities), data)


def test_batch(data: ToyAVData, n: int | None = None) -> Batch:
    """The first ``n`` test samples (all of them by default) as one batch."""
    return next(data.batches("test", n or data.size("test"), limit=n))


test_batch.__test__ = False  # not a test, despite its name


def sample_rng(batch: Batch, seed: int = 0, key: str = "attack") -> SampleRNG:
    return SampleRNG(seed, key, batch.ids)


def threat(data: ToyAVData, name: str = "t", **budgets) -> ThreatModel:
    """threat(data, audio=("linf", 0.1), video=("l2", 0.5)): bounds taken from the data's specs."""
    return ThreatModel(name, {m: Budget(norm, eps, data.specs[m].bounds) for m, (norm, eps) in budgets.items()})


def collect(ds, split: str, batch_size: int, **kw):
    """Every batch of a dataset split concatenated: (ids, targets, {modality: inputs})."""
    ids, targets, inputs = [], [], {}
    for b in ds.batches(split, batch_size, **kw):
        ids += b.ids
        targets.append(b.target)
        for k, v in b.inputs.items():
            inputs.setdefault(k, []).append(v)
    return ids, torch.cat(targets), {k: torch.cat(v) for k, v in inputs.items()}
