"""CASME II adapter: the coding sheet and the on-disk layout (Yan et al., PLoS ONE 2014).

Layout (frame number ``N`` is the one the sheet's ``OnsetFrame`` / ``ApexFrame`` / ``OffsetFrame`` use)::

    <root>/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg        (frames = "raw")
    <root>/Cropped/sub01/EP02_01f/reg_img46.jpg                (frames = "cropped", faces already cropped)
    <root>/CASME2-coding-20140508.xlsx                         (the standard coding sheet)

The sheet (``Sheet1``): ``Subject, Filename, (blank), OnsetFrame, ApexFrame, OffsetFrame, (blank),
Action Units, Estimated Emotion`` (the 2019 revision adds ``Objective Classes``, ignored here). Real pitfalls it
handles: ``Subject`` stored as a number (``1``) or text (``'01'``); ``ApexFrame`` of ``04/EP12_01f`` is the
string ``'/'``; ``Action Units`` mixes ints and strings. The embedded demo is written in this same layout, so
the demo exercises this code path.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.datasets.protocols import map_emotion

__all__ = ["STANDARD_SHEET", "AnnotationError", "frame_path", "load_casme2", "read_coding_sheet"]

STANDARD_SHEET = "CASME2-coding-20140508.xlsx"
COLUMNS = {  # sheet column -> our name
    "Subject": "subject",
    "Filename": "clip",
    "OnsetFrame": "onset_frame",
    "ApexFrame": "apex_frame",
    "OffsetFrame": "offset_frame",
    "Action Units": "action_units",
    "Estimated Emotion": "emotion",
}
FRAME_COLUMNS = {"onset_frame": "OnsetFrame", "apex_frame": "ApexFrame", "offset_frame": "OffsetFrame"}
LAYOUTS = {"raw": ("CASME2_RAW_selected", "img{frame}.jpg"), "cropped": ("Cropped", "reg_img{frame}.jpg")}


class AnnotationError(ValueError):
    """The annotation sheet is missing or malformed; the message names the file (and columns)."""


def read_coding_sheet(path: Path) -> pd.DataFrame:
    """Read a CASME II coding sheet, every cell as text.

    Returns:
        One row per sheet row: ``sheet_row`` (1-based spreadsheet row; the header is row 1) and the
        :data:`COLUMNS` renamed (``subject, clip, onset_frame, apex_frame, offset_frame, action_units,
        emotion``), all str with ``''`` for empty cells; frame columns are converted later, row by row.

    Raises:
        AnnotationError: the file is missing or unreadable, or required columns are missing (names the missing
            and the found columns).
    """
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation sheet not found")
    try:
        sheet = pd.read_excel(path, sheet_name=0, dtype=str)
    except Exception as err:
        raise AnnotationError(f"{path}: cannot be read as a spreadsheet ({err})") from err
    missing = [c for c in COLUMNS if c not in sheet.columns]
    if missing:
        raise AnnotationError(f"{path}: missing columns {missing}; found {list(sheet.columns)}")
    table = sheet[list(COLUMNS)].rename(columns=COLUMNS).fillna("").astype(str)
    table = table.apply(lambda column: column.str.strip())
    table.insert(0, "sheet_row", sheet.index.to_numpy() + 2)
    return table


def frame_path(root: Path, subject: str, clip: str, frame: int, frames: str) -> Path:
    """Path of frame ``frame`` of ``clip`` of ``subject`` (``'01'`` or ``'1'``) under ``root``."""
    folder, pattern = LAYOUTS[frames]
    return root / folder / f"sub{int(subject):02d}" / clip / pattern.format(frame=frame)


def _parse_row(row: pd.Series, path: Path) -> tuple[dict | None, str]:
    """Validate one sheet row → (frames dict, '') or (None, reason naming the row and column)."""
    where = f"{path.name} row {row.sheet_row}"
    if not row.subject:
        return None, f"{where}: empty Subject"
    if not row.subject.isdigit():
        return None, f"{where} column Subject: {row.subject!r} is not a subject number"
    if not row.clip:
        return None, f"{where}: empty Filename"
    frames: dict[str, int] = {}
    for ours, theirs in FRAME_COLUMNS.items():
        value = pd.to_numeric(row[ours], errors="coerce")
        if pd.isna(value) or value != int(value):
            return None, f"{where} column {theirs}: {row[ours]!r} is not a frame number"
        frames[ours] = int(value)
    if not frames["onset_frame"] <= frames["apex_frame"] <= frames["offset_frame"]:
        return None, (f"{where}: apex {frames['apex_frame']} outside [onset {frames['onset_frame']}, "
                      f"offset {frames['offset_frame']}]")
    return frames, ""


def load_casme2(root: Path, annotation: Path | None, frames: str, protocol: str, dataset: str,
                class_names: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the sheet under ``protocol`` and resolve each sample's onset and apex frame files.

    Args:
        root: the dataset root (holds ``Cropped/`` or ``CASME2_RAW_selected/``).
        annotation: the coding sheet, or None for ``root / STANDARD_SHEET``.
        frames: ``'cropped'`` or ``'raw'``.
        protocol: a label protocol of :mod:`pipeline.datasets.protocols`.
        dataset: the name samples carry (``'casme2'``, or ``'demo'`` for the synthesized dataset); subject ids
            are namespaced with it (``'casme2/sub17'``).
        class_names: the protocol's classes in label order.

    Returns:
        ``(samples, dropped)``. ``samples``: ``sample_id, sheet_row, dataset, source_dataset, subject, clip, onset_frame,
        apex_frame, offset_frame, label, label_name, action_units, emotion, onset_path, apex_path``.
        ``dropped``: ``dataset, sheet_row, subject, clip, reason`` for every sheet row that did not become a
        sample. Every sheet row is in exactly one of the two.

    Raises:
        AnnotationError: missing or malformed sheet; a (subject, clip, onset) key repeated.
    """
    sheet_path = annotation if annotation is not None else root / STANDARD_SHEET
    sheet = read_coding_sheet(sheet_path)
    kept, dropped = [], []
    for row in sheet.itertuples(index=False):
        parsed, reason = _parse_row(pd.Series(row._asdict()), sheet_path)
        label_name = map_emotion(protocol, "casme2", row.emotion) if parsed else None
        if parsed and label_name is None:
            reason = f"{sheet_path.name} row {row.sheet_row}: emotion {row.emotion!r} is outside protocol {protocol}"
        if reason:
            dropped.append(dict(dataset=dataset, sheet_row=row.sheet_row, subject=row.subject, clip=row.clip,
                                reason=reason))
            continue
        subject = f"{dataset}/sub{int(row.subject):02d}"
        kept.append(dict(
            sample_id=f"{subject}/{row.clip}/{parsed['onset_frame']}", sheet_row=row.sheet_row, dataset=dataset,
            source_dataset=dataset,
            subject=subject, clip=row.clip, **parsed, label=class_names.index(label_name),
            label_name=label_name, action_units=row.action_units, emotion=row.emotion.lower(),
            onset_path=str(frame_path(root, row.subject, row.clip, parsed["onset_frame"], frames)),
            apex_path=str(frame_path(root, row.subject, row.clip, parsed["apex_frame"], frames)),
        ))
    samples = pd.DataFrame(kept)
    repeated = samples["sample_id"][samples["sample_id"].duplicated()] if len(samples) else pd.Series([])
    if len(repeated):
        raise AnnotationError(f"{sheet_path}: repeated (subject, clip, onset) keys: {sorted(set(repeated))}")
    return samples, pd.DataFrame(dropped, columns=["dataset", "sheet_row", "subject", "clip", "reason"])
