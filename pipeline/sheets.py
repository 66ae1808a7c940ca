"""Reading annotation sheets and CSV lists (``.xlsx``, ``.xls``, ``.csv``) as text, with the row numbers people see.

Used by the micro-expression adapters (:mod:`pipeline.datasets`) and by macro sources that list their videos in a
CSV (:mod:`pipeline.ingest.macro`); it imports neither, so each depends on exactly the code it uses.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["AnnotationError", "read_table"]


class AnnotationError(ValueError):
    """An annotation file is missing or malformed; the message names the file (and the columns)."""


def read_table(path: Path, required: list[str], **read_kwargs) -> pd.DataFrame:
    """Read a sheet (``.xlsx``/``.xls``) or ``.csv`` with every cell as stripped text (``''`` when empty).

    Adds ``sheet_row``: the row number a spreadsheet program shows (header = 1, unless ``skiprows`` moves it).

    Args:
        path: the file.
        required: columns that must be present.
        **read_kwargs: passed to ``pandas.read_csv`` / ``pandas.read_excel`` (e.g. ``sheet_name``, ``skiprows``).

    Returns:
        One row per data row, every column ``str``, plus ``sheet_row`` (int) first.

    Raises:
        AnnotationError: missing or unreadable file, or required columns missing (names the missing and the
            found columns).
    """
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False, **read_kwargs)
        else:
            table = pd.read_excel(path, dtype=str, keep_default_na=False, **read_kwargs)  # "n/a" stays text
    except Exception as err:
        raise AnnotationError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise AnnotationError(f"{path}: missing columns {missing}; found {list(table.columns)}")
    table = table.fillna("").astype(str).apply(lambda column: column.str.strip())
    header_row = 1 + int(read_kwargs.get("skiprows", 0) or 0)
    table.insert(0, "sheet_row", table.index.to_numpy() + header_row + 1)
    return table
