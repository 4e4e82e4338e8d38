"""Test helpers: writers of small folders in the real data sets' on-disk layouts (``layouts``)."""
