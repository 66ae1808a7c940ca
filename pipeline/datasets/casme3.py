"""CAS(ME)^3 part A adapter: the micro-expression label sheet and the on-disk layout (Li et al., TPAMI 2022).

Layout (part A: one folder per subject, one folder per video ``a`` … ``m``; the frame number ``N`` is the file name
and is the one the sheet's ``Onset`` / ``Apex`` / ``Offset`` use)::

    <root>/spNO.1/b/color/175.jpg
    <root>/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx            (the standard label sheet)

The sheet (worksheet ``label``): ``Subject ('spNO.1'), Filename ('b'), Onset, Apex, Offset, AU, Objective class,
emotion``, every cell stored as text; 860 rows, 94 subjects. A "clip" here is a whole video: one video holds several
micro-expressions, so (Subject, Filename) repeats and a sample is keyed by (subject, video, onset), which is unique
in the sheet. Real pitfalls handled:

- 4 rows have the apex outside [onset, offset]. Three of them are not intervals at all (``Offset`` before
  ``Onset``: ``spNO.40/e`` twice with ``Offset`` 0, ``spNO.216/d`` with ``Onset`` 3647 > ``Offset`` 2694): their
  middle frame would be a wrong frame of the video, so they are dropped here with the reason. The fourth
  (``spNO.149/d``: apex 83 < onset 112) goes to the apex policy (``micro.apex_outside``).
- ``emotion`` holds both ``others`` and ``Others``: one class (protocols lower-case emotions).
- ``spNO.14`` has a video written ``J`` (upper case) where every other is lower case; it is kept as written (a frame
  file missing on disk is dropped, with its path, by ingest_micro).

Subjects become ``casme3/spNO.1``. Part C (``CAS(ME)3_part_C_ME.xlsx``, mock-crime videos: no apex, no video name,
no public on-disk layout) is not read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import Annotations
from pipeline.datasets.rows import split_rows
from pipeline.sheets import read_table

__all__ = ["STANDARD_ANNOTATION", "frame_path", "read", "read_sheet"]

STANDARD_ANNOTATION = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
SHEET = "label"
COLUMNS = {  # our name -> sheet column
    "subject": "Subject",
    "clip": "Filename",
    "onset_frame": "Onset",
    "apex_frame": "Apex",
    "offset_frame": "Offset",
    "action_units": "AU",
    "emotion": "emotion",
}
SUBJECT = (r"spNO\.\d+", "spNO.1")  # a subject id: regex, example


def frame_path(root: Path, subject: str, clip: str, frame: int) -> Path:
    """Path of frame ``frame`` of video ``clip`` (``'b'``) of ``subject`` (``'spNO.1'``) under ``root``."""
    return root / subject / clip / "color" / f"{frame}.jpg"


def read_sheet(path: Path, source: str = "casme3") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the CAS(ME)^3 part A label sheet (worksheet ``label``) into ``(rows, dropped)``.

    See :class:`~pipeline.datasets.common.Annotations` and :func:`~pipeline.datasets.rows.split_rows`; ``subject``
    stays as written (``'spNO.1'``).

    Rows dropped with the reason (row and column named): empty or malformed ``Subject``, empty ``Filename``,
    ``Onset`` / ``Offset`` not a frame number, ``Offset`` before ``Onset``.

    Raises:
        AnnotationError: missing file, missing worksheet ``label``, missing columns (names the missing and the
            found ones), or two rows with the same (subject, video, onset).
    """
    sheet = read_table(path, list(COLUMNS.values()), sheet_name=SHEET)
    return split_rows(sheet, path.name, source, COLUMNS, subject_id=SUBJECT, interval_note=" (not an interval)")


def read(params: MicroParams) -> list[Annotations]:
    """The CAS(ME)^3 part A annotations under ``params.root``.

    The sheet is ``params.annotation``, else :data:`STANDARD_ANNOTATION` under the root.

    Raises:
        AnnotationError: see :func:`read_sheet`.
    """
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    rows, dropped = read_sheet(path)
    return [Annotations(source="casme3", rows=rows, dropped=dropped, where=path.name,
                        apex_column=COLUMNS["apex_frame"], layout=f"{params.root}/<subject>/<video>/color/<N>.jpg",
                        frame_path=lambda subject, clip, frame: frame_path(params.root, subject, clip, frame))]
