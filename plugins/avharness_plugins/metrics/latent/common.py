"""Helpers shared by the latent metrics: label membership, order-free sample keys, checks."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

KINDS = ("multiclass", "multilabel")


# --------------------------------------------------------------------------------------------
# shared helpers


def check_kind(task_kind: str) -> None:
    if task_kind not in KINDS:
        raise ValueError(f"task_kind must be one of {KINDS}, got {task_kind!r}")


def as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def membership(labels, task_kind: str, n: int, num_classes: int | None) -> torch.Tensor:
    """Bool [N, C] on the CPU: sample i has class c."""
    check_kind(task_kind)
    lab = as_tensor(labels).cpu()
    if lab.shape[0] != n:
        raise ValueError(f"{lab.shape[0]} labels for {n} latents")
    if task_kind == "multiclass":
        if lab.dim() != 1 or lab.is_floating_point() and not torch.equal(lab, lab.round()):
            raise ValueError("multiclass labels must be integer class indices of shape [N]")
        lab = lab.long()
        if n and int(lab.min()) < 0:
            raise ValueError("multiclass labels must be >= 0")
        c = num_classes if num_classes is not None else (int(lab.max()) + 1 if n else 0)
        if n and int(lab.max()) >= c:
            raise ValueError(f"label {int(lab.max())} out of range for {c} classes")
        m = torch.zeros(n, c, dtype=torch.bool)
        m[torch.arange(n), lab] = True
        return m
    if lab.dim() != 2:
        raise ValueError("multilabel labels must be a [N, C] 0/1 matrix")
    if num_classes is not None and lab.shape[1] != num_classes:
        raise ValueError(f"labels have {lab.shape[1]} columns, num_classes is {num_classes}")
    return lab.float() >= 0.5


def sample_keys(lat: torch.Tensor, member: torch.Tensor) -> list[bytes]:
    """A content hash per sample (latent bytes, -0.0 folded into 0.0, and its label row)."""
    t = (lat.reshape(lat.shape[0], -1).cpu() + 0).contiguous()  # -0.0 + 0 = 0.0
    flat = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    lab = np.ascontiguousarray(member.numpy())
    return [hashlib.blake2b(flat[i].tobytes() + lab[i].tobytes(), digest_size=16).digest()
            for i in range(flat.shape[0])]


def ranks(keys: Sequence) -> torch.Tensor:
    """rank[i] = position of sample i when all samples are sorted by key (ties: by index)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rank = torch.empty(len(keys), dtype=torch.long)
    rank[torch.tensor(order, dtype=torch.long)] = torch.arange(len(keys))
    return rank


def check_finite(x: torch.Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contain NaN or inf")


def nanmean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(sum(v) / len(v)) if v else math.nan


def rule_names(task_kind: str, thresholds) -> list[str]:
    return ["argmax"] if task_kind == "multiclass" else [f"p>={t:g}" for t in thresholds]
