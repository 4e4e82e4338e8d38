"""Built-in models: small CNNs and fusion schemes (``small``) and the AudioSet zoo (``audioset/``)."""

from avharness import hookimpl


@hookimpl
def register_models(register):
    from avharness_plugins.models import small
    from avharness_plugins.models.audioset import audio, fusion, video

    for module in (small, audio, video, fusion):
        module.register_models(register)
