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

import numpy as np
import pandas as pd

from pipeline.config import MacroParams
from pipeline.io import encode_png
from pipeline.video import (
    HaarFaceDetector,
    VideoDecodeError,
    confirm_detections,
    crop_matrix,
    iter_frames,
    open_video,
    smooth_box_track,
    warp_face,
)

__all__ = ["MacroVideoResult", "find_videos", "ingest_video"]

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["video", "frame_index", "time_s", "x", "y", "w", "h", "status"]


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


def _failed(path: Path, status: str, reason: str) -> MacroVideoResult:
    row = dict(video=path.stem, path=str(path), status=status, reason=reason, fps=float("nan"),
               n_frames_native=0, n_frames=0, n_ok=0)
    return MacroVideoResult(row, pd.DataFrame(columns=INDEX_COLUMNS), pd.DataFrame())


def ingest_video(path: Path, params: MacroParams, detector: HaarFaceDetector | None) -> MacroVideoResult:
    """Decode, detect, smooth and crop one video (see the module docstring).

    Args:
        path: the video file.
        params: the ``macro`` section.
        detector: the face detector, or None when ``params.detector == 'none'`` (frames are faces already:
            the whole frame, squared around its centre, is the crop).

    Returns:
        A :class:`MacroVideoResult`; a missing or corrupt file gives a ``decode_error`` row, not an exception.
    """
    try:
        reader, info = open_video(path)
    except VideoDecodeError as err:
        log.warning("skipping video: %s", err)
        return _failed(path, "decode_error", str(err))
    step = max(1, math.ceil(info.fps / params.max_fps - 1e-6))
    indices = np.arange(0, info.n_frames, step)
    times_s = indices / info.fps
    try:
        decoded = np.concatenate([frames for _, frames in iter_frames(reader, indices)])
    except Exception as err:  # a stream that opens but breaks mid-way
        log.warning("skipping video %s: decoding failed: %s", path, err)
        return _failed(path, "decode_error", f"{path}: decoding failed mid-stream ({err})")
    boxes = _face_track(decoded, times_s, info, params, detector)
    ok = ~np.isnan(boxes).any(axis=1)
    index = pd.DataFrame({"video": path.stem, "frame_index": indices, "time_s": times_s})
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
    row = dict(video=path.stem, path=str(path), status=status, reason=reason, fps=info.fps / step,
               n_frames_native=info.n_frames, n_frames=len(indices), n_ok=int(ok.sum()))
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
