"""Built-in datasets: ``avdigits`` (embedded), ``audioset`` and ``kinetics_sounds`` (real on-disk layouts).

Shared pieces live beside them: ``clips/`` decodes audio and video clips for both real data sets,
``features.py`` holds the log-mel / fbank pipelines.
"""

from avharness import hookimpl


@hookimpl
def register_datasets(register):
    # Imported here, not at module level, so that listing plugins does not import every loader.
    from avharness_plugins.datasets import kinetics_sounds
    from avharness_plugins.datasets.audioset import dataset as audioset
    from avharness_plugins.datasets.avdigits import dataset as avdigits

    for module in (avdigits, audioset, kinetics_sounds):
        module.register_datasets(register)
