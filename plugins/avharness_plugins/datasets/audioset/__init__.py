"""``audioset``: metadata (class list, segment CSVs, AST manifests) in ``meta``, the loader in ``dataset``."""
