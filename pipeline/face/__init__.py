"""Faces in videos (DESIGN §3): decoding, detection, tracking, landmarks, alignment and optical flow.

:mod:`.video` (decord decoding, Haar detection, box tracking, warps), :mod:`.align` (MTCNN five-point
landmarks, similarity alignment, a clip's onset/apex crops), :mod:`.optical_flow` (TV-L1, optical strain). Nothing
here imports :mod:`pipeline.models` or the training code (``tests/test_layout.py``).
"""
