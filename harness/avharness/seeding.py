"""Seeds: every random draw comes from a stream keyed by (seed, purpose, sample id, ...).

Keying streams by sample id (not by batch position) makes attack results independent of batch
size and order, so a resumed or re-batched run gives the same numbers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across processes and platforms."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def generator(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


class SampleRNG:
    """Per-sample random streams for one batch of an attack.

    ``uniform(modality, shape, restart)`` returns a [B, *shape] tensor in [-1, 1) whose row i depends
    only on (seed, key, ids[i], modality, restart).
    """

    def __init__(self, seed: int, key: str, ids: list[str]):
        self.seed, self.key, self.ids = seed, key, list(ids)

    def uniform(self, modality: str, shape: Sequence[int], restart: int = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
        rows = [
            torch.rand(tuple(shape), generator=generator(self.seed, self.key, i, modality, restart)) * 2 - 1
            for i in self.ids
        ]
        return torch.stack(rows).to(device)

    def normal(self, modality: str, shape: Sequence[int], restart: int = 0,
               device: torch.device | str | None = None) -> torch.Tensor:
        rows = [
            torch.randn(tuple(shape), generator=generator(self.seed, self.key, i, modality, restart, "n"))
            for i in self.ids
        ]
        return torch.stack(rows).to(device)
