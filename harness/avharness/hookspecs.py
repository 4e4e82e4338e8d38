"""Plugin hooks: one per kind, each handed a ``register(name, factory)`` callable.

A plugin module (named by an entry point in group ``avharness``) implements any of these with
``@avharness.hookimpl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("avharness")
hookimpl = pluggy.HookimplMarker("avharness")


@hookspec
def register_datasets(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """register("avdigits", factory) where factory(**params) returns a Dataset."""


@hookspec
def register_models(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """register("late_fusion", factory) where factory(task=, specs=, **params) returns an AVModel."""


@hookspec
def register_attacks(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """register("pgd", factory) where factory(**params) returns an Attack."""


@hookspec
def register_defenses(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """register("standard", factory) where factory(**params) returns a Defense."""


@hookspec
def register_metrics(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """register("accuracy", factory) where factory(**params) returns a Metric."""
