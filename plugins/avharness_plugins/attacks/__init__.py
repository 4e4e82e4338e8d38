"""Built-in attacks: native FGSM/PGD (``pgd``), the worst-case cascade (``ensemble``), the universal
perturbation (``universal``), corruptions (``corruptions``) and the ART / foolbox backends
(``backends/``)."""

from avharness import hookimpl


@hookimpl
def register_attacks(register):
    from avharness_plugins.attacks import corruptions, ensemble, pgd, universal
    from avharness_plugins.attacks.backends import art, foolbox

    for module in (pgd, ensemble, universal, corruptions, art, foolbox):
        module.register_attacks(register)
