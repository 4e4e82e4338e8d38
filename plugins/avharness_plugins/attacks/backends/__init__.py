"""Attacks run through other libraries: ART (``art``) and foolbox (``foolbox``) on the packed or
per-modality views built in ``packing``."""
