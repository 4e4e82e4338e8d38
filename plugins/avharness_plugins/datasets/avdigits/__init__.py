"""``avdigits``: handwritten digits as short clips paired with the spoken digit (eSpeak NG)."""
