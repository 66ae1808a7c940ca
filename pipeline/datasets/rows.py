"""Turn a sheet read by :func:`~pipeline.sheets.read_table` into annotation rows and dropped rows.

Shared by the CASME II, SAMM, SMIC-HS-E, CAS(ME)^3 and MMEW adapters (whole-column pandas checks rather than a
loop over rows): each row is either kept, with its frames parsed to int, or dropped with the first reason found,
naming the file, the row and the column; two kept rows with the same (subject, clip, onset) fail
(:func:`~pipeline.datasets.common.check_unique`). A check only one dataset needs (MMEW's) stays in its adapter.
"""

from __future__ import annotations

import pandas as pd

from pipeline.datasets.common import ANNOTATION_COLUMNS, DROPPED_COLUMNS, check_unique

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


def split_rows(sheet: pd.DataFrame, file_name: str, source: str, names: dict[str, str | None], *,
               subject_format: str = "{}", subject_id: tuple[str, str] | None = None,
               interval_note: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    r"""Split ``sheet`` (every cell stripped text, plus ``sheet_row``) into ``(rows, dropped)``.

    Args:
        sheet: as :func:`~pipeline.sheets.read_table` returns it.
        file_name: the annotation file, for messages.
        source: the source dataset, for ``dropped``.
        names: our column name -> the sheet's, for ``subject``, ``clip``, ``onset_frame``, ``offset_frame``,
            ``emotion`` and, optionally (None or absent: not in the sheet), ``apex_frame`` and
            ``action_units``.
        subject_format: how a valid subject is written, as :meth:`str.format` of the subject number
            (``'{:03d}'``: ``'6'`` -> ``'006'``), or of the cell's text with ``subject_id``.
        subject_id: ``(regex, example)`` when subjects are text ids (CAS(ME)^3: ``('spNO\.\d+', 'spNO.1')``): a
            subject is valid when the regex matches the whole cell. None: a subject is a whole number ≥ 0
            (``'006'``, ``'6.0'``).
        interval_note: appended to the reason of an offset before the onset (e.g. ``' (not an interval)'``).

    Returns:
        ``rows``: :data:`~pipeline.datasets.common.ANNOTATION_COLUMNS`, ``subject`` per ``subject_format``,
        ``onset_frame`` / ``offset_frame`` int64, ``apex_frame`` int or None (None: missing or not a frame
        number; the apex policy decides); ``dropped``: :data:`~pipeline.datasets.common.DROPPED_COLUMNS`
        (``subject`` per ``subject_format`` where valid, else as written), one reason per row: an empty or
        invalid subject, an empty clip name, an onset or offset cell that is not a frame number (e.g.
        ``'MISSING <-426679'``), or an offset before the onset.

    Raises:
        AnnotationError: two kept rows with the same (subject, clip, onset): the message names ``file_name``
            and both rows (:func:`~pipeline.datasets.common.check_unique`).
    """
    where = file_name + " row " + sheet["sheet_row"].astype(str)
    subject_column, clip_column = names["subject"], names["clip"]
    onset_column, offset_column = names["onset_frame"], names["offset_frame"]
    subject, subject_ok, not_subject = _subjects(sheet[subject_column], subject_format, subject_id)
    onset, onset_ok = whole_numbers(sheet[onset_column])
    offset, offset_ok = whole_numbers(sheet[offset_column])
    reason = first_reason([
        (sheet[subject_column] == "", where + f": empty {subject_column}"),
        (~subject_ok, where + f" column {subject_column}: " + sheet[subject_column].map(repr) + not_subject),
        (sheet[clip_column] == "", where + f": empty {clip_column}"),
        (~onset_ok, where + f" column {onset_column}: " + sheet[onset_column].map(repr) + " is not a frame number"),
        (~offset_ok, where + f" column {offset_column}: " + sheet[offset_column].map(repr)
         + " is not a frame number"),
        (offset < onset, where + f": {offset_column} " + _text(offset) + f" is before {onset_column} "
         + _text(onset) + interval_note),
    ])
    apex_column = names.get("apex_frame")
    apex, apex_ok = whole_numbers(sheet[apex_column] if apex_column else pd.Series(pd.NA, index=sheet.index))
    au_column = names.get("action_units")
    keep = reason == ""
    rows = pd.DataFrame({
        "sheet_row": sheet["sheet_row"], "subject": subject, "clip": sheet[clip_column],
        "onset_frame": onset.where(keep, 0).astype("int64"), "offset_frame": offset.where(keep, 0).astype("int64"),
        "apex_frame": [int(a) if ok else None for a, ok in zip(apex, apex_ok, strict=True)],
        "action_units": sheet[au_column] if au_column else "", "emotion": sheet[names["emotion"]],
    })[keep][ANNOTATION_COLUMNS]
    check_unique(rows, file_name)
    dropped = pd.DataFrame({"source_dataset": source, "sheet_row": sheet["sheet_row"], "subject": subject,
                            "clip": sheet[clip_column], "reason": reason})[~keep]
    return rows.reset_index(drop=True), dropped[DROPPED_COLUMNS].reset_index(drop=True)


def _subjects(column: pd.Series, subject_format: str,
              subject_id: tuple[str, str] | None) -> tuple[pd.Series, pd.Series, str]:
    """Validate and format a subject column into ``(subjects, ok, not_ok)``.

    ``subjects``: each cell per ``subject_format`` where valid (else as written); ``ok``: whether it is valid;
    ``not_ok``: the end of the message for an invalid one (see :func:`split_rows`).
    """
    if subject_id is None:
        number, ok = whole_numbers(column)
        text, not_ok = _text(number.where(ok, 0), subject_format), " is not a subject number"
    else:
        ok = column.str.fullmatch(subject_id[0])
        text, not_ok = _text(column, subject_format), f" is not a subject id like {subject_id[1]!r}"
    return text.where(ok, column), ok, not_ok


def _text(column: pd.Series, template: str = "{}") -> pd.Series:
    """``template`` formatted with each cell, as text (also when ``column`` is empty).

    A float that is a whole number is formatted as an int: ``6.0`` -> ``6``.
    """
    return column.map(lambda v: template.format(int(v) if isinstance(v, float) and v.is_integer() else v)).astype(str)
