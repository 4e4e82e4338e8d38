"""Packing a multimodal batch into one flat tensor, for single-input attack backends (ART, foolbox).

Backends such as ART take exactly one input tensor per sample (docs/backends.md §1). ``Packing`` records a
fixed modality order and each modality's per-sample shape, flattens every packed modality and
concatenates them into z in R^{N x D}; ``PackedAdapter(model, packing, fixed)`` is the
``nn.Module`` a backend wraps: it splits z back, reshapes, adds the modalities held ``fixed`` for
the current batch and returns the avharness model's logits (N, C) only.

Optionally each modality m is packed in scaled coordinates, z_m = x_m / s_m (``scales``), so
that a backend that only accepts one scalar eps can run a joint linf attack with different
per-modality budgets (choose s_m = eps_m / eps_ref). Scales default to 1 (z is x itself).

The helpers build per-feature vectors from a ``ThreatModel``, in z coordinates: lower/upper
bounds, eps and step, and the ``mask`` (1 on the features of the modalities the threat attacks
with eps > 0, 0 elsewhere). Packed modalities the threat does not attack get their spec bounds
when given, else a wide finite box; the mask is what keeps them still.

Nothing here depends on a backend; it works with torch tensors and returns numpy arrays only
where asked (``*_numpy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from avharness import ThreatModel


@dataclass
class Packing:
    """Which modalities are packed, in which order, with which per-sample shapes and scales."""

    order: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    scales: dict[str, float] = field(default_factory=dict)
    #: when > 0, z carries one extra last column, row_index * row_key: the adapter recovers each
    #: row's index from it (rounding), so backends that run on subsets of the rows still see the
    #: right fixed modalities. Make it much larger than any perturbation the backend may add to it.
    row_key: float = 0.0

    @classmethod
    def of(cls, inputs: dict[str, torch.Tensor], modalities=None, scales: dict[str, float] | None = None,
           row_key: float = 0.0) -> Packing:
        """A packing of ``modalities`` (default: every input, sorted by name) of this batch."""
        order = tuple(sorted(inputs) if modalities is None else modalities)
        missing = [m for m in order if m not in inputs]
        if missing:
            raise KeyError(f"cannot pack {missing}: the inputs hold only {sorted(inputs)}")
        scales = dict(scales or {})
        for m, s in scales.items():
            if not (s > 0 and np.isfinite(s)):
                raise ValueError(f"scale of {m} must be finite and > 0, got {s}")
        return cls(order, {m: tuple(inputs[m].shape[1:]) for m in order}, scales, float(row_key))

    def scale(self, m: str) -> float:
        return float(self.scales.get(m, 1.0))

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(self.shapes[m], dtype=np.int64)) for m in self.order]

    @property
    def dim(self) -> int:
        return int(sum(self.sizes)) + (1 if self.row_key > 0 else 0)

    def rows(self, z: torch.Tensor) -> torch.Tensor | None:
        """The batch row of each row of z (from the row-key column), or None without one."""
        if self.row_key <= 0:
            return None
        return torch.round(z[:, -1].detach() / self.row_key).long()

    def pack(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """z (N, D): the packed modalities flattened in order, each divided by its scale."""
        parts = []
        for m in self.order:
            x = inputs[m].flatten(1)
            s = self.scale(m)
            parts.append(x if s == 1.0 else x / s)
        if self.row_key > 0:
            ref = parts[0] if parts else next(iter(inputs.values())).flatten(1)
            n = ref.shape[0]
            parts.append(torch.arange(n, device=ref.device, dtype=ref.dtype).unsqueeze(1) * self.row_key)
        return torch.cat(parts, dim=1)

    def unpack(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The packed modalities back from z (N, D), reshaped and rescaled."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected packed inputs of shape (N, {self.dim}), got {tuple(z.shape)}")
        out = {}
        for m, part in zip(self.order, torch.split(z[:, :sum(self.sizes)], self.sizes, dim=1)):
            s = self.scale(m)
            part = part if s == 1.0 else part * s
            out[m] = part.reshape(z.shape[0], *self.shapes[m])
        return out

    def per_feature(self, values: dict[str, float | torch.Tensor], key: float = 0.0) -> torch.Tensor:
        """A (D,) vector (or (N, D) when a value is a per-sample tensor) from one value per modality;
        ``key`` is the value for the row-key column, if there is one."""
        parts = []
        for m, size in zip(self.order, self.sizes):
            v = values[m]
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                parts.append(v.flatten(1).to(torch.float32))
            else:
                parts.append(torch.full((size,), float(v), dtype=torch.float32))
        if any(p.dim() == 2 for p in parts):
            n = next(p.shape[0] for p in parts if p.dim() == 2)
            parts = [p if p.dim() == 2 else p.expand(n, -1) for p in parts]
        if self.row_key > 0:
            parts.append(torch.full((*parts[0].shape[:-1], 1) if parts else (1,), float(key), dtype=torch.float32))
        return torch.cat(parts, dim=-1)


class PackedAdapter(nn.Module):
    """forward(z) -> model({**fixed, **packing.unpack(z)}) as logits (N, C).

    ``fixed`` holds the modalities that are not packed, for the current batch (the same N rows
    as z); ``set_fixed`` swaps them between batches. A backend that evaluates a subset of the rows
    (per-sample loops, batches smaller than N) cannot be matched to the fixed rows, so a
    row-count mismatch is an error, not a silent broadcast: run such backends with no fixed
    modalities (pack every input and confine the attack with the mask instead).
    """

    def __init__(self, model: nn.Module, packing: Packing, fixed: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.packing = packing
        self.fixed = dict(fixed or {})

    def set_fixed(self, fixed: dict[str, torch.Tensor]) -> None:
        self.fixed = dict(fixed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        parts = self.packing.unpack(z)
        rows = self.packing.rows(z)
        if rows is not None and self.fixed:
            n = next(iter(self.fixed.values())).shape[0]
            if rows.min() < 0 or rows.max() >= n:
                raise ValueError(f"row key out of range [0, {n}): the backend moved the row-key column")
            fixed = {m: x[rows.to(x.device)] for m, x in self.fixed.items()}
            return self.model({**fixed, **parts})
        for m, x in self.fixed.items():
            if x.shape[0] != z.shape[0]:
                raise ValueError(
                    f"fixed modality {m} has {x.shape[0]} rows but the packed input has {z.shape[0]}; "
                    "run the backend with batch_size >= N so every call sees the whole batch"
                )
        return self.model({**self.fixed, **parts})


def bounds(packing: Packing, threat: ThreatModel, specs_bounds: dict[str, tuple[float, float]] | None = None):
    """Per-feature (lower, upper) (D,) vectors in z coordinates.

    Attacked modalities take their budget's bounds; others take ``specs_bounds[m]`` when given,
    else a wide finite box (their mask is 0, so they never move).
    """
    lo, hi = {}, {}
    for m in packing.order:
        if m in threat.budgets:
            b = threat.budgets[m].bounds
        elif specs_bounds and m in specs_bounds:
            b = specs_bounds[m]
        else:
            b = (-1e30, 1e30)
        s = packing.scale(m)
        lo[m], hi[m] = b[0] / s, b[1] / s
    return packing.per_feature(lo, key=-0.5 * packing.row_key), packing.per_feature(hi, key=1e30)


def attacked(threat: ThreatModel) -> list[str]:
    """Modalities the threat attacks with eps > 0, sorted."""
    return [m for m in threat.modalities if threat.budgets[m].eps > 0]


def eps_vector(packing: Packing, threat: ThreatModel, fill: float = 0.0) -> torch.Tensor:
    """Per-feature eps (D,) in z coordinates; ``fill`` for modalities not attacked."""
    att = set(attacked(threat))
    return packing.per_feature({m: (threat.budgets[m].eps / packing.scale(m) if m in att else fill) for m in packing.order})


def step_vector(packing: Packing, threat: ThreatModel, relative: float, fill: float = 0.0) -> torch.Tensor:
    """Per-feature step (D,) in z coordinates: ``relative * eps_m`` per attacked modality."""
    att = set(attacked(threat))
    return packing.per_feature(
        {m: (relative * threat.budgets[m].eps / packing.scale(m) if m in att else fill) for m in packing.order}
    )


def mask_vector(packing: Packing, threat: ThreatModel) -> torch.Tensor:
    """1 on the features of modalities the threat attacks with eps > 0, 0 elsewhere (D,)."""
    att = set(attacked(threat))
    return packing.per_feature({m: (1.0 if m in att else 0.0) for m in packing.order})
