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
from pipeline.datasets.common import DROPPED_COLUMNS, Annotations
from pipeline.datasets.rows import first_reason, split_rows
from pipeline.sheets import read_table

__all__ = ["STANDARD_ANNOTATION", "frame_path", "read", "read_sheet"]

STANDARD_ANNOTATION = "MMEW_Micro_Exp_delete_others.csv"
COLUMNS = {  # our name -> sheet column
    "subject": "Subject",
    "clip": "Filename",
    "onset_frame": "OnsetFrame",
    "apex_frame": "ApexFrame",
    "offset_frame": "OffsetFrame",
    "action_units": "Action Units",
    "emotion": "Estimated Emotion",
}


def frame_path(root: Path, emotion: str, clip: str, frame: int) -> Path:
    """Path of frame ``frame`` of ``clip`` (``'S01-01-001'``) annotated ``emotion`` (``'happiness'``) under ``root``."""
    return root / "Micro_Expression" / emotion / clip / f"{frame}.jpg"


def _mmew_reasons(rows: pd.DataFrame, file_name: str) -> pd.Series:
    """Per row kept by :func:`~pipeline.datasets.rows.split_rows`, why MMEW cannot use it, else ``''``.

    ``subject`` is already ``'S01'``. The reasons: a ``Filename`` not of that subject, an empty ``Estimated
    Emotion``, or, for a row passing those, a ``Filename`` an earlier such row annotated with another emotion.
    """
    where = file_name + " row " + rows["sheet_row"].astype(str)
    own_clip = pd.Series([c.startswith(s + "-") for c, s in zip(rows["clip"], rows["subject"], strict=True)],
                         index=rows.index, dtype=bool)
    reason = first_reason([
        (~own_clip, where + " column Filename: " + rows["clip"].map(repr) + " is not a clip of subject "
         + rows["subject"].str[1:].map(lambda n: str(int(n)))),
        (rows["emotion"] == "", where + ": empty Estimated Emotion (it names the frame folder)"),
    ])
    first = rows["emotion"].where(reason == "").groupby(rows["clip"]).transform("first")
    return reason.mask((reason == "") & (rows["emotion"] != first), where + ": Filename " + rows["clip"].map(repr)
                       + " also annotated " + first.map(repr) + " in another row")


def read_sheet(path: Path, source: str = "mmew") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse an MMEW sheet (``.csv`` or first worksheet of an ``.xlsx``) into ``(rows, dropped)``.

    See :class:`~pipeline.datasets.common.Annotations` and :func:`~pipeline.datasets.rows.split_rows`; ``subject``
    becomes ``'S01'``.

    Rows dropped (in sheet order) with the first reason found, row and column named: empty or non-numeric
    ``Subject``, empty ``Filename``, a frame that is not a number, ``OffsetFrame`` before ``OnsetFrame``; then
    MMEW's own checks: a ``Filename`` not of that subject, empty ``Estimated Emotion``, a ``Filename`` already
    seen under another emotion (its frame folder would be ambiguous).

    Raises:
        AnnotationError: missing file, missing columns (names the missing and the found ones), or two rows with
            the same (subject, clip, onset) (before MMEW's own checks: such a pair fails, whatever its emotions).
    """
    read_kwargs = {} if path.suffix.lower() == ".csv" else {"sheet_name": 0}
    sheet = read_table(path, list(COLUMNS.values()), **read_kwargs)
    rows, dropped = split_rows(sheet, path.name, source, COLUMNS, subject_format="S{:02d}",
                               interval_note=" (not an interval)")
    reason = _mmew_reasons(rows, path.name)
    bad = reason != ""
    if bad.any():
        more = rows[bad].assign(source_dataset=source, reason=reason[bad])[DROPPED_COLUMNS]
        dropped = pd.concat([dropped, more]).sort_values("sheet_row", kind="stable").reset_index(drop=True)
    return rows[~bad].reset_index(drop=True), dropped


def read(params: MicroParams) -> list[Annotations]:
    """The MMEW annotations under ``params.root``.

    The sheet is ``params.annotation``, else :data:`STANDARD_ANNOTATION` under the root.

    Raises:
        AnnotationError: see :func:`read_sheet`.
    """
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    rows, dropped = read_sheet(path)
    emotion_of = dict(zip(rows["clip"], rows["emotion"], strict=True))  # one emotion per clip (read_sheet)
    return [Annotations(source="mmew", rows=rows, dropped=dropped, where=path.name, apex_column=COLUMNS["apex_frame"],
                        layout=f"{params.root}/Micro_Expression/<emotion>/<clip>/<N>.jpg",
                        frame_path=lambda subject, clip, frame: frame_path(params.root, emotion_of[clip], clip,
                                                                           frame))]
