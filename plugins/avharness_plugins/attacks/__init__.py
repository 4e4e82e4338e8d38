"""Built-in attacks: native FGSM/PGD (``pgd``), the AutoAttack family (``apgd``, ``fab``, ``square``,
``autoattack``; their losses in ``goals``), the worst-case cascade (``ensemble``), the universal
perturbation (``universal``), corruptions (``corruptions``) and the ART / foolbox backends
(``backends/``)."""

from avharness import hookimpl


@hookimpl
def register_attacks(register):
    from avharness_plugins.attacks import apgd, autoattack, corruptions, ensemble, fab, pgd, square, universal
    from avharness_plugins.attacks.backends import art, foolbox

    for module in (pgd, ensemble, universal, corruptions, art, foolbox, apgd, fab, square, autoattack):
        module.register_attacks(register)
