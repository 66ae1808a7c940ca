"""Serving (DESIGN §10): ``ma2mi predict`` on a clip a user points at.

:mod:`.clips` (onset and apex frames of a video or a frame folder), :mod:`.predict` (a final model with the
training preprocessing), :mod:`.cli` (the ``ma2mi`` command). It imports neither :mod:`pipeline.train`,
:mod:`pipeline.ingest` nor :mod:`pipeline.datasets` (``tests/test_layout.py``).
"""
