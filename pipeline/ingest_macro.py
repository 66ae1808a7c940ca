"""Macro-expression videos → aligned face frames (the input of MA2MI pre-training).

For each video: decode with decord (subsampled to at most ``max_fps``), detect the face with the Haar cascade on
key frames ``detect_every_s`` apart, interpolate and smooth the box track, crop a square around it and resize to
``image_size_px``. Every decoded frame gets a row in the frame index with its status: ``ok`` (cropped and
stored), ``no_face`` (no detection near it). A video that cannot be decoded gets a row in the video table with
status ``decode_error`` and the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import MacroParams, MacroSource
from pipeline.io import encode_png
from pipeline.sheets import read_table
from pipeline.video import (
    HaarFaceDetector,
    VideoDecodeError,
    VideoInfo,
    confirm_detections,
    crop_matrix,
    iter_frames,
    open_video,
    smooth_box_track,
    warp_face,
)

__all__ = ["MacroVideoResult", "SourceItem", "find_videos", "ingest_video", "list_source"]

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["video", "frame_index", "time_s", "x", "y", "w", "h", "status"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class MacroVideoResult:
    """What one video produced.

    Attributes:
        video: one row: ``video, path, status, reason, fps, n_frames_native, n_frames, n_ok``.
        index: one row per decoded frame: ``video, frame_index, time_s, x, y, w, h, status``.
        frames: the ``ok`` frames: ``video, frame_index, time_s, image`` (PNG bytes of a
            ``(image_size_px, image_size_px, 3)`` uint8 RGB face crop).
    """

    video: dict
    index: pd.DataFrame
    frames: pd.DataFrame


def find_videos(folders: list[Path], suffixes: list[str]) -> list[Path]:
    """All files under ``folders`` (recursively) whose suffix is in ``suffixes``, sorted, names unique.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: two videos share a file stem (the stem is the video's id downstream).
    """
    wanted = {s.lower() for s in suffixes}
    videos: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: video folder does not exist")
        videos += [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in wanted]
    stems = pd.Series([p.stem for p in videos])
    if stems.duplicated().any():
        raise ValueError(f"video ids (file stems) must be unique; repeated: {sorted(set(stems[stems.duplicated()]))}")
    return sorted(videos, key=lambda p: p.stem)


@dataclass(frozen=True)
class SourceItem:
    """One video of a macro source: its id (``<source>/<name>``), where it is, and how to read it."""

    video: str
    path: Path
    sequence_fps: float | None = None  # set for image sequences
    start_s: float | None = None
    end_s: float | None = None


def list_source(name: str, source: MacroSource, suffixes: list[str]) -> list[SourceItem]:
    """The videos of one ``macro.sources`` entry.

    - ``videos`` without ``csv``: every file under ``root`` with a suffix in ``suffixes``.
    - ``videos`` with ``csv`` (relative to root): the rows' ``file`` column (relative to root), optional
      ``start_s`` / ``end_s`` (seconds) to keep a window. A listed file that is missing is still an item: its
      ingestion records a ``decode_error`` naming it.
    - ``ckplus``: each ``<root>/<subject>/<sequence>/`` folder of images is one video ``<subject>_<sequence>``.

    Raises:
        FileNotFoundError: ``root`` does not exist. AnnotationError: the CSV is missing or lacks ``file``.
        ValueError: a ``start_s``/``end_s`` cell is not a number (names the row and column).
    """
    if not source.root.is_dir():
        raise FileNotFoundError(f"macro.sources.{name}: root {source.root} does not exist")
    if source.kind == "ckplus":
        folders = sorted(p for p in source.root.glob("*/*") if p.is_dir())
        return [SourceItem(f"{name}/{f.parent.name}_{f.name}", f, sequence_fps=source.fps) for f in folders]
    if source.csv is None:
        return [SourceItem(f"{name}/{p.stem}", p) for p in find_videos([source.root], suffixes)]
    table = read_table(source.root / source.csv, ["file"])
    items = []
    for row in table.to_dict("records"):
        window = {}
        for column in ("start_s", "end_s"):
            value = row.get(column, "")
            number = pd.to_numeric(value, errors="coerce") if value else None
            if value and pd.isna(number):
                raise ValueError(f"{source.root / source.csv} row {row['sheet_row']} column {column}: "
                                 f"{value!r} is not a number of seconds")
            window[column] = None if number is None else float(number)
        items.append(SourceItem(f"{name}/{Path(row['file']).stem}", source.root / row["file"], **window))
    return items


def _failed(video: str, path: Path, status: str, reason: str) -> MacroVideoResult:
    row = dict(video=video, path=str(path), status=status, reason=reason, fps=float("nan"),
               n_frames_native=0, n_frames=0, n_ok=0)
    return MacroVideoResult(row, pd.DataFrame(columns=INDEX_COLUMNS), pd.DataFrame())


def _decode_video(path: Path, max_fps: float, start_s: float | None, end_s: float | None):
    """``(frames (N, H, W, 3) uint8 RGB, frame_index (N,), time_s (N,), fps, n_native, VideoInfo)``."""
    reader, info = open_video(path)
    step = max(1, math.ceil(info.fps / max_fps - 1e-6))
    indices = np.arange(0, info.n_frames, step)
    times_s = indices / info.fps
    keep = (times_s >= (start_s or 0.0)) & (times_s <= (end_s if end_s is not None else np.inf))
    indices, times_s = indices[keep], times_s[keep]
    if len(indices) == 0:
        raise VideoDecodeError(f"{path}: no frame between start_s={start_s} and end_s={end_s}")
    try:
        frames = np.concatenate([chunk for _, chunk in iter_frames(reader, indices)])
    except Exception as err:  # a stream that opens but breaks mid-way
        raise VideoDecodeError(f"{path}: decoding failed mid-stream ({err})") from err
    return frames, indices, times_s, info.fps / step, info.n_frames, info


def _decode_sequence(folder: Path, fps: float):
    """An image sequence (e.g. CK+ ``S005/001/S005_001_00000001.png``): frames in file-name order."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoDecodeError(f"{folder}: no image files")
    frames = []
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)  # grey CK+ frames come back as 3 equal channels
        if image is None:
            raise VideoDecodeError(f"{file}: not a readable image")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if len({f.shape for f in frames}) > 1:
        raise VideoDecodeError(f"{folder}: frames of different sizes")
    height, width = frames[0].shape[:2]
    indices = np.arange(len(frames))
    info = VideoInfo(folder, len(frames), fps, width, height)
    return np.stack(frames), indices, indices / fps, fps, len(frames), info


def ingest_video(path: Path, params: MacroParams, detector: HaarFaceDetector | None, video: str | None = None,
                 sequence_fps: float | None = None, start_s: float | None = None,
                 end_s: float | None = None) -> MacroVideoResult:
    """Decode, detect, smooth and crop one video file, or one image-sequence folder (see the module docstring).

    Args:
        path: a video file, or (with ``sequence_fps``) a folder of frame images.
        params: the ``macro`` section.
        detector: the face detector, or None when ``params.detector == 'none'`` (frames are faces already:
            the centred square of the frame is the crop).
        video: the id rows carry (default: the file stem).
        sequence_fps: frame rate of an image sequence (its files carry none); None for video files.
        start_s, end_s: keep only frames in this time window (seconds), e.g. from a source CSV.

    Returns:
        A :class:`MacroVideoResult`; a missing or corrupt input gives a ``decode_error`` row, not an exception.
    """
    video = video or path.stem
    try:
        if sequence_fps is not None:
            decoded, indices, times_s, fps, n_native, info = _decode_sequence(path, sequence_fps)
        else:
            decoded, indices, times_s, fps, n_native, info = _decode_video(path, params.max_fps, start_s, end_s)
    except (VideoDecodeError, OSError) as err:
        log.warning("skipping %s: %s", video, err)
        return _failed(video, path, "decode_error", str(err))
    boxes = _face_track(decoded, times_s, info, params, detector)
    ok = ~np.isnan(boxes).any(axis=1)
    index = pd.DataFrame({"video": video, "frame_index": indices, "time_s": times_s})
    index[["x", "y", "w", "h"]] = boxes
    index["status"] = np.where(ok, "ok", "no_face")
    crops = [
        encode_png(warp_face(decoded[i], crop_matrix(tuple(boxes[i]), params.box_scale, params.image_size_px),
                             params.image_size_px))
        for i in np.flatnonzero(ok)
    ]
    frames = index.loc[ok, ["video", "frame_index", "time_s"]].reset_index(drop=True)
    frames["image"] = crops
    status, reason = ("ok", "") if ok.any() else ("no_face", f"{path}: no face found in any frame")
    if not ok.any():
        log.warning("%s", reason)
    row = dict(video=video, path=str(path), status=status, reason=reason, fps=fps, n_frames_native=n_native,
               n_frames=len(indices), n_ok=int(ok.sum()))
    return MacroVideoResult(row, index, frames)


def _face_track(frames: np.ndarray, times_s: np.ndarray, info, params: MacroParams,
                detector: HaarFaceDetector | None) -> np.ndarray:
    """(N, 4) smoothed ``(x, y, w, h)`` boxes for ``frames: (N, H, W, 3)``; NaN rows where there is no face."""
    if detector is None:
        side = float(min(info.width_px, info.height_px))
        box = ((info.width_px - side) / 2, (info.height_px - side) / 2, side, side)
        return np.tile(np.array(box, dtype=float), (len(frames), 1))
    dt = float(np.median(np.diff(times_s))) if len(times_s) > 1 else 1.0
    key_step = max(1, int(round(params.detect_every_s / dt)))
    key = np.unique(np.r_[np.arange(0, len(frames), key_step), len(frames) - 1])
    key_boxes = np.array([detector.detect(frames[i]) or (np.nan,) * 4 for i in key], dtype=float)
    key_boxes = confirm_detections(key_boxes)
    max_gap_s = 0.75 * key_step * dt + 1e-6  # a frame belongs to a face only if a nearby key frame saw it
    return smooth_box_track(times_s, times_s[key], key_boxes, params.smooth_window_s, max_gap_s)
