"""Inputs: per-modality specs, batches, and the dataset contract plugins implement."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .task import Task


def json_bound(x: float) -> float | str:
    """JSON has no infinity: an open end of a valid range is written as the string "inf"/"-inf"."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


@dataclass(frozen=True)
class InputSpec:
    """One modality's per-sample shape, valid range and units.

    ``bounds`` may be open (``-inf``/``inf``): a normalised log-mel feature has a floor but no
    physical ceiling. ``frontend`` (optional, opaque to the core) describes how a model turns this
    input into what it classifies, e.g. ``{"pipeline": "logmel64", "stats": {...}}`` for a waveform
    whose features a model computes itself (so attacks can work in the waveform domain). It is saved
    in ``model.json`` with the rest of the spec, so a model rebuilt outside the harness gets it too.
    """

    shape: tuple[int, ...]
    bounds: tuple[float, float]
    units: str = "feature"
    frontend: dict | None = field(default=None, hash=False, compare=False)

    def to_dict(self) -> dict:
        d = {"shape": list(self.shape), "bounds": [json_bound(b) for b in self.bounds], "units": self.units}
        if self.frontend is not None:
            d["frontend"] = self.frontend
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(tuple(d["shape"]), (float(d["bounds"][0]), float(d["bounds"][1])), d.get("units", "feature"),
                   d.get("frontend"))


@dataclass
class Batch:
    """Inputs keyed by modality, targets, and stable sample ids (one per row)."""

    inputs: dict[str, torch.Tensor]
    target: torch.Tensor
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        if torch.device(device).type == "cuda":  # page-locked host memory: the copy overlaps the GPU's work
            def move(v):
                return v.to(device, non_blocking=True) if v.is_cuda else v.pin_memory().to(device, non_blocking=True)

            return Batch({k: move(v) for k, v in self.inputs.items()}, move(self.target), self.ids)
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.target.to(device), self.ids)


@runtime_checkable
class Dataset(Protocol):
    """What a dataset plugin's factory returns.

    Constructing the object must be cheap (``task`` and ``specs`` known without building data), so
    that ``avharness validate`` can check a suite without touching disk-heavy work.
    """

    task: Task
    specs: dict[str, InputSpec]

    def splits(self) -> tuple[str, ...]: ...

    def size(self, split: str) -> int: ...

    def batches(
        self, split: str, batch_size: int, *, shuffle: torch.Generator | None = None, limit: int | None = None
    ) -> Iterator[Batch]:
        """Batches in a fixed order (or shuffled by ``shuffle``); ``limit`` keeps the first N samples."""
        ...

    def manifest(self, split: str) -> str:
        """A sha256 over the split's sample ids and contents: changes whenever the data changes."""
        ...

    def info(self) -> dict:
        """Provenance recorded in the report (feature parameters, normalisation statistics, ...)."""
        ...
