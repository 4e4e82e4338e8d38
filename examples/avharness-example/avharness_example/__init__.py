"""An example third-party avharness plugin: registers a dataset and a model through the hooks."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from avharness import AVModel, Batch, InputSpec, Task, UserError, generator, hookimpl

SPLITS = ("train", "val", "test")


class GaussianAV:
    """Class-conditional Gaussians in two modalities; each modality alone is only partly informative."""

    def __init__(self, seed: int = 0, n: int = 600, classes: int = 4, audio_dim: int = 16, video_dim: int = 12,
                 noise: float = 1.0):
        if n < 3 * classes:
            raise UserError(f"n must be at least {3 * classes} (3 splits × {classes} classes), got {n}")
        self.seed, self.n, self.noise = seed, n, noise
        self.task = Task("multiclass", tuple(f"c{i}" for i in range(classes)))
        self.specs = {
            "audio": InputSpec((audio_dim,), (-6.0, 6.0), "feature"),
            "video": InputSpec((video_dim,), (-6.0, 6.0), "feature"),
        }
        self._data = None

    def _build(self):
        if self._data is None:
            g = generator(self.seed, "gaussian_av")
            k = self.task.num_classes
            centers = {m: torch.randn(k, s.shape[0], generator=g) for m, s in self.specs.items()}
            y = torch.arange(self.n) % k
            x = {m: (c[y] + self.noise * torch.randn(self.n, c.shape[1], generator=g)).clamp(-6, 6)
                 for m, c in centers.items()}
            cut = [0, int(0.6 * self.n), int(0.75 * self.n), self.n]
            self._data = {s: ({m: v[cut[i]:cut[i + 1]] for m, v in x.items()}, y[cut[i]:cut[i + 1]])
                          for i, s in enumerate(SPLITS)}
        return self._data

    def splits(self):
        return SPLITS

    def size(self, split):
        return len(self._build()[split][1])

    def batches(self, split, batch_size, *, shuffle=None, limit=None):
        x, y = self._build()[split]
        n = len(y) if limit is None else min(limit, len(y))
        order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield Batch({m: v[idx] for m, v in x.items()}, y[idx], [f"{split}/{int(j):05d}" for j in idx])

    def manifest(self, split):
        x, y = self._build()[split]
        h = hashlib.sha256(y.numpy().tobytes())
        for m in sorted(x):
            h.update(x[m].numpy().tobytes())
        return h.hexdigest()

    def info(self):
        return {"n": self.n, "noise": self.noise, "seed": self.seed}


class LinearAV(AVModel):
    """One linear map per modality read, summed: the simplest late fusion."""

    def __init__(self, task: Task, specs: dict, modalities: list | None = None, latent: int = 16):
        super().__init__()
        self.modalities = tuple(modalities or sorted(specs))
        for m in self.modalities:
            if m not in specs:
                raise UserError(f"linear_av: unknown modality {m!r}; the dataset has {', '.join(sorted(specs))}")
        self.enc = nn.ModuleDict({m: nn.Linear(specs[m].shape[0], latent) for m in self.modalities})
        self.out = nn.Linear(latent, task.num_classes)
        self.head_latent = "fused"

    def embed(self, inputs):
        z = {m: self.enc[m](inputs[m]) for m in self.modalities}
        z["fused"] = torch.tanh(sum(z[m] for m in self.modalities))
        return z

    def head(self, latent):
        return self.out(latent)


@hookimpl
def register_datasets(register):
    register("gaussian_av", GaussianAV)


@hookimpl
def register_models(register):
    register("linear_av", LinearAV)
