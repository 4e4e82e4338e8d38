"""Robust training defenses (adversarial training, mix-up): registered through their own entry point."""

from avharness import hookimpl


@hookimpl
def register_defenses(register):
    pass
