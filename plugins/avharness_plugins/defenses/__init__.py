"""Built-in defenses: plain training and ``none`` (``standard``); adversarial training, mix-up and
metric-guided mix-up (``robust_training``)."""

from avharness import hookimpl


@hookimpl
def register_defenses(register):
    from avharness_plugins.defenses import robust_training, standard

    for module in (standard, robust_training):
        module.register_defenses(register)
