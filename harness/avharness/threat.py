"""Threat models: per-modality budgets, projection onto each ball and clipping to the valid range."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import json_bound

#: "none" is an unbounded threat (corruptions: noise at an SNR, occlusion, a dropped modality):
#: only the valid range is enforced, and its eps is infinite.
NORMS = ("linf", "l2", "none")


@dataclass(frozen=True)
class Budget:
    norm: str
    eps: float
    bounds: tuple[float, float]

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the eps-ball around ``x`` (per sample), then clipped to ``bounds``.

        Clipping after projection cannot break the budget: ``x`` lies inside ``bounds``, so clipping
        only moves a coordinate towards ``x``.
        """
        if self.norm == "none":
            return x_adv.clamp(self.bounds[0], self.bounds[1])
        if self.eps == 0:
            return x.clone()
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        return (x + delta).clamp(self.bounds[0], self.bounds[1])

    def canonical(self) -> str:
        size = "" if self.norm == "none" else f"{self.eps:g}:"
        return f"{self.norm}:{size}[{self.bounds[0]:g},{self.bounds[1]:g}]"


@dataclass(frozen=True)
class ThreatModel:
    """Which modalities an attack may touch, each with its budget. Others stay bit-identical."""

    name: str
    budgets: dict[str, Budget]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted(self.budgets))

    def attacked(self, inputs: dict, attack: str = "attack") -> list[str]:
        """The modalities this threat perturbs (eps > 0, or unbounded), after checking ``inputs`` has them."""
        from .errors import UserError

        missing = [m for m in self.budgets if m not in inputs]
        if missing:
            raise UserError(f"{attack}: threat {self.name!r} attacks {missing} but the inputs hold only "
                            f"{sorted(inputs)}; drop those modalities from the threat or feed them to the model")
        return [m for m in self.modalities if self.budgets[m].norm == "none" or self.budgets[m].eps > 0]

    def project(self, adv: dict[str, torch.Tensor], clean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Project every attacked modality; unattacked ones are returned as the clean tensors."""
        return {m: (self.budgets[m].project(adv[m], x) if m in self.budgets else x) for m, x in clean.items()}

    def canonical(self) -> str:
        return "|".join(f"{m}:{self.budgets[m].canonical()}" for m in self.modalities)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "budgets": {
                m: {"norm": b.norm, "eps": b.eps, "bounds": [json_bound(x) for x in b.bounds]}
                for m, b in self.budgets.items()
            },
            "canonical": self.canonical(),
        }
