"""The conformance kit for a plugin's own tests (the checks behind ``avharness plugin check``).

```python
from avharness.testing import assert_passes, check_attack

def test_my_attack_conforms():
    assert_passes(check_attack(build_my_attack, steps=5))
```

Each ``check_*`` takes the plugin's factory (a function or a class) and its parameters, builds the
plugin and returns a list of ``Check(name, ok, detail)``; ``assert_passes`` raises an
``AssertionError`` listing every failed check. Models are checked on a dataset's task and specs
(default: the kit's synthetic two-modality task, ``SyntheticAV``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import conformance
from .conformance import SPECS, Check, SyntheticAV, reference_model

if TYPE_CHECKING:
    from .data import InputSpec
    from .task import Task

__all__ = ["Check", "SPECS", "SyntheticAV", "assert_passes", "check_attack", "check_dataset", "check_defense",
           "check_metric", "check_model", "failures", "reference_model"]


def check_attack(factory: Callable[..., Any], **params: Any) -> list[Check]:
    return conformance.check_attack(factory(**params))


def check_defense(factory: Callable[..., Any], **params: Any) -> list[Check]:
    return conformance.check_defense(factory(**params))


def check_metric(factory: Callable[..., Any], **params: Any) -> list[Check]:
    return conformance.check_metric(factory(**params))


def check_dataset(factory: Callable[..., Any], **params: Any) -> list[Check]:
    return conformance.check_dataset(factory(**params))


def check_model(factory: Callable[..., Any], task: Task | None = None, specs: dict[str, InputSpec] | None = None,
                **params: Any) -> list[Check]:
    """``task`` and ``specs`` default to the synthetic task's (``SyntheticAV().task`` / ``.specs``)."""
    if task is None or specs is None:
        data = SyntheticAV(n=8)
        task, specs = task or data.task, specs or data.specs
    return conformance.check_model(lambda: factory(task=task, specs=specs, **params), task, specs)


def failures(results: list[Check]) -> list[Check]:
    return [c for c in results if not c.ok]


def assert_passes(results: list[Check]) -> None:
    """Raise an AssertionError naming every failed check (and pass silently otherwise)."""
    bad = failures(results)
    assert results, "no checks ran"
    assert not bad, "conformance checks failed:\n" + "\n".join(f"  FAIL {c.name}: {c.detail}" for c in bad)
