"""Plugin hooks: one per kind, each handed a ``register(name, factory)`` callable.

A plugin module (named by an entry point in group ``avharness``) implements any of these with
``@avharness.hookimpl``.
"""

import pluggy

hookspec = pluggy.HookspecMarker("avharness")
hookimpl = pluggy.HookimplMarker("avharness")


@hookspec
def register_datasets(register):
    """register("avdigits", factory) where factory(**params) returns a Dataset."""


@hookspec
def register_models(register):
    """register("late_fusion", factory) where factory(task=, specs=, **params) returns an AVModel."""


@hookspec
def register_attacks(register):
    """register("pgd", factory) where factory(**params) returns an Attack."""


@hookspec
def register_defenses(register):
    """register("standard", factory) where factory(**params) returns a Defense."""


@hookspec
def register_metrics(register):
    """register("accuracy", factory) where factory(**params) returns a Metric."""
