"""Clip datasets: decoding (``decode``), the frozen video backbone and the shared clip loader (``dataset``)."""
