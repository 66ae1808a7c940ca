"""Video decoding (decord), face detection (OpenCV Haar cascade), box tracking and face alignment.

Boxes are ``(x, y, w, h)`` in pixels of the source frame, float. Frames are ``(H, W, 3) uint8 RGB``.
Micro-expression displacements are smaller than detector jitter (DESIGN §3), so a micro clip uses ONE crop
transform (from its onset frame) for all its frames; a macro video detects on key frames and smooths the box
track over time.

Long videos are never held whole: :class:`FrameSource` decodes planned frames in bounded chunks, and
:class:`BoxTracker` computes the smoothed box track incrementally, releasing a frame as soon as its box is final.
Its boxes equal :func:`smooth_box_track` on the whole video (the same arithmetic, in the same order).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile

__all__ = [
    "BoxTracker",
    "FrameSource",
    "Geometry",
    "HaarFaceDetector",
    "VideoDecodeError",
    "VideoInfo",
    "box_geometry",
    "centred_mean",
    "confirm_detections",
    "crop_matrix",
    "key_positions",
    "natural_key",
    "open_sequence",
    "probe_video",
    "read_image",
    "smooth_box_track",
    "smoothing_window",
    "warp_face",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # frame files, in the order messages list them
DECODE_CHUNK_BYTES = 64 << 20  # decoded pixels per chunk (720p: 24 frames, 1080p: 10)
MAX_CHUNK_FRAMES = 32

# FFmpeg's error tags (libavutil/error.h), as decord prints them: "av_read_frame failed with 1094995529"
_FFMPEG_ERRORS = {
    "INDA": "AVERROR_INVALIDDATA: invalid data found when processing input",
    "EOF ": "AVERROR_EOF: end of file",
    "BUG!": "AVERROR_BUG: internal bug",
    "DEC": "AVERROR_DECODER_NOT_FOUND: no decoder for the stream",
}


class VideoDecodeError(RuntimeError):
    """A video file is missing, unreadable or corrupt; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says: ``n_frames`` native frames at ``fps``, ``width_px`` x ``height_px``."""

    path: Path
    n_frames: int
    fps: float  # native frame rate
    width_px: int
    height_px: int


def explain_ffmpeg_error(message: str) -> str:
    """``message`` with FFmpeg's numeric error tags spelled out.

    Example:
        >>> explain_ffmpeg_error("av_read_frame failed with 1094995529")
        'av_read_frame failed with 1094995529 (AVERROR_INVALIDDATA: invalid data found when processing input)'
    """
    for word in message.replace(":", " ").split():
        if word.lstrip("-").isdigit():
            code = abs(int(word))
            tag = code.to_bytes(4, "little", signed=False).decode("latin-1") if code < 1 << 32 else ""
            meaning = _FFMPEG_ERRORS.get(tag) or _FFMPEG_ERRORS.get(tag.rstrip("\x00"))
            if meaning:
                return f"{message} ({meaning})"
    return message


def _decord_message(err: Exception) -> str:
    """The message of a decord error, without its source location, FFmpeg codes spelled out.

    ``"[18:29:00] /github/workspace/src/video/video_reader.cc:486: Error: av_read_frame failed with 1094995529"``
    → ``"av_read_frame failed with 1094995529 (AVERROR_INVALIDDATA: ...)"``.
    """
    lines = str(err).strip().splitlines()
    message = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*(Error:\s*)?", "", lines[-1]) if lines else type(err).__name__
    return explain_ffmpeg_error(message)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count and rate of a video file from decord, frame size from OpenCV.

    decord reads every packet of the container, so a file cut short or corrupt fails here. It decodes nothing with
    decord: once a frame is asked
    for, decord's CPU reader decodes ahead in a background thread without bound (dmlc/decord#157, #208) and holds
    the rest of the video in memory (measured: 1.35 GB for 480 frames of 720p, whatever the consumer's pace).

    Raises:
        VideoDecodeError: the file does not exist, decord cannot read its container (the message names the file
            and gives decord's error, also as ``error.detail``), or it has no frames, frame rate or decodable frame.
    """
    import decord  # imported lazily: decord's import is slow

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such video file")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises DECORDError or RuntimeError with little context
        error = VideoDecodeError(f"{path}: cannot be decoded ({type(err).__name__}: {_decord_message(err)})")
        error.detail = _decord_message(err)
        raise error from err
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    del reader
    if n_frames == 0 or not math.isfinite(fps) or fps <= 0:
        raise VideoDecodeError(f"{path}: no frames or no frame rate (frames={n_frames}, fps={fps})")
    size = _capture_size(path)
    if size is None:
        raise VideoDecodeError(f"{path}: OpenCV's FFmpeg reader cannot decode a frame of it")
    return VideoInfo(path, n_frames, fps, *size)


def _open_capture(path: Path, num_threads: int = 0) -> cv2.VideoCapture:
    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, num_threads])


def _capture_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of the first frame OpenCV decodes, or None."""
    capture = _open_capture(path, 1)
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        return (int(frame.shape[1]), int(frame.shape[0])) if ok else None
    finally:
        capture.release()


def _capture_info(path: Path) -> VideoInfo | None:
    """What OpenCV's FFmpeg reader says about ``path``, or None if it cannot read a frame or a frame count."""
    capture = _open_capture(path, 1)
    try:
        if not capture.isOpened():
            return None
        n_frames, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), float(capture.get(cv2.CAP_PROP_FPS))
        ok, frame = capture.read()
        if not ok or n_frames <= 0 or not math.isfinite(fps) or fps <= 0:
            return None
        return VideoInfo(path, n_frames, fps, int(frame.shape[1]), int(frame.shape[0]))
    finally:
        capture.release()


def natural_key(name: str) -> tuple:
    """Sort key of a frame file's stem in natural order: digit runs compare as numbers, text case-insensitively.

    ``img2`` comes before ``img10`` (name order puts ``img10, img11, …`` before ``img2``), and
    ``S005_001_00000009`` before ``S005_001_00000010``.

    Example:
        >>> sorted(["img10", "img2", "img1"], key=natural_key)
        ['img1', 'img2', 'img10']
    """
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def open_sequence(folder: Path, fps: float) -> tuple[list[Path], VideoInfo]:
    """The image files of a sequence folder (e.g. CK+ ``S005/001/``) in frame order, and its :class:`VideoInfo`.

    Frame order is the natural order of the file names (:func:`natural_key`): ``img1, img2, …, img10``, as CK+
    and most sequence datasets number their frames without zero padding or with it. The size is the first image's.

    Raises:
        VideoDecodeError: no image file; two files at the same place in that order (``img01.png`` and
            ``img1.png``, or ``img1.png`` and ``img1.jpg``: which frame comes first is unknown; both are named);
            or the first one is unreadable.
    """
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES] if folder.is_dir() else []
    if not images:
        raise VideoDecodeError(f"{folder}: no image files")
    files = sorted(images, key=lambda p: (natural_key(p.stem), p.name))
    for before, after in pairwise(files):
        if natural_key(before.stem) == natural_key(after.stem):
            raise VideoDecodeError(f"{folder}: {before.name} and {after.name} have the same frame number, so their "
                                   "order is unknown; keep one of them")
    first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise VideoDecodeError(f"{files[0]}: not a readable image")
    return files, VideoInfo(folder, len(files), fps, int(first.shape[1]), int(first.shape[0]))


class FrameSource:
    """The frames of one video file or image sequence, decoded in order in bounded chunks.

    A video's frame count and rate come from decord (:func:`probe_video`), its pixels from OpenCV's FFmpeg reader
    one frame after the other (``grab`` skips unplanned frames without converting them), which holds no more than
    the frame at hand. On the sample videos OpenCV's RGB frames equal decord's bit for bit, and a 720p stream
    decodes 1.6x faster on one thread (``benchmarks/ingest_scale.py``).

    A video whose container decord cannot read (e.g. a file cut short) is read with OpenCV alone, up to where the
    data ends: the frames decoded before the break are kept, and :attr:`stop_reason` says in words where and why.
    A stream that ends more than ``END_SLACK_FRAMES`` before the container's frame count is also a break; fewer
    frames short is a normal end (an edit list trims frames the packet count includes, or the decoder's delay:
    ``no_face.mp4`` lists 98 packets and FFmpeg decodes 95 frames; decord padded them with 3 copies of the last).

    Args:
        path: a video file, or (with ``sequence_fps``) a folder of frame images.
        sequence_fps: frame rate of an image sequence; None for a video file.
        num_threads: decoding threads (0: FFmpeg's choice, every core; 1: one worker per core).

    Attributes:
        info: the :class:`VideoInfo` (``n_frames``: the container's count).
        stop_reason: None while decoding went to the end; else e.g. ``"decoding stopped at frame 228 of 472
            (file truncated or corrupt after that point: ...)"``.
        note: how the file was read when it was not the usual way, else ``""``.

    Raises:
        VideoDecodeError: the input is missing, or no frame of it can be decoded (the message names the file).
    """

    END_SLACK_FRAMES = 8

    def __init__(self, path: Path, sequence_fps: float | None = None, num_threads: int = 0):
        self.path, self.stop_reason, self.note = Path(path), None, ""
        self._capture = self._files = None
        self._broken = ""  # decord's error when it could not read the container
        if sequence_fps is not None:
            self._files, self.info = open_sequence(self.path, sequence_fps)
            return
        try:
            self.info = probe_video(self.path)
        except VideoDecodeError as err:
            info = _capture_info(self.path) if self.path.is_file() else None
            if info is None:
                raise
            self.info, self._broken = info, getattr(err, "detail", str(err))
            self.note = "frame count from OpenCV (decord could not read the container)"
            log.warning("%s: %s: %s", self.path, self.note, self._broken)
        self._capture = _open_capture(self.path, num_threads)

    def chunks(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Decode the native frame ``indices`` (increasing) in order; call once.

        Yields:
            ``(positions (n,) int64, frames)``: positions index into ``indices``, consecutive from 0; ``frames``
            is a list of n ``(H, W, 3) uint8 RGB`` arrays (each its own: releasing one frees it), at most
            ``DECODE_CHUNK_BYTES`` together. Ends early, with :attr:`stop_reason` set, when the stream breaks.
        """
        frame_bytes = max(1, self.info.width_px * self.info.height_px * 3)
        size = max(1, min(MAX_CHUNK_FRAMES, DECODE_CHUNK_BYTES // frame_bytes))
        read = self._read_images if self._files is not None else self._read_capture
        self._next_native = 0
        for start in range(0, len(indices), size):
            part = indices[start : start + size]
            frames = read(part)
            if frames:
                yield np.arange(start, start + len(frames)), frames
            if len(frames) < len(part):
                return

    def _ended_at(self, native_index: int) -> None:
        """The reader gave no frame ``native_index``: a break, unless it is the normal end of the stream."""
        if self._broken:
            why = f"file truncated or corrupt after that point: {self._broken}"
        elif self.info.n_frames - native_index > self.END_SLACK_FRAMES:
            why = "the decoder returned no further frame: file truncated or corrupt after that point"
        else:
            return
        self.stop_reason = f"decoding stopped at frame {native_index} of {self.info.n_frames} ({why})"
        log.warning("%s: %s", self.path, self.stop_reason)

    def _read_capture(self, part: np.ndarray) -> list[np.ndarray]:
        frames = []
        for index in part.tolist():
            while self._next_native <= index:
                if not self._capture.grab():
                    self._ended_at(self._next_native)
                    return frames
                self._next_native += 1
            ok, frame = self._capture.retrieve()
            if not ok:
                self._ended_at(index)
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return frames

    def _read_images(self, part: np.ndarray) -> list[np.ndarray]:
        frames = []
        for index in part.tolist():
            file = self._files[index]
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)  # grey CK+ frames come back as 3 equal channels
            if image is None or image.shape[:2] != (self.info.height_px, self.info.width_px):
                why = "not a readable image" if image is None else (
                    f"{image.shape[1]}x{image.shape[0]} px, the sequence is {self.info.width_px}x"
                    f"{self.info.height_px}")
                self.stop_reason = f"decoding stopped at frame {index} of {self.info.n_frames} ({file}: {why})"
                log.warning("%s: %s", self.path, self.stop_reason)
                break
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return frames

    def close(self) -> None:
        """Release the decoder."""
        if self._capture is not None:
            self._capture.release()
        self._capture = None


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


def key_step_and_gap(times_s: np.ndarray, detect_every_s: float) -> tuple[int, float]:
    """``(key_step, max_gap_s)`` of a video whose frames are at ``times_s: (N,) float`` seconds.

    Key frames are every ``key_step`` frames (``detect_every_s`` apart at the median frame interval); a frame has a
    face only if a key frame with a face lies within ``max_gap_s`` seconds.
    """
    dt = float(np.median(np.diff(times_s))) if len(times_s) > 1 else 1.0
    key_step = max(1, round(detect_every_s / dt))
    return key_step, 0.75 * key_step * dt + 1e-6


def key_positions(n_frames: int, key_step: int) -> np.ndarray:
    """(K,) int64 positions of the key frames among ``n_frames``: every ``key_step``-th, and the last one."""
    return np.unique(np.r_[np.arange(0, n_frames, key_step), n_frames - 1]).astype(np.int64)


def smoothing_window(times_s: np.ndarray, window_s: float) -> int:
    """Frames in the moving-average window of ``window_s`` seconds at the mean frame rate of ``times_s``.

    1 means no smoothing: ``window_s`` is 0 or there is one frame.
    """
    if window_s <= 0 or len(times_s) < 2:
        return 1
    fps = (len(times_s) - 1) / max(times_s[-1] - times_s[0], 1e-9)
    return max(1, round(float(window_s * fps)))


def centred_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of the rows of ``values: (M, C) float`` that are not NaN.

    Row ``i`` averages rows ``i - window // 2`` to ``i + (window - 1) // 2`` (pandas' ``rolling(window,
    center=True, min_periods=1)`` alignment), ignoring NaN rows and rows outside ``values``; NaN where none is
    left. The sum runs in a fixed order, so a slice that holds row ``i``'s whole window gives bitwise the same
    row ``i`` as the whole array: that is what lets :class:`BoxTracker` stream.

    Returns:
        (M, C) float64.
    """
    values = np.asarray(values, dtype=float)
    left, right = window // 2, (window - 1) // 2
    n = len(values)
    finite = np.zeros(n + left + right, dtype=bool)
    finite[left : left + n] = ~np.isnan(values).any(axis=1)
    padded = np.zeros((n + left + right, values.shape[1]))
    padded[left : left + n][finite[left : left + n]] = values[finite[left : left + n]]
    total, count = np.zeros_like(values), np.zeros(n)
    for offset in range(window):  # row i - left + offset, in order
        total += padded[offset : offset + n]
        count += finite[offset : offset + n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[:, None]


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
    window = smoothing_window(times_s, window_s)
    if window > 1:
        boxes = centred_mean(boxes, window)
        boxes[nearest_gap > max_gap_s] = np.nan  # averages never resurrect a faceless frame
    return boxes


Geometry = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``rows (K, 4) -> (centres (K, 2) px, sides (K,) px)`` of a track's rows: where the face is and how big."""


def box_geometry(key_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres and widths of ``(x, y, w, h)`` boxes: the :data:`Geometry` of a box track."""
    return key_boxes[:, :2] + key_boxes[:, 2:] / 2, key_boxes[:, 2]


def confirm_detections(key_boxes: np.ndarray, max_shift: float = 0.5,
                       geometry: Geometry = box_geometry) -> np.ndarray:
    """Reject isolated detections: Haar false positives rarely persist; faces do.

    A key-frame row is kept only if a neighbouring key frame also has a face whose centre lies within
    ``max_shift`` face sides of it.

    Args:
        key_boxes: (K, 4) float track rows (``(x, y, w, h)`` px boxes by default), NaN rows where nothing was
            found.
        max_shift: largest centre distance to a neighbour's face, in face sides.
        geometry: centres and sides of the rows (:func:`box_geometry`; a similarity track has its own,
            :func:`pipeline.face.align.pose_geometry`).

    Returns:
        (K, 4) copy with unconfirmed rows set to NaN.
    """
    confirmed = np.full_like(key_boxes, np.nan)
    centres, sides = geometry(key_boxes)
    for k in range(len(key_boxes)):
        for j in (k - 1, k + 1):
            if (0 <= j < len(key_boxes) and not np.isnan(key_boxes[[k, j]]).any()
                    and np.linalg.norm(centres[k] - centres[j]) <= max_shift * sides[k]):
                confirmed[k] = key_boxes[k]
    return confirmed


class BoxTracker:
    """The face box track of one video, computed while it streams.

    Feed it the detections of the key frames in order (:meth:`add_detection`) and how many frames have been
    decoded (:meth:`advance`); :meth:`pop_final` returns the frames whose box can no longer change, in order.
    A frame's box is final once the key frames that decide it are confirmed (about one smoothing half-window
    plus two key intervals later) — or, for the frames just after the last face before a long faceless gap,
    once the next face is found (their interpolation needs it). Frames known to have no face are final at once
    (:meth:`has_face` says so, so their pixels can be released). The boxes are those of
    :func:`confirm_detections` then :func:`smooth_box_track` on the whole video, bitwise.

    The four numbers of a row need not be a box: any track whose rows can be interpolated and averaged
    coordinate by coordinate works, given its ``geometry`` for the confirmation, e.g. the similarity transforms
    of an MTCNN track (:func:`pipeline.face.align.face_pose`; a similarity is linear in its four parameters, so
    interpolations and means of similarities are similarities).

    Memory: O(1) frames of look-ahead for the caller; ~60 bytes per frame of metadata here.

    Args:
        times_s: (N,) float, increasing times of the planned frames (seconds).
        detect_every_s: seconds between key frames.
        window_s: moving-average window in seconds (0: none).
        geometry: centres and sides of rows, for :func:`confirm_detections` (default: boxes).
    """

    def __init__(self, times_s: np.ndarray, detect_every_s: float, window_s: float,
                 geometry: Geometry = box_geometry):
        self.geometry = geometry
        self.times = np.asarray(times_s, dtype=float)
        self.n = len(self.times)
        self.key_step, self.max_gap_s = key_step_and_gap(self.times, detect_every_s)
        self.window = smoothing_window(self.times, window_s)
        self.keys = key_positions(self.n, self.key_step)
        self.detections = np.full((len(self.keys), 4), np.nan)
        self.confirmed = np.full((len(self.keys), 4), np.nan)
        self.n_detected = self.n_confirmed = 0
        self.good_t: list[float] = []
        self.good_b: list[np.ndarray] = []
        self.raw = np.full((self.n, 4), np.nan)  # interpolated boxes before smoothing
        self.raw_done = np.zeros(self.n, dtype=bool)
        self.seen = self.frontier = self.emitted = 0  # decoded / raw decided below / returned below
        self.ended = False

    def next_key(self) -> int | None:
        """Position of the next key frame to detect on, or None when every key frame has a detection."""
        return int(self.keys[self.n_detected]) if self.n_detected < len(self.keys) else None

    def add_detection(self, box: tuple[float, float, float, float] | np.ndarray | None) -> None:
        """The detector's row (a box by default) on key frame :meth:`next_key` (None: no face)."""
        if self.n_detected >= len(self.keys):
            raise ValueError("every key frame already has its detection")
        self.detections[self.n_detected] = box if box is not None else (np.nan,) * 4
        self.n_detected += 1

    def advance(self, n_decoded: int) -> None:
        """Frames ``[0, n_decoded)`` have been decoded (and their key frames detected)."""
        self.seen = max(self.seen, min(n_decoded, self.n))

    def end(self, n_decoded: int) -> None:
        """The stream ended after ``n_decoded`` frames (fewer than planned if it broke).

        Key frames are re-planned for the frames that exist; :meth:`next_key` may then ask for one more detection
        (the last frame), which must be given before :meth:`pop_final` returns the last frames.

        Raises:
            ValueError: ``n_decoded`` is 0 or more than planned.
        """
        if not 0 < n_decoded <= self.n:
            raise ValueError(f"{n_decoded} decoded frames; 1 to {self.n} were planned")
        if n_decoded < self.n:
            self.n = n_decoded
            self.keys = key_positions(n_decoded, self.key_step)
            kept = min(self.n_detected, int(np.searchsorted(self.keys, self.seen)))
            blank = np.full((len(self.keys) - kept, 4), np.nan)
            self.detections = np.r_[self.detections[:kept], blank]
            self.confirmed = np.r_[self.confirmed[:kept], blank]
            self.n_detected = kept
            # confirmations lag detections by one key, so none of the kept ones depended on a dropped key
            self.n_confirmed = min(self.n_confirmed, max(0, kept - 1))
        self.seen = n_decoded
        self.ended = True

    def has_face(self, position: int) -> bool | None:
        """True/False once the frame's face status is final, None while it is undecided."""
        if not self.raw_done[position]:
            return None
        return not np.isnan(self.raw[position, 0])

    def _confirm(self) -> None:
        known = self.n_detected if self.ended and self.n_detected == len(self.keys) else max(0, self.n_detected - 1)
        for k in range(self.n_confirmed, known):
            lo = max(0, k - 1)
            row = confirm_detections(self.detections[lo : k + 2], geometry=self.geometry)[k - lo]
            self.confirmed[k] = row
            if not np.isnan(row).any():
                self.good_t.append(float(self.times[self.keys[k]]))
                self.good_b.append(row)
        self.n_confirmed = max(self.n_confirmed, known)

    def _decide_raw(self) -> None:
        """Decide the interpolated box of the undecided frames in ``[frontier, seen)`` that can be decided."""
        pending = self.frontier + np.flatnonzero(~self.raw_done[self.frontier : self.seen])
        if not len(pending):
            return
        times = self.times[pending]
        p = np.searchsorted(self.keys, pending, side="right") - 1
        q = p + 1
        known = (p < self.n_confirmed) & ((q >= len(self.keys)) | (q < self.n_confirmed))
        good_t = np.asarray(self.good_t)
        if len(good_t):
            after = np.searchsorted(good_t, times, side="left")
            gap_next = np.where(after < len(good_t), good_t[np.minimum(after, len(good_t) - 1)] - times, np.inf)
            gap_prev = np.where(after > 0, times - good_t[np.maximum(after - 1, 0)], np.inf)
            no_face = np.minimum(np.abs(gap_prev), np.abs(gap_next)) > self.max_gap_s
            bracketed = after < len(good_t)
        else:
            no_face = np.ones(len(pending), dtype=bool)
            bracketed = np.zeros(len(pending), dtype=bool)
        decided = known & (no_face | bracketed | self.ended)
        face = decided & ~no_face
        if face.any():
            first = max(0, int(np.searchsorted(good_t, times[face].min(), side="right")) - 1)
            boxes = np.asarray(self.good_b[first:])
            for col in range(4):
                self.raw[pending[face], col] = np.interp(times[face], good_t[first:], boxes[:, col])
        self.raw_done[pending[decided]] = True
        undecided = np.flatnonzero(~self.raw_done[self.frontier : self.seen])
        self.frontier = self.frontier + int(undecided[0]) if len(undecided) else self.seen

    def pop_final(self) -> tuple[int, np.ndarray]:
        """The frames whose box became final since the last call.

        Returns:
            ``(start, boxes)``: frames ``start .. start + len(boxes) - 1`` (positions in the plan); ``boxes``
            is ``(n, 4) float64``, NaN rows for frames without a face. Empty when nothing new is final.
        """
        self._confirm()
        self._decide_raw()
        right, left = (self.window - 1) // 2, self.window // 2
        stop = self.n if self.ended and self.frontier >= self.n else max(self.emitted, self.frontier - right)
        start = self.emitted
        if stop <= start:
            return start, np.empty((0, 4))
        lo, hi = max(0, start - left), min(self.n, stop + right)
        raw = self.raw[lo:hi]
        boxes = centred_mean(raw, self.window)[start - lo : stop - lo] if self.window > 1 else raw[start - lo :
                                                                                                 stop - lo].copy()
        boxes[np.isnan(self.raw[start:stop, 0])] = np.nan
        self.emitted = stop
        return start, boxes


def crop_matrix(box: tuple[float, float, float, float], scale: float, size_px: int) -> np.ndarray:
    """(2, 3) float64 affine matrix mapping a square around ``box`` onto a ``size_px`` square.

    The square has side ``scale * max(w, h)`` and is centred on ``box``: translation + isotropic scale, a
    similarity transform without rotation.

    Raises:
        ValueError: the box has no positive side.
    """
    x, y, w, h = box
    side = scale * max(w, h)
    if not side > 0:
        raise ValueError(f"degenerate face box {box}")
    zoom = size_px / side
    cx, cy = x + w / 2.0, y + h / 2.0
    return np.array([[zoom, 0.0, size_px / 2.0 - zoom * cx], [0.0, zoom, size_px / 2.0 - zoom * cy]])


def _sampled_span(offset: float, step: float, size_px: int, length: int, margin: int) -> tuple[int, int]:
    """``[start, stop)`` of the source pixels (plus ``margin``) read by outputs at ``offset + step * i``.

    Clipped to ``[0, length)``: replicated borders read the edge pixel.
    """
    first = min(max(math.floor(offset) - 1, 0), length - 1)
    last = min(max(math.floor(offset + step * (size_px - 1)) + 2, 0), length - 1)
    return max(0, first - margin), min(length, last + margin + 1)


def warp_face(frame: np.ndarray, matrix: np.ndarray, size_px: int) -> np.ndarray:
    """Apply ``matrix`` to ``frame: (H, W, 3) uint8`` → ``(size_px, size_px, 3) uint8``.

    ``matrix``: a (2, 3) similarity, from :func:`crop_matrix` or an alignment of :mod:`pipeline.face.align`. Bilinear;
    pixels outside the frame replicate its border. When the transform shrinks, the frame is first low-pass
    filtered (Gaussian, sigma ∝ 1/zoom) so the result does not alias.

    Only the region the output reads is filtered (plus the filter's reach): the result is bitwise that of
    filtering the whole frame, at a fraction of the cost for a face that is small in a large frame.
    """
    zoom = math.hypot(float(matrix[0, 0]), float(matrix[1, 0]))  # a similarity's scale, rotated or not
    if zoom < 1.0:
        sigma = 0.5 * (1.0 / zoom - 1.0) + 1e-3
        reach = round(sigma * 3 * 2 + 1) // 2 + 2  # OpenCV's 8-bit kernel size is round(6 sigma + 1) | 1
        (m0, m1, m2), (m3, m4, m5) = matrix.tolist()
        inv_d = m0 * m4 - m1 * m3
        inv_d = 1.0 / inv_d if inv_d != 0 else 0.0
        a11, a22, a12, a21 = m4 * inv_d, m0 * inv_d, m1 * -inv_d, m3 * -inv_d
        b1, b2 = -a11 * m2 - a12 * m5, -a21 * m2 - a22 * m5  # OpenCV's own inverse (warpAffine's arithmetic)
        height, width = frame.shape[:2]
        c0, c1 = _sampled_span(b1, a11, size_px, width, reach)
        r0, r1 = _sampled_span(b2, a22, size_px, height, reach)
        if (r1 - r0) * (c1 - c0) < frame.shape[0] * frame.shape[1] * 0.8 and not (a12 or a21):
            blurred = np.empty_like(frame)  # outside the region: never read by the warp
            blurred[r0:r1, c0:c1] = cv2.GaussianBlur(np.ascontiguousarray(frame[r0:r1, c0:c1]), (0, 0),
                                                     sigmaX=sigma)
            # the filter treats the region's edges as borders: only pixels within `reach` of an inner edge
            # differ from the whole-frame result, and the warp never reads them (the region has that margin);
            # an edge of the region that is the frame's edge is filtered exactly as in the whole frame
            return _warp(blurred, matrix, size_px)
        frame = cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma)
    return _warp(frame, matrix, size_px)


def _warp(frame: np.ndarray, matrix: np.ndarray, size_px: int) -> np.ndarray:
    return cv2.warpAffine(
        frame, matrix, (size_px, size_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _check_complete(path: Path) -> None:
    """Decode ``path`` fully with Pillow, truncated images not allowed.

    OpenCV decodes a truncated JPEG with a warning on stderr that does not name the file, and fills the missing
    rows with grey; Pillow raises instead (``image file is truncated``) for JPEG, PNG and BMP alike, as long as
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is off, which it is for the duration of this call (process-wide
    setting, restored after).

    Raises:
        ValueError: the file is truncated or not a decodable image (the message names it and Pillow's error).
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: truncated or corrupt image file ({type(err).__name__}: {err})") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def read_image(path: Path) -> np.ndarray:
    """Read a whole frame file as ``(H, W, 3) uint8 RGB``.

    The file is first decoded by Pillow with truncation an error (:func:`_check_complete`), then by OpenCV for
    the pixels (as before, EXIF orientation applied).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is truncated, corrupt or not an image (the message names it).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: frame file missing")
    _check_complete(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: OpenCV cannot decode this image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
