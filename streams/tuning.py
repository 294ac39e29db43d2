"""The FEEDGRID_STREAM_* knobs: declared in :mod:`schemas.settings` (``Settings.stream``)."""

from schemas.settings import StreamTuning, load_tuning

__all__ = ["StreamTuning", "load_tuning"]
