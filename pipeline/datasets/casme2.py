"""CASME II adapter: the coding sheet and the on-disk layout (Yan et al., PLoS ONE 2014).

Layout (frame number ``N`` is the one the sheet's ``OnsetFrame`` / ``ApexFrame`` / ``OffsetFrame`` use)::

    <root>/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg        (micro.casme2_frames = raw)
    <root>/Cropped/sub01/EP02_01f/reg_img46.jpg                (micro.casme2_frames = cropped: faces cropped)
    <root>/CASME2-coding-20140508.xlsx                         (the standard coding sheet)

The sheet (first sheet): ``Subject, Filename, (blank), OnsetFrame, ApexFrame, OffsetFrame, (blank),
Action Units, Estimated Emotion``; the 2019 revision adds ``Objective Classes`` (ignored). Real pitfalls handled:
``Subject`` stored as a number (``1``) or text (``'01'``); ``ApexFrame`` of ``04/EP12_01f`` is the string ``'/'``;
``Action Units`` mixes ints and strings. The embedded demo is written in this layout (source ``demo``), so the
demo exercises this code path.

``micro.casme2_frames`` picks the folder; it is not guessed (raw frames are whole video frames, for
``micro.detector = haar``; cropped frames are faces already, for ``none``). When the chosen folder is missing and
the other exists, :func:`layout` says so, and the missing-frames check of ingest_micro quotes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import Annotations
from pipeline.datasets.rows import split_rows
from pipeline.sheets import read_table

__all__ = ["LAYOUTS", "STANDARD_ANNOTATION", "frame_path", "layout", "read", "read_sheet"]

STANDARD_ANNOTATION = "CASME2-coding-20140508.xlsx"
COLUMNS = {  # our name -> sheet column
    "subject": "Subject",
    "clip": "Filename",
    "onset_frame": "OnsetFrame",
    "apex_frame": "ApexFrame",
    "offset_frame": "OffsetFrame",
    "action_units": "Action Units",
    "emotion": "Estimated Emotion",
}
LAYOUTS = {"raw": ("CASME2_RAW_selected", "img{frame}.jpg"), "cropped": ("Cropped", "reg_img{frame}.jpg")}


def frame_path(root: Path, subject: str, clip: str, frame: int, frames: str) -> Path:
    """Path of frame ``frame`` of ``clip`` of ``subject`` (``'01'`` or ``'1'``) under ``root``."""
    folder, pattern = LAYOUTS[frames]
    return root / folder / f"sub{int(subject):02d}" / clip / pattern.format(frame=frame)


def layout(root: Path, frames: str) -> str:
    """Where frame files are expected under ``root`` with ``micro.casme2_frames`` = ``frames``, for messages.

    Adds a hint when that folder is missing and the other one exists.

    >>> layout(Path("/nowhere"), "cropped")
    '/nowhere/Cropped/sub<NN>/<clip>/reg_img<N>.jpg (micro.casme2_frames = cropped)'
    """
    folder, pattern = LAYOUTS[frames]
    text = f"{root / folder}/sub<NN>/<clip>/{pattern.format(frame='<N>')} (micro.casme2_frames = {frames})"
    other = next(name for name in LAYOUTS if name != frames)
    if not (root / folder).is_dir() and (root / LAYOUTS[other][0]).is_dir():
        text += (f"; {root / folder} does not exist but {root / LAYOUTS[other][0]} does: set micro.casme2_frames "
                 f"to {other}")
    return text


def read_sheet(path: Path, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse a CASME II coding sheet into ``(rows, dropped)``; ``subject`` becomes ``'sub01'``.

    See :class:`~pipeline.datasets.common.Annotations` and :func:`~pipeline.datasets.rows.split_rows`.

    Rows dropped with the reason (row and column named): empty or non-numeric ``Subject``, empty ``Filename``,
    ``OnsetFrame`` / ``OffsetFrame`` not a frame number, ``OffsetFrame`` before ``OnsetFrame``.

    Raises:
        AnnotationError: missing file or columns, or two rows with the same (subject, clip, onset).
    """
    sheet = read_table(path, list(COLUMNS.values()), sheet_name=0)
    return split_rows(sheet, path.name, source, COLUMNS, subject_format="sub{:02d}")


def read(params: MicroParams) -> list[Annotations]:
    """The CASME II (or demo) annotations under ``params.root``; subjects become ``sub01`` etc.

    Raises:
        AnnotationError: see :func:`read_sheet`.
    """
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    source = "demo" if params.dataset == "demo" else "casme2"
    rows, dropped = read_sheet(path, source)
    return [Annotations(
        source=source, rows=rows, dropped=dropped, where=path.name, apex_column=COLUMNS["apex_frame"],
        layout=layout(params.root, params.casme2_frames),
        frame_path=lambda subject, clip, frame: frame_path(params.root, subject.removeprefix("sub"), clip, frame,
                                                           params.casme2_frames),
    )]
