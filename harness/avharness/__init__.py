"""avharness: adversarial robustness of audio, video and audio-visual classifiers.

The core knows no concrete dataset, model, attack, defense or metric: those are plugins found
through entry points in group ``avharness`` (the built-ins included).

From Python: ``avharness.run(suite, ...)`` runs a suite and ``avharness.load_report(folder)`` reads a
finished run; both return a ``Report`` (tables as pandas DataFrames, figures from matplotlib).
"""

__version__ = "0.1.0"

# Before any submodule imports torch: numbers that do not depend on the CPU (see numerics.py).
from .numerics import portable_defaults as _portable_defaults

_portable_defaults()

from .api import Report, load_report, run
from .contracts import Attack, AttackOutput, AttackStats, Defense, Evidence, FitContext, Metric, ModelEvidence, ModelMetric
from .data import Batch, Dataset, InputSpec
from .errors import NumericalError, UserError
from .hookspecs import hookimpl
from .model import AVModel, create_model, load_model, model_spec, save_model
from .plugins import get_registry
from .seeding import SampleRNG, derive_seed, generator, seed_everything
from .store import atomic_write_bytes, atomic_write_json
from .task import Task
from .threat import Budget, ThreatModel

__all__ = [
    "Attack",
    "AttackOutput",
    "AttackStats",
    "AVModel",
    "Batch",
    "Budget",
    "Dataset",
    "Defense",
    "Evidence",
    "FitContext",
    "InputSpec",
    "atomic_write_bytes",
    "atomic_write_json",
    "Metric",
    "ModelEvidence",
    "ModelMetric",
    "NumericalError",
    "Report",
    "SampleRNG",
    "Task",
    "ThreatModel",
    "UserError",
    "create_model",
    "derive_seed",
    "generator",
    "get_registry",
    "hookimpl",
    "load_model",
    "load_report",
    "model_spec",
    "run",
    "save_model",
    "seed_everything",
]
