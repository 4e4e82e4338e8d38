"""Numbers that do not depend on the machine: the same suite and seed give the same numbers on
x86-64 CPUs with or without AVX-512, and with any number of cores.

Why this is needed (measured on the quickstart): training small CNNs is chaotic, so a last-bit
difference in any operation grows into models a few points of accuracy apart on 500 test samples.
The same code and torch build gave 84.6 / 86.0 / 89.8 / 94.6 % clean accuracy on an AVX-512 machine
and another set on an AVX2-only one. Four things moved the last bits:

1. MKL picks its code path per CPU (matmul, FFT, exp/log), in the data build and in training;
2. oneDNN picks its convolution kernels per CPU;
3. ATen's vectorised kernels differ by instruction set (AVX2, AVX-512, none);
4. the number of intra-op threads changes the order of reductions (gradients, the data build).

So before torch runs its first operation, avharness asks MKL for its AVX2 reproducibility branch
(``MKL_CBWR=AVX2``) and caps oneDNN and ATen at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``); and it builds data and trains with one intra-op thread
(``AVHARNESS_TRAIN_THREADS``, default 1; attacks and evaluation keep torch's default, since their
results were found not to depend on it). With these, the data, the trained weights and the
attack outcomes were bit-identical on an AVX-512 machine and on a simulated AVX2-only one.

Cost: the instruction-set caps cost ~0-10 % at the same thread count; one training thread is up to
2x slower on an idle 2-core machine (faster on a busy one). Each variable is only set when the user
has not set it, so ``ATEN_CPU_CAPABILITY=avx512`` (etc.) or ``AVHARNESS_NUMERICS=native`` (set
none of them) trades reproducibility for speed; every report records what was in force
(``environment.numerics``). This module must not import torch: it runs before torch does.

Not covered: other torch/MKL/oneDNN versions, non-Intel CPUs (MKL's branch is guaranteed on Intel
only), CPUs without AVX2, GPUs (different kernels entirely), and a process that ran torch
operations before importing avharness (the settings are read at the first operation; the report
then shows ``cpu_capability`` other than AVX2).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

PORTABLE = {"MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def portable_defaults() -> None:
    """Set the portable instruction-set defaults, unless the user chose otherwise (x86-64 only)."""
    if os.environ.get("AVHARNESS_NUMERICS", "portable").strip().lower() == "native":
        return
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    for key, value in PORTABLE.items():
        os.environ.setdefault(key, value)


def train_threads() -> int:
    """Intra-op threads for building data and training (0: torch's default)."""
    raw = os.environ.get("AVHARNESS_TRAIN_THREADS", "1").strip()
    try:
        n = int(raw)
    except ValueError:
        from .errors import UserError

        raise UserError(f"AVHARNESS_TRAIN_THREADS={raw!r}: expected a whole number (0 for torch's default)") from None
    return max(n, 0)


@contextlib.contextmanager
def training_threads() -> Iterator[None]:
    """Run the block with ``train_threads()`` intra-op threads, restoring the previous count after."""
    import torch

    n = train_threads()
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe() -> dict:
    """What was in force, for report.json's ``environment.numerics``."""
    import torch

    return {
        "mode": "native" if os.environ.get("AVHARNESS_NUMERICS", "").strip().lower() == "native" else "portable",
        **{k: os.environ.get(k) for k in PORTABLE},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "train_threads": train_threads() or torch.get_num_threads(),
        "machine": platform.machine(),
    }
