"""The parameter handling the clip datasets share: checks that take a suite's raw value and return it
checked or raise a UserError naming the plugin and the parameter (``choice``, ``positive``,
``bounds_param``, ``min_duration_param``), the allowed values they check against, the default number
of decoding threads and the resolution of relative paths against the dataset root."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from avharness import UserError

AUDIO_MODES = ("logmel64", "fbank128", "waveform")
MISSING_POLICIES = ("skip", "error")
CHECKS = ("exists", "header", "decode")
INF = float("inf")


def choice(owner: str, name: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise UserError(f"{owner}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


#: the default shortest usable clip, as a fraction of clip_seconds: shorter audio is a cut-off file
MIN_DURATION = 0.1


def min_duration_param(owner: str, value) -> float:
    """``min_duration`` (None: the default): a fraction of clip_seconds in [0, 1]."""
    if value is None:
        return MIN_DURATION
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"{owner}: min_duration must be a fraction of clip_seconds in [0, 1] (clips with less audio "
                        f"count as unreadable; default {MIN_DURATION}), got {value!r}")
    return float(value)


def positive(owner: str, name: str, value, integer: bool = False):
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise UserError(f"{owner}: {name} must be {kind}, got {value!r}")
    return value


def bounds_param(owner: str, name: str, value, default: tuple[float, float]) -> tuple[float, float]:
    """``[lo, hi]`` from a suite (numbers, or "inf"/"-inf"/null for an open end) -> a float pair."""
    if value is None:
        return default
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise UserError(f"{owner}: {name} must be a pair [low, high] (use -inf/inf for an open end), got {value!r}")
    out = []
    for v, open_end in zip(value, (-INF, INF)):
        if v is None:
            out.append(open_end)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise UserError(f"{owner}: {name} must hold two numbers, got {value!r}") from None
    if math.isnan(out[0]) or math.isnan(out[1]) or not out[0] < out[1]:
        raise UserError(f"{owner}: {name} must satisfy low < high, got {value!r}")
    return out[0], out[1]


def default_workers(workers: int | None) -> int:
    """Decoding threads: as given, or one per core up to 8 (decoding is I/O and C code, not Python)."""
    return min(8, os.cpu_count() or 1) if workers is None else workers


def resolve(root: Path, path: str | os.PathLike) -> Path:
    """A user path: absolute as given, relative to the dataset root otherwise."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p
