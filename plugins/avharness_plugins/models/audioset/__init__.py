"""The AudioSet model zoo: audio taggers (``audio``), the video model (``video``), fusion (``fusion``)
and the layers they share (``layers``)."""
