"""SAMM adapter: the FACS coding sheet and the on-disk layout (Davison et al., IEEE TAC 2018).

Layout (frame number ``N`` is the one the sheet's ``Onset Frame`` / ``Apex Frame`` / ``Offset Frame`` use, written
with five digits)::

    <root>/SAMM/006/006_1_2/006_05562.jpg        (<subject>/<clip>/<subject>_<frame:05d>.jpg)
    <root>/SAMM_Micro_FACS_Codes_v2.xlsx         (the standard coding sheet)

or, ``micro.root`` being the SAMM folder itself (as some public loaders expect)::

    <root>/006/006_1_2/006_05562.jpg
    <root>/SAMM_Micro_FACS_Codes_v2.xlsx

:func:`frames_folder` detects which (``<root>/SAMM`` when it exists, else ``<root>`` when a subject folder of the
sheet is there) and logs it; a tree in neither layout fails in ingest_micro's missing-frames check, which names
both.

The sheet: sheet ``MICRO_ONLY``, 13 preamble rows above the header (``skiprows=13``, so the header is spreadsheet
row 14), columns ``Subject, Filename, Inducement Code, Onset Frame, Apex Frame, Offset Frame, Duration, Micro,
Action Units, Estimated Emotion, Objective Classes, Notes``; 159 rows, 29 subjects stored as text (``'006'``);
emotions capitalised (``Anger``, ``Other``…: protocols lower-case them). Real pitfalls: ``028_4_1`` has apex 1143
after its offset 1134 and ``032_3_1`` apex 1930 before its onset 4896; they are returned as parsed and go through
the apex policy (``micro.apex_outside``) in :func:`~pipeline.datasets.common.finalize`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import Annotations
from pipeline.datasets.rows import split_rows
from pipeline.sheets import read_table

__all__ = ["SHEET", "SKIPROWS", "STANDARD_ANNOTATION", "frame_path", "frames_folder", "read", "read_sheet"]

log = logging.getLogger(__name__)

STANDARD_ANNOTATION = "SAMM_Micro_FACS_Codes_v2.xlsx"
SHEET = "MICRO_ONLY"
SKIPROWS = 13  # preamble rows above the header
COLUMNS = {  # our name -> sheet column
    "subject": "Subject",
    "clip": "Filename",
    "onset_frame": "Onset Frame",
    "apex_frame": "Apex Frame",
    "offset_frame": "Offset Frame",
    "action_units": "Action Units",
    "emotion": "Estimated Emotion",
}


FOLDER = "SAMM"
PATTERN = "<subject>/<clip>/<subject>_<frame:05d>.jpg"


def frame_path(folder: Path, subject: str, clip: str, frame: int) -> Path:
    """Path of frame ``frame`` of ``clip`` of ``subject`` (``'006'`` or ``'6'``) in the SAMM folder ``folder``.

    >>> frame_path(Path("samm/SAMM"), "6", "006_1_2", 5562).as_posix()
    'samm/SAMM/006/006_1_2/006_05562.jpg'
    """
    subject = f"{int(subject):03d}"
    return folder / subject / clip / f"{subject}_{frame:05d}.jpg"


def frames_folder(root: Path, subjects: Iterable[str]) -> tuple[Path, str]:
    """The folder holding SAMM's subject folders, and a description of the layout, for logs and messages.

    Args:
        root: ``micro.root`` (or ``<root>/samm`` in a MEGC2019 composite).
        subjects: the sheet's subjects as three digits (``'006'``).

    Returns:
        ``(folder, layout)``: ``root/SAMM`` when that folder exists; else ``root`` itself when it holds a subject
        folder of the sheet; else ``root/SAMM`` (the frames are missing: the missing-frames check fails, quoting
        ``layout``, which names both layouts and the one detected).
    """
    both = f"{root / FOLDER}/{PATTERN} or {root}/{PATTERN} (micro.root being the SAMM folder itself)"
    if (root / FOLDER).is_dir():
        return root / FOLDER, f"{both}; found {root / FOLDER}, so the first"
    found = next((root / s for s in sorted(set(subjects)) if (root / s).is_dir()), None)
    if found is not None:
        return root, f"{both}; found the subject folder {found} and no {root / FOLDER}, so the second"
    return root / FOLDER, f"{both}; found neither {root / FOLDER} nor a subject folder ({root}/006…)"


def read_sheet(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse a SAMM coding sheet into ``(rows, dropped)`` (see :class:`~pipeline.datasets.common.Annotations`).

    Returns:
        ``rows`` with ``subject`` as three digits (``'006'``), frames as int (``apex_frame`` None where its cell
        is not a frame number); ``dropped``: rows with an empty or non-numeric subject, an empty clip, an
        onset / offset cell that is not a frame number, or an offset before the onset, each with a reason naming
        file, row and column.

    Raises:
        AnnotationError: missing file, missing sheet ``MICRO_ONLY``, missing columns (named, with the found
            ones), or two rows with the same (subject, clip, onset).
    """
    sheet = read_table(path, list(COLUMNS.values()), sheet_name=SHEET, skiprows=SKIPROWS)
    return split_rows(sheet, path.name, "samm", COLUMNS, subject_format="{:03d}")


def read(params: MicroParams) -> list[Annotations]:
    """The SAMM annotations under ``params.root`` (``params.annotation`` or the standard sheet).

    Subject ids stay as the sheet writes them (``'006'``; :func:`~pipeline.datasets.common.finalize` makes them
    ``samm/006``). Frames are read from ``<root>/SAMM`` or from ``<root>`` itself (:func:`frames_folder`; the
    choice is logged).

    Raises:
        AnnotationError: see :func:`read_sheet`.
    """
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    rows, dropped = read_sheet(path)
    folder, layout = frames_folder(params.root, rows["subject"])
    log.info("samm: frame files expected in %s: %s", folder, layout)
    return [Annotations(source="samm", rows=rows, dropped=dropped, where=path.name, apex_column=COLUMNS["apex_frame"],
                        layout=layout,
                        frame_path=lambda subject, clip, frame: frame_path(folder, subject, clip, frame))]
