"""Clip datasets: decoding (``decode``), the frozen video backbone (``video_backbone``), the parameter checks
(``params``), the audio front end (``audio``), the video sources (``video``) and the shared clip loader (``dataset``)."""
