"""File writers of the demo: JPEG frames, the CASME II coding sheet, CSV tables and MPEG-4 videos.

Tables (:func:`pipeline.io.atomic_path`) and videos are written to a temporary name in the destination folder
and renamed into place, so a crash never leaves a half-written file under the real name. Frames are written
directly: a clip folder is only complete once its coding-sheet row exists, and the sheet is written last.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Self

import cv2
import numpy as np
import openpyxl
import pandas as pd

from pipeline.io import atomic_path

__all__ = ["CASME2_HEADER", "SHEET_COLUMNS", "VideoSink", "write_coding_sheet", "write_csv", "write_jpeg"]

# Row 1 of CASME2-coding-20140508.xlsx, ``Sheet1``; None = the two blank columns pandas names Unnamed: 2 / 6.
CASME2_HEADER = (
    "Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units", "Estimated Emotion",
)

_XLSX_DATE = b"2014-05-08T00:00:00Z"  # the real sheet's date, in place of "now" (keeps the file reproducible)
SHEET_COLUMNS = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion"]


def _partial(path: Path) -> Path:
    """Temporary sibling of ``path`` keeping its suffix (OpenCV picks the container from it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a ``(H, W)`` uint8 mask or ``(H, W, 3)`` uint8 RGB image as a lossless PNG.

    Raises:
        ValueError: not uint8, or not 2-D / 3-channel.
        OSError: OpenCV could not encode or write the file.
    """
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{path}: expected (H, W) or (H, W, 3) uint8, got {image.shape} {image.dtype}")
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"{path}: OpenCV could not write the PNG")


def write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    """Write one frame as JPEG.

    Args:
        path: destination ``.jpg``.
        rgb: ``(H, W, 3)`` uint8 RGB.
        quality: JPEG quality, 1-100.

    Raises:
        OSError: OpenCV could not encode or write the file.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    path.write_bytes(buf.tobytes())


def write_coding_sheet(rows: pd.DataFrame, path: Path) -> None:
    """Write the coding sheet in the layout of CASME II's ``CASME2-coding-20140508.xlsx``.

    ``Sheet1`` holds :data:`CASME2_HEADER` in row 1 and one row per clip; ``Subject`` is stored as text
    (``'01'``, number format ``@``) as in the real file; frame columns are ints; ``Action Units`` keeps its
    cells' types (int for one AU, text such as ``'6+12'`` otherwise). Empty ``Sheet2`` and ``Sheet3`` follow,
    as in the real workbook.

    Args:
        rows: columns ``Subject`` (str), ``Filename`` (str), ``OnsetFrame``, ``ApexFrame``, ``OffsetFrame``
            (int), ``Action Units`` (int | str), ``Estimated Emotion`` (str).
        path: destination ``.xlsx``.
    """
    missing = [c for c in SHEET_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{path}: coding-sheet rows lack columns {missing}")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(list(CASME2_HEADER))
    for subject, filename, onset, apex, offset, aus, emotion in rows[SHEET_COLUMNS].itertuples(index=False, name=None):
        aus = int(aus) if isinstance(aus, int | np.integer) else str(aus)
        sheet.append([str(subject), str(filename), None, int(onset), int(apex), int(offset), None, aus, str(emotion)])
        sheet.cell(row=sheet.max_row, column=1).number_format = "@"  # text, as the real sheet stores it
    book.create_sheet("Sheet2")
    book.create_sheet("Sheet3")
    buffer = io.BytesIO()
    book.save(buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(_without_timestamps(buffer.getvalue()))


def _without_timestamps(xlsx: bytes) -> bytes:
    """Re-pack an .xlsx with fixed zip-entry times and document dates, so equal sheets are equal bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "docProps/core.xml":
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", _XLSX_DATE, data)
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


class VideoSink:
    """MPEG-4 (``mp4v``) video writer of RGB frames, renamed into place when closed without error.

    Example:
        >>> with VideoSink(path, fps=30.0, size_px=256) as sink:  # doctest: +SKIP
        ...     sink.write(frame)  # (256, 256, 3) uint8 RGB
    """

    def __init__(self, path: Path, fps: float, size_px: int) -> None:
        self.path = Path(path)
        self.size_px = size_px
        self.n_frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _partial(self.path)
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (size_px, size_px))
        if not self._writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise OSError(f"{self.path}: OpenCV cannot open an mp4v writer (is FFmpeg support built in?)")

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``(size_px, size_px, 3)`` uint8 RGB frame."""
        if rgb.shape != (self.size_px, self.size_px, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {rgb.shape} {rgb.dtype}, expected ({self.size_px},)*2 + (3,) uint8")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.n_frames += 1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.release()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
