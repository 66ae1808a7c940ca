"""MMEW adapter: the micro-expression sheet and the on-disk layout (Ben et al., TPAMI 2021).

Layout (one folder per emotion, then per clip; the frame number ``N`` is the file name and is the one the sheet's
``OnsetFrame`` / ``ApexFrame`` / ``OffsetFrame`` use)::

    <root>/Micro_Expression/happiness/S01-01-001/15.jpg
    <root>/MMEW_Micro_Exp_delete_others.csv                     (the standard sheet)

The sheet: ``Subject (1 … 30), Filename ('S01-01-001'), OnsetFrame, ApexFrame, OffsetFrame, Action Units,
Estimated Emotion, remarks`` (later columns ignored). The standard file is the CSV HTNet's authors derived from
MMEW's own sheet (the ``others`` clips removed): 234 rows, 30 subjects, emotions surprise 89, disgust 72,
happiness 36, fear 16, sadness 13, anger 8. A sheet with the same columns (``.xlsx`` or ``.csv``, e.g. MMEW's
own) is read through ``micro.annotation``.

The emotion is part of a frame's path, so a row with an empty ``Estimated Emotion`` is dropped, and so is a row
whose ``Filename`` is not the subject's (``S01-…`` for subject 1). Subjects become ``mmew/S01`` (two digits, as in
the clip names).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import ANNOTATION_COLUMNS, DROPPED_COLUMNS, Annotations, parse_frame, read_table

__all__ = ["STANDARD_ANNOTATION", "frame_path", "read", "read_sheet"]

STANDARD_ANNOTATION = "MMEW_Micro_Exp_delete_others.csv"
COLUMNS = {  # sheet column -> our name
    "Subject": "subject",
    "Filename": "clip",
    "OnsetFrame": "onset_frame",
    "ApexFrame": "apex_frame",
    "OffsetFrame": "offset_frame",
    "Action Units": "action_units",
    "Estimated Emotion": "emotion",
}


def frame_path(root: Path, emotion: str, clip: str, frame: int) -> Path:
    """Path of frame ``frame`` of ``clip`` (``'S01-01-001'``) annotated ``emotion`` (``'happiness'``) under
    ``root``."""
    return root / "Micro_Expression" / emotion / clip / f"{frame}.jpg"


def _parse_row(row, where: str) -> tuple[dict, str]:
    """``(frames, '')`` for a usable row, else ``(partial frames, reason)`` naming the row and the column."""
    if not row.subject:
        return {}, f"{where}: empty Subject"
    if not row.subject.isdigit():
        return {}, f"{where} column Subject: {row.subject!r} is not a subject number"
    if not row.clip.startswith(f"S{int(row.subject):02d}-"):
        return {}, f"{where} column Filename: {row.clip!r} is not a clip of subject {row.subject}"
    if not row.emotion:
        return {}, f"{where}: empty Estimated Emotion (it names the frame folder)"
    frames = {}
    for ours, theirs in [("onset_frame", "OnsetFrame"), ("offset_frame", "OffsetFrame")]:
        frames[ours], reason = parse_frame(getattr(row, ours), where, theirs)
        if reason:
            return frames, reason
    if frames["offset_frame"] < frames["onset_frame"]:
        return frames, (f"{where}: OffsetFrame {frames['offset_frame']} is before OnsetFrame "
                        f"{frames['onset_frame']} (not an interval)")
    frames["apex_frame"], _ = parse_frame(row.apex_frame, where, "ApexFrame")  # None: the apex policy decides
    return frames, ""


def read_sheet(path: Path, source: str = "mmew") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse an MMEW sheet (``.csv`` or first worksheet of an ``.xlsx``) into ``(rows, dropped)`` (see
    :class:`~pipeline.datasets.common.Annotations`); ``subject`` becomes ``'S01'``.

    Rows dropped with the reason (row and column named): empty or non-numeric ``Subject``, a ``Filename`` not of
    that subject, empty ``Estimated Emotion``, a frame that is not a number, ``OffsetFrame`` before ``OnsetFrame``,
    a ``Filename`` already seen under another emotion (its frame folder would be ambiguous).

    Raises:
        AnnotationError: missing file or missing columns (names the missing and the found ones).
    """
    read_kwargs = {} if path.suffix.lower() == ".csv" else {"sheet_name": 0}
    sheet = read_table(path, list(COLUMNS), **read_kwargs).rename(columns=COLUMNS)
    rows, dropped, emotion_of = [], [], {}
    for row in sheet.itertuples(index=False):
        where = f"{path.name} row {row.sheet_row}"
        frames, reason = _parse_row(row, where)
        if not reason and emotion_of.setdefault(row.clip, row.emotion) != row.emotion:
            reason = f"{where}: Filename {row.clip!r} also annotated {emotion_of[row.clip]!r} in another row"
        if reason:
            dropped.append(dict(source_dataset=source, sheet_row=row.sheet_row, subject=row.subject, clip=row.clip,
                                reason=reason))
            continue
        rows.append(dict(sheet_row=row.sheet_row, subject=f"S{int(row.subject):02d}", clip=row.clip, **frames,
                         action_units=row.action_units, emotion=row.emotion))
    return pd.DataFrame(rows, columns=ANNOTATION_COLUMNS), pd.DataFrame(dropped, columns=DROPPED_COLUMNS)


def read(params: MicroParams) -> list[Annotations]:
    """The MMEW annotations under ``params.root`` (sheet: ``params.annotation``, else :data:`STANDARD_ANNOTATION`
    under the root).

    Raises:
        AnnotationError: see :func:`read_sheet`.
    """
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    rows, dropped = read_sheet(path)
    emotion_of = dict(zip(rows["clip"], rows["emotion"], strict=True))  # one emotion per clip (read_sheet)
    return [Annotations(source="mmew", rows=rows, dropped=dropped, where=path.name, apex_column="ApexFrame",
                        frame_path=lambda subject, clip, frame: frame_path(params.root, emotion_of[clip], clip,
                                                                           frame))]
