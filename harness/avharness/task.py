"""The learning task: decides the loss, the prediction rule and what counts as correct."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("multiclass", "multilabel")


@dataclass(frozen=True)
class Task:
    kind: str
    classes: tuple[str, ...]
    #: logit above which a label is predicted present (multilabel only); 0 is p = 0.5.
    threshold: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (shape [B]): cross-entropy for multiclass, mean BCE for multilabel."""
        if self.kind == "multiclass":
            return F.cross_entropy(logits, target, reduction="none")
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class index per sample (multiclass) or a 0/1 vector per sample (multilabel)."""
        if self.kind == "multiclass":
            return logits.argmax(1)
        return (logits > self.threshold).long()

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample bool. Multilabel uses exact match of the thresholded labels."""
        pred = self.predict(logits)
        if self.kind == "multiclass":
            return pred == target
        return (pred == target.long()).all(1)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "classes": list(self.classes), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(d["kind"], tuple(d["classes"]), float(d.get("threshold", 0.0)))
