"""Placeholder until filled in: registers nothing yet."""

from avharness import hookimpl


@hookimpl
def register_attacks(register):
    pass
