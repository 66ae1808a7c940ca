"""Video decoding (decord), face detection (OpenCV Haar cascade), box smoothing and face alignment.

Boxes are ``(x, y, w, h)`` in pixels of the source frame, float. Frames are ``(H, W, 3) uint8 RGB``.
Micro-expression displacements are smaller than detector jitter (DESIGN §3), so a micro clip uses ONE crop
transform (from its onset frame) for all its frames; a macro video detects on key frames and smooths the box
track over time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

__all__ = [
    "HaarFaceDetector",
    "VideoDecodeError",
    "VideoInfo",
    "confirm_detections",
    "crop_matrix",
    "iter_frames",
    "open_video",
    "smooth_box_track",
    "warp_face",
]

log = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """A video file is missing, unreadable or corrupt; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    n_frames: int
    fps: float  # native frame rate
    width_px: int
    height_px: int


def open_video(path: str | Path):
    """Open ``path`` with decord and return ``(reader, VideoInfo)``.

    Raises:
        VideoDecodeError: the file does not exist, or decord cannot read it (corrupt / unsupported), or it has
            no frames or no valid frame rate.
    """
    import decord  # imported lazily: decord's import prints a warning-free but slow init

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such video file")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as err:  # decord raises DECORDError or RuntimeError with little context
        raise VideoDecodeError(f"{path}: cannot be decoded ({type(err).__name__}: {err})") from err
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    if n_frames == 0 or not math.isfinite(fps) or fps <= 0:
        raise VideoDecodeError(f"{path}: no frames or no frame rate (frames={n_frames}, fps={fps})")
    height, width = reader[0].shape[:2]
    return reader, VideoInfo(path, n_frames, fps, int(width), int(height))


def iter_frames(reader, indices: np.ndarray, chunk: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode ``indices`` in chunks; yield ``(chunk_indices (n,), frames (n, H, W, 3) uint8 RGB)``."""
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        yield part, reader.get_batch(part.tolist()).asnumpy()


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless 4.x; no download).

    Args:
        min_size_frac: smallest face side searched, as a fraction of the frame's shorter side.
        max_side_px: frames are shrunk so their longer side is at most this before detection (speed: the
            cascade's cost grows with the pixel count); boxes are returned in the original frame's pixels.
    """

    def __init__(self, min_size_frac: float = 0.1, scale_factor: float = 1.1, min_neighbors: int = 5,
                 max_side_px: int = 320):
        cascade_path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        if self._cascade.empty():
            raise RuntimeError(f"{cascade_path}: Haar cascade missing (opencv-python-headless >= 5 dropped it)")
        self.min_size_frac, self.scale_factor, self.min_neighbors = min_size_frac, scale_factor, min_neighbors
        self.max_side_px = max_side_px

    def detect(self, frame: np.ndarray) -> tuple[float, float, float, float] | None:
        """Largest face in ``frame: (H, W, 3) uint8 RGB`` as ``(x, y, w, h)`` px, or None if there is none."""
        shrink = min(1.0, self.max_side_px / max(frame.shape[:2]))
        if shrink < 1.0:
            frame = cv2.resize(frame, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        min_side = max(16, int(self.min_size_frac * min(grey.shape)))
        faces = self._cascade.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda box: box[2] * box[3])
        return float(x) / shrink, float(y) / shrink, float(w) / shrink, float(h) / shrink


def smooth_box_track(
    times_s: np.ndarray, key_times_s: np.ndarray, key_boxes: np.ndarray, window_s: float, max_gap_s: float
) -> np.ndarray:
    """Interpolate key-frame detections to every frame and smooth them with a centred moving average.

    Args:
        times_s: (N,) float, increasing times of all frames.
        key_times_s: (K,) float, increasing times of the key frames the detector ran on.
        key_boxes: (K, 4) float ``(x, y, w, h)`` px; a row of NaN where no face was found.
        window_s: moving-average window in seconds (0 disables smoothing).
        max_gap_s: a frame whose nearest key frame WITH a face is farther than this has no box.

    Returns:
        (N, 4) float boxes; rows of NaN for frames without a face (they are recorded, not dropped).
    """
    found = ~np.isnan(key_boxes).any(axis=1)
    boxes = np.full((len(times_s), 4), np.nan)
    if not found.any():
        return boxes
    good_t, good_b = key_times_s[found], key_boxes[found]
    for col in range(4):
        boxes[:, col] = np.interp(times_s, good_t, good_b[:, col])
    nearest_gap = np.min(np.abs(times_s[:, None] - good_t[None, :]), axis=1)
    boxes[nearest_gap > max_gap_s] = np.nan
    if window_s > 0 and len(times_s) > 1:
        fps = (len(times_s) - 1) / max(times_s[-1] - times_s[0], 1e-9)
        window = max(1, int(round(window_s * fps)))
        boxes = pd.DataFrame(boxes).rolling(window, center=True, min_periods=1).mean().to_numpy(copy=True)
        boxes[nearest_gap > max_gap_s] = np.nan  # rolling means never resurrect a faceless frame
    return boxes


def confirm_detections(key_boxes: np.ndarray, max_shift: float = 0.5) -> np.ndarray:
    """Reject isolated detections: keep a key-frame box only if a neighbouring key frame also has a face whose
    centre lies within ``max_shift`` box sides of it. Haar false positives rarely persist; faces do.

    Args:
        key_boxes: (K, 4) float ``(x, y, w, h)`` px, NaN rows where nothing was found.

    Returns:
        (K, 4) copy with unconfirmed rows set to NaN.
    """
    confirmed = np.full_like(key_boxes, np.nan)
    centres = key_boxes[:, :2] + key_boxes[:, 2:] / 2
    for k in range(len(key_boxes)):
        for j in (k - 1, k + 1):
            if 0 <= j < len(key_boxes) and not np.isnan(key_boxes[[k, j]]).any():
                if np.linalg.norm(centres[k] - centres[j]) <= max_shift * key_boxes[k, 2]:
                    confirmed[k] = key_boxes[k]
    return confirmed


def crop_matrix(box: tuple[float, float, float, float], scale: float, size_px: int) -> np.ndarray:
    """(2, 3) float64 affine matrix mapping a square of side ``scale * max(w, h)`` centred on ``box`` onto a
    ``size_px`` square (translation + isotropic scale: a similarity transform without rotation).
    """
    x, y, w, h = box
    side = scale * max(w, h)
    if not side > 0:
        raise ValueError(f"degenerate face box {box}")
    zoom = size_px / side
    cx, cy = x + w / 2.0, y + h / 2.0
    return np.array([[zoom, 0.0, size_px / 2.0 - zoom * cx], [0.0, zoom, size_px / 2.0 - zoom * cy]])


def warp_face(frame: np.ndarray, matrix: np.ndarray, size_px: int) -> np.ndarray:
    """Apply ``matrix`` (from :func:`crop_matrix`) to ``frame: (H, W, 3) uint8`` → ``(size_px, size_px, 3)``
    uint8, bilinear; pixels outside the frame replicate its border. When the transform shrinks, the frame is
    first low-pass filtered (Gaussian, sigma ∝ 1/zoom) so the result does not alias.
    """
    zoom = float(matrix[0, 0])
    if zoom < 1.0:
        frame = cv2.GaussianBlur(frame, (0, 0), sigmaX=0.5 * (1.0 / zoom - 1.0) + 1e-3)
    return cv2.warpAffine(
        frame, matrix, (size_px, size_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
