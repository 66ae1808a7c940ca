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
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import DROPPED_COLUMNS, Annotations, parse_frame, read_table

__all__ = ["STANDARD_ANNOTATION", "frame_path", "read", "read_sheet"]

STANDARD_ANNOTATION = "CASME2-coding-20140508.xlsx"
COLUMNS = {  # sheet column -> our name
    "Subject": "subject",
    "Filename": "clip",
    "OnsetFrame": "onset_frame",
    "ApexFrame": "apex_frame",
    "OffsetFrame": "offset_frame",
    "Action Units": "action_units",
    "Estimated Emotion": "emotion",
}
LAYOUTS = {"raw": ("CASME2_RAW_selected", "img{frame}.jpg"), "cropped": ("Cropped", "reg_img{frame}.jpg")}


def frame_path(root: Path, subject: str, clip: str, frame: int, frames: str) -> Path:
    """Path of frame ``frame`` of ``clip`` of ``subject`` (``'01'`` or ``'1'``) under ``root``."""
    folder, pattern = LAYOUTS[frames]
    return root / folder / f"sub{int(subject):02d}" / clip / pattern.format(frame=frame)


def read_sheet(path: Path, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse a CASME II coding sheet into ``(rows, dropped)`` (see :class:`~pipeline.datasets.common.Annotations`);
    ``subject`` becomes two digits (``'01'``).

    Raises:
        AnnotationError: missing file or columns.
    """
    sheet = read_table(path, list(COLUMNS), sheet_name=0).rename(columns=COLUMNS)
    rows, dropped = [], []
    for row in sheet.itertuples(index=False):
        where = f"{path.name} row {row.sheet_row}"
        reason = ""
        if not row.subject.isdigit():
            reason = f"{where} column Subject: {row.subject!r} is not a subject number" if row.subject else \
                f"{where}: empty Subject"
        elif not row.clip:
            reason = f"{where}: empty Filename"
        frames = {}
        for ours, theirs in [("onset_frame", "OnsetFrame"), ("offset_frame", "OffsetFrame")]:
            if not reason:
                frames[ours], reason = parse_frame(getattr(row, ours), where, theirs)
        frames["apex_frame"], _ = parse_frame(row.apex_frame, where, "ApexFrame")  # None: apex policy decides
        if reason:
            dropped.append(dict(source_dataset=source, sheet_row=row.sheet_row, subject=row.subject, clip=row.clip,
                                reason=reason))
            continue
        rows.append(dict(sheet_row=row.sheet_row, subject=f"{int(row.subject):02d}", clip=row.clip, **frames,
                         action_units=row.action_units, emotion=row.emotion))
    return pd.DataFrame(rows), pd.DataFrame(dropped, columns=DROPPED_COLUMNS)


def read(params: MicroParams) -> list[Annotations]:
    """The CASME II (or demo) annotations under ``params.root``; subjects become ``sub01`` etc."""
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    source = "demo" if params.dataset == "demo" else "casme2"
    rows, dropped = read_sheet(path, source)
    rows["subject"] = "sub" + rows["subject"]
    dropped["subject"] = [f"sub{int(s):02d}" if s.isdigit() else s for s in dropped["subject"]]
    return [Annotations(
        source=source, rows=rows, dropped=dropped, where=path.name, apex_column="ApexFrame",
        frame_path=lambda subject, clip, frame: frame_path(params.root, subject.removeprefix("sub"), clip, frame,
                                                           params.casme2_frames),
    )]
