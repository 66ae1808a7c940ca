"""SMIC-HS adapter: labels from the HS folder tree, or from the SMIC-HS-E sheet (Li et al., FG 2013).

``micro.smic_labels = folders`` (the 164 HS clips of the MEGC2019 composite)::

    <root>/HS/s1/micro/negative/s1_ne_01/image<N>.bmp      (HS/<subject>/micro/<class>/<clip>/…)

Each clip folder holds the frames of one micro-expression, onset to offset, so onset = the first frame on disk and
offset = the last (the number ``N`` in the file name, whatever its zero padding); the class is the folder name
(``negative`` / ``positive`` / ``surprise``). There is no sheet: ``sheet_row`` is a running number over the clips
(sorted by subject number, then clip) and messages name the ``HS`` folder.

``micro.smic_labels = sheet`` (the SMIC-HS-E annotation of the long HS recordings)::

    <root>/SMIC-HS-E_annotation.xlsx                                 (the standard sheet)
    <root>/HS_long/SMIC_HS_E/s01/s1_ne_01/image<N:06d>.jpg           (HS_long/SMIC_HS_E/s<subject:02d>/<clip>/…)

The frame layout is the one of a public loader of this sheet (davidnvq/me_recognition, ``smic_processing.py``):
``N`` is the frame number of the long recording that ``OnsetF`` / ``OffsetF`` use, padded to six digits
(``image034208.jpg``, ``image17581039.jpg``). Sheet ``HS``: ``Subject`` (int), ``Filename``, ``OnsetF``,
``OffsetF``, ``Onset2F``, ``Offset2F``, ``Onset3F``, ``Offset3F``, ``FirstF``, ``LastF``, ``TotalMF1-3``,
``TotalVL``, ``Emotion``; 157 rows, 16 subjects, negative 66 / positive 51 / surprise 40. Decisions:

- one sample per row, from the first interval (``OnsetF`` → ``OffsetF``). The second and third intervals
  (``Onset2F``…, 8 rows) are ignored and counted in the log: several ``Onset3F`` cells lie before ``OnsetF`` and
  their ``TotalMF3`` is negative, so they are not trustworthy intervals, and the usual SMIC protocols count
  one sample per clip.
- the sheet's label is kept, including ``s18_sur_03`` labelled ``negative`` although its name says surprise.
- only ``Subject, Filename, OnsetF, OffsetF, Emotion`` are needed; a bad cell elsewhere (the ``_orig`` sheet's
  ``FirstF`` of ``s3_ne_20`` is ``'MISSING <-426679'``) is ignored; a bad needed cell drops its row with a
  reason naming file, row and column.

Apex (neither source has one): the middle frame of the clip, or, with ``micro.smic_apex``, a CSV of spotted apex
frames with columns ``subject`` (``s1``, ``s01`` or ``1``), ``clip`` (``s1_ne_01`` or ``s01_ne_01``) and
``apex_frame`` (the frame number ``N``); other columns are ignored (so ``smic_apex.csv`` of
davidnvq/me_recognition reads as is). A clip missing from that CSV, or whose ``apex_frame`` is not a frame
number, gets apex None: the apex policy (``micro.apex_outside``) decides and logs it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import ANNOTATION_COLUMNS, DROPPED_COLUMNS, Annotations
from pipeline.datasets.rows import split_rows, whole_numbers
from pipeline.sheets import AnnotationError, read_table

__all__ = ["SHEET", "STANDARD_ANNOTATION", "canonical_clip", "canonical_subject", "read", "read_apex",
           "read_sheet", "scan_folders", "sheet_frame_path"]

log = logging.getLogger(__name__)

STANDARD_ANNOTATION = "SMIC-HS-E_annotation.xlsx"
SHEET = "HS"
COLUMNS = {"subject": "Subject", "clip": "Filename", "onset_frame": "OnsetF", "offset_frame": "OffsetF",
           "emotion": "Emotion"}  # our name -> sheet column
APEX_COLUMNS = ["subject", "clip", "apex_frame"]
FRAME_NUMBER = re.compile(r"(\d+)$")  # image<N>.bmp -> N


def canonical_subject(subject: str) -> str:
    """``'s01'``, ``'s1'``, ``'1'`` -> ``'s1'``; anything else unchanged.

    >>> canonical_subject("s01"), canonical_subject("20"), canonical_subject("x")
    ('s1', 's20', 'x')
    """
    match = re.fullmatch(r"[sS]?0*(\d+)", subject)
    return f"s{int(match[1])}" if match else subject


def canonical_clip(clip: str) -> str:
    """``'s01_ne_01'`` -> ``'s1_ne_01'`` (the MEGC2019 CSV pads subjects, the folders do not).

    >>> canonical_clip("s01_ne_01")
    's1_ne_01'
    """
    return re.sub(r"^s0*(\d+)_", r"s\1_", clip)


def sheet_frame_path(root: Path, subject: str, clip: str, frame: int) -> Path:
    """Path of frame ``frame`` of an HS-E clip (``subject`` ``'s1'`` or ``'1'``) under ``root``.

    >>> sheet_frame_path(Path("r"), "s1", "s1_ne_01", 559740).as_posix()
    'r/HS_long/SMIC_HS_E/s01/s1_ne_01/image559740.jpg'
    """
    number = int(canonical_subject(subject)[1:])
    return root / "HS_long" / "SMIC_HS_E" / f"s{number:02d}" / clip / f"image{frame:06d}.jpg"


def _clip_frames(clip_dir: Path) -> dict[int, Path]:
    """Frame number -> file of the ``.bmp`` frames in ``clip_dir``."""
    frames = {}
    for path in clip_dir.glob("*.bmp"):
        match = FRAME_NUMBER.search(path.stem)
        if match:
            frames[int(match[1])] = path
    return dict(sorted(frames.items()))


def scan_folders(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], dict[int, Path]]]:
    """Read the SMIC-HS folder tree ``root/HS/<subject>/micro/<class>/<clip>/image<N>.bmp``.

    Returns:
        ``(rows, dropped, frames)``: ``rows`` as in :class:`~pipeline.datasets.common.Annotations` (one per clip
        folder, onset / offset = first / last frame on disk, apex = the middle frame on disk, emotion = the
        class folder); ``dropped``: clip folders with no ``.bmp`` frame or a subject folder not named
        ``s<N>``; ``frames``: ``(subject, clip) -> {frame number: file}``.

    Raises:
        AnnotationError: no ``HS`` folder, no clip folder in it, or one clip under two class folders (both
            named).
    """
    hs = root / "HS"
    clip_dirs = sorted(p for p in hs.glob("*/micro/*/*") if p.is_dir())
    if not clip_dirs:
        raise AnnotationError(f"{hs}: no SMIC-HS clip folder (expected HS/s1/micro/negative/s1_ne_01/image<N>.bmp)")
    seen: dict[tuple[str, str], Path] = {}
    for path in clip_dirs:
        first = seen.setdefault((path.parts[-4], path.name), path)
        if first != path:
            raise AnnotationError(f"{first} and {path}: the same clip {path.name} of subject {path.parts[-4]} under "
                                  f"two class folders (its label is ambiguous: keep one folder)")
    table = pd.DataFrame({"subject": [p.parts[-4] for p in clip_dirs], "emotion": [p.parts[-2] for p in clip_dirs],
                          "clip": [p.name for p in clip_dirs], "dir": clip_dirs})
    table["number"] = pd.to_numeric(table["subject"].str.extract(r"^s(\d+)$")[0], errors="coerce")
    table = table.sort_values(["number", "subject", "clip"]).reset_index(drop=True)
    table["sheet_row"] = table.index + 1
    frames = {(r.subject, r.clip): _clip_frames(r.dir) for r in table.itertuples()}
    numbers = [list(frames[(r.subject, r.clip)]) for r in table.itertuples()]
    reason = pd.Series([f"{r.dir}: no .bmp frame file" if not n else ""
                        for r, n in zip(table.itertuples(), numbers, strict=True)])
    reason = reason.mask(table["number"].isna(), [f"{r.dir}: subject folder {r.subject!r} is not s<N>"
                                                   for r in table.itertuples()])
    table["onset_frame"] = [n[0] if n else 0 for n in numbers]
    table["offset_frame"] = [n[-1] if n else 0 for n in numbers]
    table["apex_frame"] = [n[(len(n) - 1) // 2] if n else 0 for n in numbers]
    table["action_units"] = ""
    keep = reason == ""
    dropped = table[~keep].assign(source_dataset="smic", reason=reason[~keep])[DROPPED_COLUMNS]
    rows = table[keep][ANNOTATION_COLUMNS].reset_index(drop=True)
    return rows, dropped.reset_index(drop=True), frames


def read_sheet(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse sheet ``HS`` of a SMIC-HS-E annotation into ``(rows, dropped)``.

    ``subject`` becomes ``'s20'``, apex the middle frame ``(onset + offset) // 2``; the second and third
    intervals are ignored (logged).

    Raises:
        AnnotationError: missing file, no sheet ``HS``, missing columns (named, with the found ones), or two rows
            with the same (subject, clip, onset).
    """
    sheet = read_table(path, list(COLUMNS.values()), sheet_name=SHEET)
    rows, dropped = split_rows(sheet, path.name, "smic", COLUMNS, subject_format="s{}")
    dropped["subject"] = dropped["subject"].map(canonical_subject)  # also an invalid 's01' -> 's1'
    rows["apex_frame"] = (rows["onset_frame"] + rows["offset_frame"]) // 2
    extra = [c for c in ("Onset2F", "Onset3F") if c in sheet]
    if extra:
        log.info("%s: %d rows with a second or third interval (%s…): only OnsetF-OffsetF is used", path.name,
                 int(sheet[extra].ne("").any(axis=1).sum()), ", ".join(extra))
    return rows, dropped


def read_apex(path: Path) -> pd.Series:
    """Spotted apex frames: ``(subject, clip)`` -> frame int.

    Keys are canonical (``('s1', 's1_ne_01')``); the value is None where the ``apex_frame`` cell is not a frame
    number.

    Raises:
        AnnotationError: missing file, missing columns ``subject, clip, apex_frame``, or a (subject, clip) given
            twice (named).
    """
    table = read_table(path, APEX_COLUMNS)
    keys = pd.MultiIndex.from_arrays([table["subject"].map(canonical_subject), table["clip"].map(canonical_clip)],
                                     names=["subject", "clip"])
    if keys.duplicated().any():
        raise AnnotationError(f"{path}: clips given more than once: {sorted(set(keys[keys.duplicated()]))}")
    number, ok = whole_numbers(table["apex_frame"])
    return pd.Series([int(n) if k else None for n, k in zip(number, ok, strict=True)], index=keys, dtype=object)


def _spotted(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``rows`` with ``apex_frame`` from the spotted-apex CSV (None where it has no frame for a clip)."""
    apex = read_apex(path)
    keys = pd.MultiIndex.from_arrays([rows["subject"], rows["clip"].map(canonical_clip)])
    return rows.assign(apex_frame=apex.reindex(keys).to_numpy())


def read(params: MicroParams) -> list[Annotations]:
    """The SMIC-HS annotations under ``params.root``.

    Labels come from the folder tree or the HS-E sheet (``params.smic_labels``), apex from ``params.smic_apex``
    or the middle frame. Subjects are ``'s1'``…

    Raises:
        AnnotationError: see :func:`scan_folders`, :func:`read_sheet`, :func:`read_apex`.
        ValueError: ``params.annotation`` set while labels come from folders (there is no sheet to read).
    """
    if params.smic_labels == "folders":
        if params.annotation is not None:
            raise ValueError(f"micro.annotation is {params.annotation} but micro.smic_labels = folders reads the "
                             "labels from the HS folder tree; set annotation to null or smic_labels to sheet")
        rows, dropped, frames = scan_folders(params.root)
        where = str(params.root / "HS")
        layout = f"{params.root}/HS/s<N>/micro/<class>/<clip>/image<N>.bmp (micro.smic_labels = folders)"

        def frame_path(subject: str, clip: str, frame: int) -> Path:
            files = frames[(subject, clip)]  # a frame not on disk (a spotted apex): named as the others are
            return files.get(frame, next(iter(files.values())).with_name(f"image{frame}.bmp"))
    else:
        path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
        rows, dropped = read_sheet(path)
        where = path.name
        layout = (f"{params.root}/HS_long/SMIC_HS_E/s<NN>/<clip>/image<N:06d>.jpg (micro.smic_labels = sheet; "
                  "for the HS folder tree set it to folders)")

        def frame_path(subject: str, clip: str, frame: int) -> Path:
            return sheet_frame_path(params.root, subject, clip, frame)
    apex_column = "middle frame"
    if params.smic_apex is not None:
        rows = _spotted(rows, params.smic_apex)
        apex_column = f"apex_frame of {params.smic_apex.name}"
    return [Annotations(source="smic", rows=rows, dropped=dropped, frame_path=frame_path, where=where,
                        apex_column=apex_column, layout=layout)]
