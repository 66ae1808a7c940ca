"""The onset and apex frames of a clip a user points at: a video file or a folder of frame images.

Frame numbers, the rule:

- **Folder of frames** (the ME datasets' layout): frame ``N`` is the image file (``.jpg``, ``.jpeg``, ``.png``,
  ``.bmp``) whose name ends in the number ``N``: the LAST run of digits of the file name without its suffix,
  leading zeros ignored. So CASME II ``img46.jpg`` and ``reg_img46.jpg`` are frame 46, SAMM ``006_05562.jpg`` is
  5562 (not 6: the subject prefix is not the last number), SMIC ``image000123.bmp`` and ``image123.bmp`` are 123,
  CAS(ME)^3 and MMEW ``12.jpg`` are 12: the numbers of the coding sheets. Files without a digit are ignored; two
  files with the same number are an error (naming both). Times (seconds) need a frame rate, which a folder does not
  have: use frame numbers.
- **Video file** (decord): frame ``N`` is the ``N``-th decoded frame, counting from 0; a time ``t`` seconds is frame
  ``round(t * fps)`` at the container's average frame rate.

Frames are read as ``(H, W, 3) uint8 RGB``: images with :func:`pipeline.face.video.read_image` (the reader of
training: truncated files are errors), videos with decord.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.face.video import IMAGE_SUFFIXES, read_image

__all__ = ["ClipFrames", "FrameRangeError", "InputError", "folder_frames", "frame_number",
           "read_clip"]

_LAST_NUMBER = re.compile(r"(\d+)\D*$")


class InputError(ValueError):
    """A clip, frame, model or card a user named cannot be used; the message says which and why (one line)."""


class FrameRangeError(InputError):
    """The onset or apex is not a frame of the clip; the message gives the clip's range."""


@dataclass(frozen=True)
class ClipFrames:
    """The two frames of a clip.

    Attributes:
        onset, apex: ``(H, W, 3) uint8 RGB``.
        onset_index, apex_index: their frame numbers (folder) or 0-based indices (video).
        source: the video file or the frame files, for messages and outputs.
    """

    onset: np.ndarray
    apex: np.ndarray
    onset_index: int
    apex_index: int
    source: str


def frame_number(name: str) -> int | None:
    """The frame number of an image file name: the last run of digits of its stem (None if it has none).

    >>> [frame_number(n) for n in ("reg_img46.jpg", "006_05562.jpg", "image000123.bmp", "12.jpg", "notes.txt")]
    [46, 5562, 123, 12, None]
    """
    stem = name.rsplit(".", 1)[0] if "." in name else name
    match = _LAST_NUMBER.search(stem)
    return int(match.group(1)) if match else None


def folder_frames(folder: Path) -> dict[int, Path]:
    """Frame number -> image file of a folder of frames (see the module docstring for the rule).

    Raises:
        InputError: not a folder, no numbered image file, or two files with the same number.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of frames")
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        number = frame_number(path.name) if path.suffix.lower() in IMAGE_SUFFIXES else None
        if number is None:
            continue
        if number in frames:
            raise InputError(f"{folder}: {frames[number].name} and {path.name} are both frame {number}; keep one "
                             "sequence per folder")
        frames[number] = path
    if not frames:
        raise InputError(f"{folder}: no image file ({', '.join(IMAGE_SUFFIXES)}) with a frame number in its name")
    return frames


def _pick(frames: dict[int, Path], number: int, role: str, folder: Path) -> Path:
    if number not in frames:
        numbers = sorted(frames)
        gaps = len(numbers) != numbers[-1] - numbers[0] + 1
        raise FrameRangeError(f"{role} frame {number} is not in {folder}: its frames are {numbers[0]}..{numbers[-1]}"
                              + (f" ({len(numbers)} files, with gaps)" if gaps else ""))
    return frames[number]


def _video_index(value: float, seconds: bool, fps: float) -> int:
    return round(value * fps) if seconds else int(value)


def read_clip(path: Path, onset: float, apex: float, seconds: bool = False) -> ClipFrames:
    """Read the onset and apex frames of a video file or a folder of frames.

    Args:
        path: a video file, or a folder of frame images.
        onset: the onset's frame number (folder: the number in the file name; video: 0-based), or its time in
            seconds with ``seconds`` (videos only).
        apex: the apex's, likewise.
        seconds: ``onset`` and ``apex`` are times.

    Returns:
        The :class:`ClipFrames`.

    Raises:
        InputError: no such path, a folder with times, an apex before the onset, or a frame that cannot be read.
        FrameRangeError: a frame outside the clip (the message gives the range).
    """
    if not path.exists():
        raise InputError(f"{path}: no such video file or folder of frames")
    if path.is_dir():
        if seconds:
            raise InputError(f"{path} is a folder of frames, which has no frame rate: give --onset/--apex frame "
                             "numbers, not times")
        frames = folder_frames(path)
        if apex < onset:
            raise InputError(f"apex frame {apex} comes before onset frame {onset}")
        files = [_pick(frames, int(n), role, path) for n, role in ((onset, "onset"), (apex, "apex"))]
        try:
            images = [read_image(file) for file in files]
        except (FileNotFoundError, ValueError) as err:
            raise InputError(str(err)) from err
        if images[0].shape != images[1].shape:
            raise InputError(f"{files[0].name} {images[0].shape} and {files[1].name} {images[1].shape} differ in size")
        return ClipFrames(images[0], images[1], int(onset), int(apex), f"{files[0]} -> {files[1].name}")
    return _read_video(path, onset, apex, seconds)


def _read_video(path: Path, onset: float, apex: float, seconds: bool) -> ClipFrames:
    import decord  # lazy: its import is slow

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises DECORDError / RuntimeError with a C++ location
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable video ({last})") from err
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    indices = [_video_index(onset, seconds, fps), _video_index(apex, seconds, fps)]
    for value, index, role in ((onset, indices[0], "onset"), (apex, indices[1], "apex")):
        if not 0 <= index < n_frames:
            given = f"{role} {value} s = frame {index} at {fps:g} fps" if seconds else f"{role} frame {index}"
            raise FrameRangeError(f"{given} is not in {path}: its frames are 0..{n_frames - 1} "
                                  f"(0..{(n_frames - 1) / fps:.3f} s)")
    if indices[1] < indices[0]:
        raise InputError(f"apex frame {indices[1]} comes before onset frame {indices[0]} in {path}")
    batch = reader.get_batch(indices).asnumpy()  # (2, H, W, 3) uint8 RGB
    del reader
    return ClipFrames(np.ascontiguousarray(batch[0]), np.ascontiguousarray(batch[1]), indices[0], indices[1],
                      str(path))
