"""Macro-expression videos → aligned face frames (the input of MA2MI pre-training), streamed.

For each video: decode in bounded chunks (subsampled to at most ``max_fps``), detect the face on key frames
``detect_every_s`` apart, confirm, interpolate and smooth the track (a centred window of ``smooth_window_s``), warp
the face to ``image_size_px`` and encode it as JPEG. With ``detector: haar`` the track is the cascade's box and the
crop a square of ``box_scale`` times it; with ``detector: mtcnn`` it is the similarity transform that maps MTCNN's
five landmarks onto the canonical template (:mod:`pipeline.face.align`; rotation, scale and position, smoothed over time
like the box). All while the video streams: only a look-ahead of about half a smoothing window plus two key
intervals of decoded frames is held, whatever the video's length (:class:`pipeline.face.video.BoxTracker`).

Every decoded frame gets a row in the frame index with its status: ``ok`` (cropped and stored), ``no_face`` (no
detection near it). A video that cannot be decoded gets a row in the video table with status ``decode_error`` and
the reason. A stream that breaks mid-way keeps the frames decoded before the break and says where and why in its
``reason``. Nothing is dropped silently.

Crops are JPEG (quality ``jpeg_quality``, 4:4:4 chroma): at 112 px about a third of PNG's bytes and several
times faster to decode, which is what a streaming pre-training loader needs (``benchmarks/ingest_scale.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import MacroParams, MacroSource
from pipeline.face.align import MtcnnDetector, face_pose, pose_box, pose_geometry, pose_matrix
from pipeline.face.video import (
    BoxTracker,
    FrameSource,
    HaarFaceDetector,
    VideoDecodeError,
    crop_matrix,
    warp_face,
)
from pipeline.io import encode_jpeg
from pipeline.sheets import read_table

__all__ = [
    "INDEX_COLUMNS",
    "VIDEO_COLUMNS",
    "FrameBatch",
    "MacroVideoResult",
    "SourceItem",
    "find_videos",
    "ingest_video",
    "list_source",
    "stream_video",
    "track_video",
]

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["video", "frame_index", "time_s", "x", "y", "w", "h", "status"]
FRAME_COLUMNS = ["video", "frame_index", "time_s", "image"]
VIDEO_COLUMNS = ["video", "path", "status", "reason", "fps", "n_frames_native", "n_frames", "n_ok"]


@dataclass
class MacroVideoResult:
    """What one video produced (in memory: for tests and small inputs; the stage streams to disk instead).

    Attributes:
        video: one row: ``video, path, status, reason, fps, n_frames_native, n_frames, n_ok``.
        index: one row per decoded frame: ``video, frame_index, time_s, x, y, w, h, status``.
        frames: the ``ok`` frames: ``video, frame_index, time_s, image`` (JPEG bytes of a
            ``(image_size_px, image_size_px, 3)`` uint8 RGB face crop; :func:`pipeline.io.decode_jpeg` reads them).
    """

    video: dict
    index: pd.DataFrame
    frames: pd.DataFrame


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive decoded frames whose boxes are final.

    Attributes:
        frame_index: (n,) int64 native frame numbers.
        time_s: (n,) float64 seconds.
        boxes: (n, 4) float64 ``(x, y, w, h)`` px of the smoothed face box (``mtcnn``: the square of the frame
            the aligned crop covers, its rotation aside); NaN rows: no face.
        crops: (n_ok, S, S, 3) uint8 RGB aligned faces of the rows with a box, in order.
        matrices: (n_ok, 2, 3) float64 frame px -> crop px similarity of each crop (``warp_face``'s matrix).
    """

    frame_index: np.ndarray
    time_s: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray
    matrices: np.ndarray


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
        ValueError: a ``start_s``/``end_s`` cell is not a number (names the row and column), or two CSV rows
            give the same video id (file stem).
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
    ids = pd.Series([item.video for item in items])
    if ids.duplicated().any():
        raise ValueError(f"{source.root / source.csv}: video ids (file stems) must be unique; repeated: "
                         f"{sorted(set(ids[ids.duplicated()]))}")
    return items


def _frame_plan(info, max_fps: float, start_s: float | None, end_s: float | None, path: Path,
                sequence: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """``(native indices (N,), times_s (N,), fps)`` of the frames to decode.

    Every ``step``-th frame (rate at most ``max_fps``; image sequences keep every frame), inside
    ``[start_s, end_s]``.

    Raises:
        VideoDecodeError: no frame falls in the window.
    """
    step = 1 if sequence else max(1, math.ceil(info.fps / max_fps - 1e-6))
    indices = np.arange(0, info.n_frames, step)
    times_s = indices / info.fps
    keep = (times_s >= (start_s or 0.0)) & (times_s <= (end_s if end_s is not None else np.inf))
    if not keep.any():
        raise VideoDecodeError(f"{path}: no frame between start_s={start_s} and end_s={end_s}")
    return indices[keep], times_s[keep], info.fps / step


@dataclass(frozen=True)
class _Track:
    """What a detector's track rows are: how to detect one, turn it into a warp and into an index box."""

    detect: Callable[[np.ndarray], np.ndarray | tuple | None]
    matrix: Callable[[np.ndarray], np.ndarray]  # row -> (2, 3) frame -> crop similarity
    boxes: Callable[[np.ndarray], np.ndarray]  # (n, 4) rows -> (n, 4) (x, y, w, h) for the frame index
    tracker: Callable[[np.ndarray], BoxTracker]  # times_s -> a tracker of such rows


def _track_kind(detector: HaarFaceDetector | MtcnnDetector, params: MacroParams) -> _Track:
    size = params.image_size_px
    if isinstance(detector, MtcnnDetector):
        def detect(frame: np.ndarray) -> np.ndarray | None:
            face = detector.detect_one(frame)
            return None if face is None else face_pose(face, size, params.align_margin)

        return _Track(detect, pose_matrix, lambda rows: pose_box(rows, size),
                      lambda times_s: BoxTracker(times_s, params.detect_every_s, params.smooth_window_s,
                                                 geometry=pose_geometry(size)))
    return _Track(detector.detect, lambda box: crop_matrix(tuple(box), params.box_scale, size), lambda rows: rows,
                  lambda times_s: BoxTracker(times_s, params.detect_every_s, params.smooth_window_s))


def _crops(frames: dict[int, np.ndarray], start: int, rows: np.ndarray, matrix: Callable[[np.ndarray], np.ndarray],
           size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(crops (n_ok, S, S, 3) uint8, matrices (n_ok, 2, 3))`` of the frames ``start + i`` whose row is finite."""
    ok = np.flatnonzero(~np.isnan(rows[:, 0]))
    out = np.empty((len(ok), size, size, 3), np.uint8)
    matrices = np.empty((len(ok), 2, 3))
    for k, i in enumerate(ok):
        matrices[k] = matrix(rows[i])
        out[k] = warp_face(frames[start + i], matrices[k], size)
    return out, matrices


def _track(source: FrameSource, indices: np.ndarray, times_s: np.ndarray, params: MacroParams,
           detector: HaarFaceDetector | MtcnnDetector | None) -> Iterator[FrameBatch]:
    """Decode, detect, track and crop; yield :class:`FrameBatch` es in frame order as the track becomes final."""
    size = params.image_size_px
    if detector is None:  # frames are faces already: the centred square of the frame is the crop
        info = source.info
        side = float(min(info.width_px, info.height_px))
        box = np.array([(info.width_px - side) / 2, (info.height_px - side) / 2, side, side])
        for positions, chunk in source.chunks(indices):
            boxes = np.tile(box, (len(positions), 1))
            crops, matrices = _crops(dict(zip(positions.tolist(), chunk, strict=True)), int(positions[0]), boxes,
                                     lambda b: crop_matrix(tuple(b), params.box_scale, size), size)
            yield FrameBatch(indices[positions], times_s[positions], boxes, crops, matrices)
        return
    kind = _track_kind(detector, params)
    tracker = kind.tracker(times_s)
    held: dict[int, np.ndarray] = {}  # decoded frames whose track row is not final yet (the look-ahead)
    last = None
    for positions, chunk in source.chunks(indices):
        for position, frame in zip(positions.tolist(), chunk, strict=True):
            if tracker.next_key() == position:
                tracker.add_detection(kind.detect(frame))
            held[position] = frame
        last = (int(positions[-1]), chunk[-1])
        tracker.advance(int(positions[-1]) + 1)
        yield from _release(tracker, held, indices, times_s, kind, size)
    if last is None:
        raise VideoDecodeError(f"{source.path}: no frame could be decoded "
                               f"({source.stop_reason or 'the reader returned none'})")
    tracker.end(last[0] + 1)
    if tracker.next_key() == last[0]:  # the stream broke: its last frame becomes the last key frame
        tracker.add_detection(kind.detect(last[1]))
    yield from _release(tracker, held, indices, times_s, kind, size)


def _release(tracker: BoxTracker, held: dict[int, np.ndarray], indices: np.ndarray, times_s: np.ndarray,
             kind: _Track, size: int) -> Iterator[FrameBatch]:
    """Crop the frames whose track row became final and forget every frame that no longer needs its pixels."""
    start, rows = tracker.pop_final()
    if len(rows):
        crops, matrices = _crops(held, start, rows, kind.matrix, size)
        for position in range(start, start + len(rows)):
            held.pop(position, None)
        yield FrameBatch(indices[start : start + len(rows)], times_s[start : start + len(rows)], kind.boxes(rows),
                         crops, matrices)
    for position in [p for p in held if tracker.has_face(p) is False]:
        del held[position]


def track_video(path: Path, params: MacroParams,
                detector: HaarFaceDetector | MtcnnDetector | None) -> Iterator[FrameBatch]:
    """The :class:`FrameBatch` es of a video file as ingestion makes them (crops and their transforms), in order.

    For measurements (``benchmarks/alignment_error.py``); :func:`stream_video` is the ingestion.

    Raises:
        VideoDecodeError: the video cannot be opened or decoded.
    """
    source = FrameSource(path)
    try:
        indices, times_s, _ = _frame_plan(source.info, params.max_fps, None, None, path, False)
        yield from _track(source, indices, times_s, params, detector)
    finally:
        source.close()


def stream_video(path: Path, params: MacroParams, detector: HaarFaceDetector | MtcnnDetector | None,
                 on_frames: Callable[[pd.DataFrame], None], video: str | None = None,
                 sequence_fps: float | None = None, start_s: float | None = None, end_s: float | None = None,
                 num_threads: int = 0) -> tuple[dict, pd.DataFrame]:
    """Ingest one video file or image-sequence folder, handing its stored frames over as they are produced.

    Args:
        path: a video file, or (with ``sequence_fps``) a folder of frame images.
        params: the ``macro`` section.
        detector: the face detector (:func:`pipeline.face.align.make_detector` of ``params.detector``), or None for
            ``'none'`` (frames are faces already: the centred square of the frame is the crop).
        on_frames: called, in frame order, with each batch of ``ok`` frames: a DataFrame ``video, frame_index,
            time_s, image`` (JPEG bytes), at most a decode chunk long.
        video: the id rows carry (default: the file stem).
        sequence_fps: frame rate of an image sequence (its files carry none); None for video files.
        start_s: keep only frames from this time on (seconds), e.g. from a source CSV.
        end_s: keep only frames up to this time (seconds).
        num_threads: decoding threads (0: the decoder's choice).

    Returns:
        ``(row, index)``: the video's row (``VIDEO_COLUMNS``) and its frame index (``INDEX_COLUMNS``, one row
        per decoded frame). A missing or undecodable input gives a ``decode_error`` row and an empty index, not
        an exception; a stream that breaks mid-way keeps its frames and says why in ``reason``.
    """
    video = video or path.stem
    failed = {"video": video, "path": str(path), "status": "decode_error", "fps": float("nan"),
              "n_frames_native": 0, "n_frames": 0, "n_ok": 0}
    try:
        source = FrameSource(path, sequence_fps, num_threads)
    except (VideoDecodeError, OSError) as err:
        log.warning("skipping %s: %s", video, err)
        return {**failed, "reason": str(err)}, _empty_index()
    try:
        indices, times_s, fps = _frame_plan(source.info, params.max_fps, start_s, end_s, path,
                                            sequence_fps is not None)
        parts, n_ok = [], 0
        for batch in _track(source, indices, times_s, params, detector):
            ok = ~np.isnan(batch.boxes[:, 0])
            parts.append(pd.DataFrame({"frame_index": batch.frame_index.astype(np.int64), "time_s": batch.time_s,
                                       "x": batch.boxes[:, 0], "y": batch.boxes[:, 1], "w": batch.boxes[:, 2],
                                       "h": batch.boxes[:, 3], "status": np.where(ok, "ok", "no_face")}))
            if ok.any():
                on_frames(pd.DataFrame({"video": video, "frame_index": batch.frame_index[ok].astype(np.int64),
                                        "time_s": batch.time_s[ok],
                                        "image": [encode_jpeg(c, params.jpeg_quality) for c in batch.crops]}))
                n_ok += int(ok.sum())
    except (VideoDecodeError, OSError) as err:
        log.warning("skipping %s: %s", video, err)
        return {**failed, "reason": str(err)}, _empty_index()
    finally:
        source.close()
    index = pd.concat(parts, ignore_index=True)
    index.insert(0, "video", video)
    reasons = [f"{path}: {source.stop_reason}" if source.stop_reason else "", source.note]
    if n_ok == 0:
        reasons.insert(0, f"{path}: no face found in any frame")
        log.warning("%s", reasons[0])
    row = {"video": video, "path": str(path), "status": "ok" if n_ok else "no_face",
           "reason": "; ".join(r for r in reasons if r), "fps": fps, "n_frames_native": source.info.n_frames,
           "n_frames": len(index), "n_ok": n_ok}
    return row, index[INDEX_COLUMNS]


def _empty_index() -> pd.DataFrame:
    return pd.DataFrame({"video": pd.Series(dtype=str), "frame_index": pd.Series(dtype=np.int64),
                         **{c: pd.Series(dtype=float) for c in ("time_s", "x", "y", "w", "h")},
                         "status": pd.Series(dtype=str)})


def ingest_video(path: Path, params: MacroParams, detector: HaarFaceDetector | MtcnnDetector | None,
                 video: str | None = None,
                 sequence_fps: float | None = None, start_s: float | None = None,
                 end_s: float | None = None) -> MacroVideoResult:
    """:func:`stream_video` with the stored frames collected in memory (for tests and short videos).

    Returns:
        A :class:`MacroVideoResult`; a missing or corrupt input gives a ``decode_error`` row, not an exception.
    """
    frames: list[pd.DataFrame] = []
    row, index = stream_video(path, params, detector, frames.append, video=video, sequence_fps=sequence_fps,
                              start_s=start_s, end_s=end_s)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRAME_COLUMNS)
    return MacroVideoResult(row, index, table)
