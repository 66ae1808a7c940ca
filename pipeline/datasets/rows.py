"""Turn a sheet read by :func:`~pipeline.datasets.common.read_table` into annotation rows and dropped rows.

Shared by the SAMM and SMIC-HS-E adapters (whole-column pandas checks rather than a loop over rows): each row
is either kept, with its frames parsed to int, or dropped with the first reason found, naming the file, the
row and the column.
"""

from __future__ import annotations

import pandas as pd

from pipeline.datasets.common import ANNOTATION_COLUMNS, DROPPED_COLUMNS

__all__ = ["first_reason", "split_rows", "whole_numbers"]


def first_reason(checks: list[tuple[pd.Series, pd.Series]]) -> pd.Series:
    """Per row, the text of the first check whose ``bad`` mask holds, else ``''``.

    Args:
        checks: ``(bad, text)`` pairs of Series on the same index: a bool mask and one message per row.
    """
    reason = pd.Series("", index=checks[0][0].index, dtype=object)
    for bad, text in checks:
        reason = reason.mask((reason == "") & bad, text)
    return reason


def whole_numbers(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``(numbers, ok)``: the cells as float (NaN where not a number) and whether each is a whole number ≥ 0."""
    number = pd.to_numeric(column, errors="coerce")
    return number, number.notna() & (number % 1 == 0) & (number >= 0)


def split_rows(sheet: pd.DataFrame, file_name: str, source: str,
               names: dict[str, str | None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``sheet`` (every cell stripped text, plus ``sheet_row``) into ``(rows, dropped)``.

    Args:
        sheet: as :func:`~pipeline.datasets.common.read_table` returns it.
        file_name: the annotation file, for messages.
        source: the source dataset, for ``dropped``.
        names: our column name -> the sheet's, for ``subject``, ``clip``, ``onset_frame``, ``offset_frame``,
            ``emotion`` and, optionally (None or absent: not in the sheet), ``apex_frame`` and
            ``action_units``.

    Returns:
        ``rows``: :data:`~pipeline.datasets.common.ANNOTATION_COLUMNS`, ``subject`` as an int in text
        (``'006'`` -> ``'6'``: the adapter formats it), ``onset_frame`` / ``offset_frame`` int64,
        ``apex_frame`` int or None (None: missing or not a frame number; the apex policy decides);
        ``dropped``: :data:`~pipeline.datasets.common.DROPPED_COLUMNS`, one reason per row: an empty or
        non-numeric subject, an empty clip name, an onset or offset cell that is not a frame number (e.g.
        ``'MISSING <-426679'``), or an offset before the onset.
    """
    where = file_name + " row " + sheet["sheet_row"].astype(str)
    subject_column, clip_column = names["subject"], names["clip"]
    onset_column, offset_column = names["onset_frame"], names["offset_frame"]
    subject, subject_ok = whole_numbers(sheet[subject_column])
    onset, onset_ok = whole_numbers(sheet[onset_column])
    offset, offset_ok = whole_numbers(sheet[offset_column])
    reason = first_reason([
        (sheet[subject_column] == "", where + f": empty {subject_column}"),
        (~subject_ok, where + f" column {subject_column}: " + sheet[subject_column].map(repr)
         + " is not a subject number"),
        (sheet[clip_column] == "", where + f": empty {clip_column}"),
        (~onset_ok, where + f" column {onset_column}: " + sheet[onset_column].map(repr) + " is not a frame number"),
        (~offset_ok, where + f" column {offset_column}: " + sheet[offset_column].map(repr)
         + " is not a frame number"),
        (offset < onset, where + f": {offset_column} " + sheet[offset_column] + f" is before {onset_column} "
         + sheet[onset_column]),
    ])
    apex_column = names.get("apex_frame")
    apex, apex_ok = whole_numbers(sheet[apex_column] if apex_column else pd.Series(pd.NA, index=sheet.index))
    au_column = names.get("action_units")
    keep = reason == ""
    rows = pd.DataFrame({
        "sheet_row": sheet["sheet_row"], "subject": subject.where(keep, 0).astype("int64").astype(str),
        "clip": sheet[clip_column], "onset_frame": onset.where(keep, 0).astype("int64"),
        "offset_frame": offset.where(keep, 0).astype("int64"),
        "apex_frame": [int(a) if ok else None for a, ok in zip(apex, apex_ok)],
        "action_units": sheet[au_column] if au_column else "", "emotion": sheet[names["emotion"]],
    })[keep][ANNOTATION_COLUMNS]
    dropped = pd.DataFrame({"source_dataset": source, "sheet_row": sheet["sheet_row"],
                            "subject": sheet[subject_column], "clip": sheet[clip_column], "reason": reason})[~keep]
    return rows.reset_index(drop=True), dropped[DROPPED_COLUMNS].reset_index(drop=True)
