"""Built-in metrics: accuracy, attack success and perturbation size (``basic``), tagging metrics
(``tagging``) and latent-space metrics (``latent/``)."""

from avharness import hookimpl


@hookimpl
def register_metrics(register):
    from avharness_plugins.metrics import basic, latent, tagging

    for module in (basic, tagging, latent):
        module.register_metrics(register)
