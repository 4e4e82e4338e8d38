"""Corruptions: deterministic, non-adversarial perturbations of the threat's modalities.

They take threats of any norm: with ``norm: none`` (unbounded; only the valid range holds) they
apply as defined; with a bounded threat their result is projected onto its ball like any attack's.
All act in the model's input domain (for the built-in audio: z-scored log-mel features, so an SNR
is a feature-domain SNR, not an acoustic one), on the time axis = the first axis of a sample.

- ``gaussian_noise(snr_db)``: additive Gaussian noise scaled per sample so that
  10·log10(|x|² / |δ|²) = snr_db (drawn from the per-sample streams: batch-independent).
- ``occlusion(pattern, fraction, block)``: the seed's temporal masks, filled with the modality's
  lower bound ("silence" / black): ``alternate`` masks every other block of ``block`` time steps
  (the seed's alternating k-second gates), ``first`` / ``middle`` / ``last`` mask that ``fraction``
  of the time axis.
- ``drop_modality(mode)``: the modality replaced by zeros (clipped into its range) or, with
  ``mean``, by each sample's own mean value (a constant, information-free input).
"""

from __future__ import annotations

import math

import torch

from avharness import UserError

PATTERNS = ("alternate", "first", "middle", "last")


class Corruption:
    unbounded = True  # may be run under a norm-none threat (the runner skips other attacks there)
    iterative = None  # not an optimisation: the iterative-vs-single-step check ignores it

    def corrupt(self, x, modality, budget, rng):  # pragma: no cover - overridden
        raise NotImplementedError

    def perturb(self, model, inputs, target, threat, task, rng):
        out = dict(inputs)
        for m, budget in threat.budgets.items():
            if budget.norm != "none" and budget.eps == 0:
                continue
            if m not in inputs:
                raise UserError(f"{type(self).__name__}: threat {threat.name!r} names {m!r}, which the inputs lack")
            out[m] = budget.project(self.corrupt(inputs[m], m, budget, rng), inputs[m])
        return out


class GaussianNoise(Corruption):
    def __init__(self, snr_db: float = 20.0):
        if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float)) or not math.isfinite(snr_db):
            raise UserError(f"gaussian_noise: snr_db must be a finite number (dB), got {snr_db!r}")
        self.snr_db = float(snr_db)

    def corrupt(self, x, modality, budget, rng):
        noise = rng.normal(modality, tuple(x.shape[1:]), device=x.device).to(x.dtype)
        signal = x.flatten(1).norm(dim=1)
        scale = signal / (noise.flatten(1).norm(dim=1).clamp_min(1e-12) * 10 ** (self.snr_db / 20))
        return x + noise * scale.view(-1, *([1] * (x.dim() - 1)))


class Occlusion(Corruption):
    def __init__(self, pattern: str = "alternate", fraction: float = 0.5, block: int = 4):
        if pattern not in PATTERNS:
            raise UserError(f"occlusion: pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        if not 0 < float(fraction) <= 1:
            raise UserError(f"occlusion: fraction must be in (0, 1], got {fraction!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise UserError(f"occlusion: block must be an integer >= 1 (time steps), got {block!r}")
        self.pattern, self.fraction, self.block = pattern, float(fraction), block

    def mask(self, steps: int) -> torch.Tensor:
        """True on the masked time steps."""
        t = torch.arange(steps)
        if self.pattern == "alternate":
            return (t // self.block) % 2 == 1
        n = max(1, round(self.fraction * steps))
        start = {"first": 0, "middle": (steps - n) // 2, "last": steps - n}[self.pattern]
        return (t >= start) & (t < start + n)

    def corrupt(self, x, modality, budget, rng):
        masked = self.mask(x.shape[1]).to(x.device).view(1, -1, *([1] * (x.dim() - 2)))
        return torch.where(masked, torch.full_like(x, budget.bounds[0]), x)


class DropModality(Corruption):
    def __init__(self, mode: str = "zero"):
        if mode not in ("zero", "mean"):
            raise UserError(f"drop_modality: mode must be zero or mean, got {mode!r}")
        self.mode = mode

    def corrupt(self, x, modality, budget, rng):
        if self.mode == "zero":
            return torch.zeros_like(x)
        return x.flatten(1).mean(1).view(-1, *([1] * (x.dim() - 1))).expand_as(x).clone()


def register_attacks(register):
    register("gaussian_noise", GaussianNoise)
    register("occlusion", Occlusion)
    register("drop_modality", DropModality)
